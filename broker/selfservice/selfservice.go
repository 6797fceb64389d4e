// Package selfservice is the broker's client of Digdir's self-service API
// for Maskinporten clients (api.samarbeid.digdir.no): it reads and replaces
// the keys registered on a client, and implements rotation.Registry.
//
// The API is reached with an admin access token from Maskinporten, granted
// to the organisation's self-service client, which authenticates with the
// organisation's enterprise certificate (felleslosninger/docs
// _docs/idporten/oidc/oidc_api_admin.md). Tokens, grants and key material
// never appear in an error, a log line or a String method of this package.
package selfservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// The API's hosts (maskinporten-altinn.md section 10; okdata-maskinporten-api
// maskinporten_client.py).
const (
	TestBaseURL = "https://api.test.samarbeid.digdir.no"
	ProdBaseURL = "https://api.samarbeid.digdir.no"
)

// The scopes an admin token needs: dcr.read to read a client's keys,
// dcr.write to replace them.
const (
	ScopeRead  = "idporten:dcr.read"
	ScopeWrite = "idporten:dcr.write"
)

// DefaultTimeout bounds one call (Keys or SetKeys, the token fetch and a
// retry after a 401 included) when Config.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// clientsPath is where the API keeps clients since 2025-05-22.
const clientsPath = "/api/v1/clients/"

// maxAnswer bounds the size of an answer read.
const maxAnswer = 1 << 20

// BaseURLFor returns the API's base URL for env ("test" or "prod"), or
// override when not empty (an emulator, a proxy). An override naming the
// other environment's host is refused, so that test and prod are never
// mixed.
func BaseURLFor(env, override string) (string, error) {
	var own, other string
	switch env {
	case "test":
		own, other = TestBaseURL, ProdBaseURL
	case "prod":
		own, other = ProdBaseURL, TestBaseURL
	default:
		return "", fmt.Errorf("selfservice: environment %q: want test or prod", env)
	}
	if override == "" {
		return own, nil
	}
	u, err := url.Parse(override)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("selfservice: base_url %q: want an absolute http(s) URL", override)
	}
	if ou, _ := url.Parse(other); strings.EqualFold(u.Hostname(), ou.Hostname()) {
		return "", fmt.Errorf("selfservice: base_url %q belongs to the other environment than %s", override, env)
	}
	return strings.TrimSuffix(override, "/"), nil
}

// Config configures a Client.
type Config struct {
	// Environment is "test" or "prod".
	Environment string
	// BaseURL overrides the environment's host (see BaseURLFor).
	BaseURL string
	// Tokens hands out admin access tokens; see NewTokenSource.
	Tokens TokenSource
	// HTTPClient sends the requests; nil means a client with a 30 s
	// timeout.
	HTTPClient *http.Client
	// Timeout bounds each call; 0 means DefaultTimeout.
	Timeout time.Duration
}

// Client calls the self-service API. It is safe for concurrent use.
type Client struct {
	base    string
	tokens  TokenSource
	http    *http.Client
	timeout time.Duration
}

