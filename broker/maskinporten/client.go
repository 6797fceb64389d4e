// Package maskinporten gets access tokens from Maskinporten with JWT bearer
// grants: it builds the grant with exactly the documented claims, signs it
// with a key from package signer, posts it to the token endpoint and turns
// the answer into a Token or an *Error that keeps Maskinporten's error code.
//
// Grants and tokens are credentials. Nothing in this package logs them, puts
// them in an error, or prints them from a String method.
package maskinporten

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Config configures a Client for one Maskinporten client (one client_id).
type Config struct {
	// ClientID is the Maskinporten client_id, the grant's iss.
	ClientID string
	// Key signs the grants; its kid is registered on the client.
	Key *signer.Key
	// Environment names the issuer (the grant's aud) and token URL.
	Environment Environment
	// HTTPClient posts the grants; nil means a client with a 30 s timeout.
	HTTPClient *http.Client
	// GrantLifetime is exp - iat of each grant; 0 means 60 s. At most 120 s.
	GrantLifetime time.Duration
	// ResourceAsString sends resource as a plain string instead of the
	// one-element array Digdir documents (some APIs' docs show a string).
	ResourceAsString bool
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Client gets tokens for one Maskinporten client. It is safe for concurrent
// use.
type Client struct {
	clientID         string
	key              *signer.Key
	env              Environment
	http             *http.Client
	grantLifetime    time.Duration
	resourceAsString bool
	now              func() time.Time
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.ClientID) == "" {
		return nil, errors.New("maskinporten: client_id is empty")
	}
	if cfg.Key == nil {
		return nil, errors.New("maskinporten: no signing key")
	}
	if cfg.Environment.Issuer == "" || cfg.Environment.TokenURL == "" {
		return nil, errors.New("maskinporten: environment has no issuer or token URL")
	}
	c := &Client{
		clientID:         cfg.ClientID,
		key:              cfg.Key,
		env:              cfg.Environment,
		http:             cfg.HTTPClient,
		grantLifetime:    cfg.GrantLifetime,
		resourceAsString: cfg.ResourceAsString,
		now:              cfg.Now,
	}
	if c.http == nil {
		c.http = &http.Client{Timeout: 30 * time.Second}
	}
	if c.grantLifetime == 0 {
		c.grantLifetime = 60 * time.Second
	}
	if c.grantLifetime < time.Second || c.grantLifetime > MaxGrantLifetime {
		return nil, fmt.Errorf("maskinporten: grant lifetime %v: want 1s to %v", c.grantLifetime, MaxGrantLifetime)
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// ClientID returns the Maskinporten client_id.
func (c *Client) ClientID() string { return c.clientID }

// KeyID returns the kid of the key that signs the grants.
func (c *Client) KeyID() string { return c.key.KeyID }

// Environment returns the environment the client talks to.
func (c *Client) Environment() Environment { return c.env }

// Token is an access token from Maskinporten with what the broker learned
// about it. Its String method hides the token itself.
type Token struct {
	// AccessToken is the credential. Never log it.
	AccessToken string
	// TokenType is "Bearer".
	TokenType string
	// Scopes are the scopes granted, sorted.
	Scopes []string
	// IssuedAt is when Maskinporten issued the token (its iat, or the
	// local time the answer arrived).
	IssuedAt time.Time
	// ExpiresAt is the token's exp, or IssuedAt + expires_in.
	ExpiresAt time.Time
	// SystemUserID and SystemID come from the token's
	// authorization_details when it has them.
	SystemUserID string
	SystemID     string
	// JWTID is the token's jti, an identifier safe to log and audit.
	JWTID string
}

// String describes the token without the token.
func (t *Token) String() string {
	return fmt.Sprintf("token(jti=%q, scopes=%v, expires=%s)", t.JWTID, t.Scopes, t.ExpiresAt.UTC().Format(time.RFC3339))
}

// GoString is String, so that %#v hides the token too.
func (t *Token) GoString() string { return t.String() }

// Lifetime is ExpiresAt - IssuedAt.
func (t *Token) Lifetime() time.Duration { return t.ExpiresAt.Sub(t.IssuedAt) }

// maxResponse bounds the size of a token endpoint answer.
const maxResponse = 256 << 10

// Token signs a fresh grant for r and exchanges it for an access token.
// Failures are *Error values; ctx bounds the whole exchange.
func (c *Client) Token(ctx context.Context, r Request) (*Token, error) {
	claims, err := c.Grant(r, c.now())
	if err != nil {
		return nil, err
	}
	assertion, err := c.Sign(claims)
	if err != nil {
		return nil, err
	}
	form := url.Values{"grant_type": {GrantType}, "assertion": {assertion}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.env.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("maskinporten: token URL: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &Error{Err: scrubURLError(err), Retryable: true}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, &Error{StatusCode: resp.StatusCode, Err: fmt.Errorf("read answer: %w", err), Retryable: true}
	}
	if len(body) > maxResponse {
		return nil, &Error{StatusCode: resp.StatusCode, Description: "answer too large", Retryable: resp.StatusCode >= 500}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, parseErrorAnswer(resp, body)
	}
	return c.parseToken(body, c.now())
}

// scrubURLError keeps the operation and cause of a transport error; the URL
// carries no secret (the grant is in the body) but is shortened to the host.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		host := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Host
		}
		return fmt.Errorf("%s %s: %w", ue.Op, host, ue.Err)
	}
	return err
}