var _ rotation.Registry = (*Client)(nil)

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	base, err := BaseURLFor(cfg.Environment, cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.Tokens == nil {
		return nil, errors.New("selfservice: no token source")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("selfservice: timeout %v is negative", cfg.Timeout)
	}
	c := &Client{base: base, tokens: cfg.Tokens, http: cfg.HTTPClient, timeout: cfg.Timeout}
	if c.http == nil {
		c.http = &http.Client{Timeout: 30 * time.Second}
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	return c, nil
}

// BaseURL returns the API's base URL.
func (c *Client) BaseURL() string { return c.base }

// Keys lists the keys registered on clientID.
func (c *Client) Keys(ctx context.Context, clientID string) ([]rotation.Registered, error) {
	body, err := c.do(ctx, http.MethodGet, clientID, nil)
	if err != nil {
		return nil, err
	}
	return parseJWKS(body)
}

// SetKeys replaces the keys registered on clientID with keys, the whole
// set: one to rotation.MaxRegisteredKeys JWKs, each a JSON object. The
// fields the API adds to its answers (exp, created, last_updated) are
// stripped before posting, and a key without use is posted with use "sig"
// (a key registered before the API required it). It returns the set as the API registered it.
// More keys than the API keeps fail with ErrTooManyKeys before any request.
func (c *Client) SetKeys(ctx context.Context, clientID string, keys []json.RawMessage) ([]rotation.Registered, error) {
	if len(keys) == 0 {
		return nil, errors.New("selfservice: SetKeys needs at least one key (the API refuses an empty set)")
	}
	if len(keys) > rotation.MaxRegisteredKeys {
		return nil, &Error{Op: "set keys", Message: fmt.Sprintf("%d keys, at most %d", len(keys), rotation.MaxRegisteredKeys), sentinel: ErrTooManyKeys}
	}
	out := make([]map[string]json.RawMessage, len(keys))
	for i, k := range keys {
		m, err := ownMembers(k)
		if err != nil {
			return nil, fmt.Errorf("selfservice: key %d: %w", i, err)
		}
		out[i] = m
	}
	payload, err := json.Marshal(map[string]any{"keys": out})
	if err != nil {
		return nil, fmt.Errorf("selfservice: key set: %w", err)
	}
	body, err := c.do(ctx, http.MethodPost, clientID, payload)
	if err != nil {
		return nil, err
	}
	return parseJWKS(body)
}

// do sends one request to /api/v1/clients/{clientID}/jwks with an admin
// token; after a 401 it asks for a new token once and tries again.
func (c *Client) do(ctx context.Context, method, clientID string, payload []byte) ([]byte, error) {
	op := "read keys"
	if method != http.MethodGet {
		op = "set keys"
	}
	if clientID == "" || strings.ContainsAny(clientID, "/?#") || strings.TrimSpace(clientID) != clientID {
		return nil, fmt.Errorf("selfservice: client id %q is not valid", clientID)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	target := c.base + clientsPath + url.PathEscape(clientID) + "/jwks"
	for attempt := 0; ; attempt++ {
		token, err := c.tokens.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("selfservice: %s: admin token: %w", op, err)
		}
		status, body, err := c.send(ctx, method, target, token, payload)
		if err != nil {
			return nil, &Error{Op: op, ClientID: clientID, Err: scrubbed(err, token)}
		}
		if status == http.StatusUnauthorized && attempt == 0 {
			// The token may have been revoked or expired early: forget it
			// and try once more with a new one.
			if f, ok := c.tokens.(interface{ Forget(string) }); ok {
				f.Forget(token)
			}
			continue
		}
		if status/100 == 2 {
			return body, nil
		}
		return nil, newError(op, clientID, status, body)
	}
}

func (c *Client) send(ctx context.Context, method, target, token string, payload []byte) (int, []byte, error) {
	var rd io.Reader
	if payload != nil {
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, body, nil
}

// serverMembers are the members the API adds to each key in its answers.
var serverMembers = []string{"exp", "created", "last_updated"}

// ownMembers returns the JWK's members without the ones the API adds. A
// key without use gets use "sig": the API requires it since 2025-05-22, and
// a key registered before then is read back without it, so that posting
// back the set read (every write posts the whole set) would be refused.
// Every key of a Maskinporten client signs grants; nothing else changes.
func ownMembers(raw json.RawMessage) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	for _, name := range serverMembers {
		delete(m, name)
	}
	if _, ok := m["use"]; !ok {
		m["use"] = json.RawMessage(`"sig"`)
	}
	return m, nil
}

// parseJWKS reads the API's answer {"keys":[...], ...}: each key's exp is
// unix seconds (nais/digdirator pkg/crypto/jwks.go); created, when a key
// carries it, is read as RFC 3339 or unix seconds. The set-wide created
// and last_updated of the answer are not a key's and are not used.
func parseJWKS(body []byte) ([]rotation.Registered, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, errors.New("selfservice: the answer is not a JSON key set")
	}
	out := make([]rotation.Registered, 0, len(set.Keys))
	for i, raw := range set.Keys {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return nil, fmt.Errorf("selfservice: answer key %d is not a JSON object", i)
		}
		var r rotation.Registered
		if err := json.Unmarshal(m["kid"], &r.KID); err != nil || r.KID == "" {
			return nil, fmt.Errorf("selfservice: answer key %d has no kid", i)
		}
		if v, ok := m["exp"]; ok {
			t, err := parseTime(v)
			if err != nil {
				return nil, fmt.Errorf("selfservice: answer key %q: exp: %w", r.KID, err)
			}
			r.Expires = t
		}
		if v, ok := m["created"]; ok {
			if t, err := parseTime(v); err == nil {
				r.Created = t
			}
		}
		for _, name := range serverMembers {
			delete(m, name)
		}
		r.JWK, _ = json.Marshal(m)
		out = append(out, r)
	}
	return out, nil
}

// parseTime reads unix seconds (a JSON number) or an RFC 3339 string.
func parseTime(v json.RawMessage) (time.Time, error) {
	var n json.Number
	if err := json.Unmarshal(v, &n); err == nil {
		f, err := n.Float64()
		if err != nil {
			return time.Time{}, err
		}
		return time.Unix(int64(f), 0), nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return time.Time{}, errors.New("neither unix seconds nor a time string")
	}
	return time.Parse(time.RFC3339Nano, s)
}