func parseErrorAnswer(resp *http.Response, body []byte) *Error {
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if isJSON(resp.Header.Get("Content-Type"), body) {
		_ = json.Unmarshal(body, &e)
	}
	if e.Error == "" && e.Description == "" {
		// Not an OAuth error answer (a proxy page, say): keep a short,
		// sanitised excerpt for the log.
		e.Description = string(body)
	}
	return newResponseError(resp.StatusCode, e.Error, e.Description)
}

func isJSON(contentType string, body []byte) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt == "application/json" || strings.HasSuffix(mt, "+json") || bytes.HasPrefix(bytes.TrimSpace(body), []byte("{"))
}

func (c *Client) parseToken(body []byte, now time.Time) (*Token, error) {
	var a struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Scope       string `json:"scope"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, &Error{StatusCode: http.StatusOK, Description: "malformed token answer", Retryable: true}
	}
	switch {
	case a.AccessToken == "":
		return nil, &Error{StatusCode: http.StatusOK, Description: "token answer without access_token", Retryable: true}
	case !strings.EqualFold(a.TokenType, "Bearer"):
		return nil, &Error{StatusCode: http.StatusOK, Description: fmt.Sprintf("token type %q, want Bearer", sanitize(a.TokenType))}
	case a.ExpiresIn <= 0:
		return nil, &Error{StatusCode: http.StatusOK, Description: "token answer without a positive expires_in", Retryable: true}
	}
	t := &Token{
		AccessToken: a.AccessToken,
		TokenType:   "Bearer",
		Scopes:      SortedScopes(strings.Fields(a.Scope)),
		IssuedAt:    now,
		ExpiresAt:   now.Add(time.Duration(a.ExpiresIn) * time.Second),
	}
	readClaims(t)
	return t, nil
}

// readClaims fills in what the token's payload says, when the token is a JWT.
// Digdir asks clients to treat tokens as opaque, so nothing here is required:
// a token that is not a JWT keeps the times from the answer. The token's exp
// wins only when it is earlier, so a token is never reported to live longer
// than expires_in says.
func readClaims(t *Token) {
	parts := strings.Split(t.AccessToken, ".")
	if len(parts) != 3 {
		return
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return
	}
	var cl struct {
		Exp                  json.Number                  `json:"exp"`
		Iat                  json.Number                  `json:"iat"`
		Jti                  string                       `json:"jti"`
		AuthorizationDetails []map[string]json.RawMessage `json:"authorization_details"`
	}
	if json.Unmarshal(payload, &cl) != nil {
		return
	}
	t.JWTID = cl.Jti
	if exp, err := cl.Exp.Int64(); err == nil && exp > 0 {
		if e := time.Unix(exp, 0); e.Before(t.ExpiresAt) {
			t.ExpiresAt = e
		}
	}
	if iat, err := cl.Iat.Int64(); err == nil && iat > 0 {
		if i := time.Unix(iat, 0); i.Before(t.ExpiresAt) {
			t.IssuedAt = i
		}
	}
	for _, d := range cl.AuthorizationDetails {
		if typ := stringField(d, "type"); typ != SystemUserType {
			continue
		}
		t.SystemID = stringField(d, "system_id")
		t.SystemUserID = stringField(d, "systemuser_id")
		break
	}
}

// stringField reads key from m case-insensitively; an array yields its first
// string (systemuser_id is a list).
func stringField(m map[string]json.RawMessage, key string) string {
	for k, raw := range m {
		if !strings.EqualFold(k, key) {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		var ss []string
		if json.Unmarshal(raw, &ss) == nil && len(ss) > 0 {
			return ss[0]
		}
	}
	return ""
}

// SortedScopes returns scopes sorted and without duplicates, as a new slice.
func SortedScopes(scopes []string) []string {
	out := append([]string(nil), scopes...)
	sort.Strings(out)
	n := 0
	for i, s := range out {
		if i == 0 || s != out[n-1] {
			out[n] = s
			n++
		}
	}
	return out[:n]
}
