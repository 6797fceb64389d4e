package altinn

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// The base URLs of Altinn's authentication API, paired with the
// Maskinporten environments like the exchange URLs.
const (
	TT02BaseURL = "https://platform.tt02.altinn.no/authentication/api/v1"
	ProdBaseURL = "https://platform.altinn.no/authentication/api/v1"
)

// Scopes the vendor needs at Maskinporten for system user requests.
const (
	ScopeRequestWrite = "altinn:authentication/systemuser.request.write"
	ScopeRequestRead  = "altinn:authentication/systemuser.request.read"
)

// BaseURLFor returns the API base URL that pairs with env, or override when
// not empty; an override naming the other environment's host is refused.
func BaseURLFor(env, override string) (string, error) {
	var own, other string
	switch env {
	case "test":
		own, other = TT02BaseURL, ProdBaseURL
	case "prod":
		own, other = ProdBaseURL, TT02BaseURL
	default:
		return "", fmt.Errorf("altinn: no API for environment %q", env)
	}
	if override == "" {
		return own, nil
	}
	u, err := url.Parse(override)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("altinn base_url %q: want an absolute http(s) URL", override)
	}
	if ou, _ := url.Parse(other); strings.EqualFold(u.Hostname(), ou.Hostname()) {
		return "", fmt.Errorf("altinn base_url %q belongs to the other environment than %s", override, env)
	}
	return strings.TrimSuffix(override, "/"), nil
}

// Right is a right of a standard system user: one resource.
type Right struct {
	Resource []Attribute `json:"resource"`
}

// Attribute is an id/value pair, as Altinn writes resources.
type Attribute struct {
	ID    string `json:"id"`
	Value string `json:"value"`
}

// AccessPackage names an access package by its URN.
type AccessPackage struct {
	URN string `json:"urn"`
}

// Request is a system user request, with Altinn's JSON names.
type Request struct {
	ID             string          `json:"id,omitempty"`
	ExternalRef    string          `json:"externalRef,omitempty"`
	SystemID       string          `json:"systemId"`
	PartyOrgNo     string          `json:"partyOrgNo"`
	Rights         []Right         `json:"rights,omitempty"`
	AccessPackages []AccessPackage `json:"accessPackages,omitempty"`
	Status         string          `json:"status,omitempty"`
	RedirectURL    string          `json:"redirectUrl,omitempty"`
	ConfirmURL     string          `json:"confirmUrl,omitempty"`
	Created        time.Time       `json:"created,omitzero"`
}

// ProblemError is an error answer of Altinn's API (RFC 7807), with the
// AUTH-000nn / AUTH.VLD-000nn code when one is found in it.
type ProblemError struct {
	StatusCode int
	Code       string
	Detail     string
}

func (e *ProblemError) Error() string {
	s := fmt.Sprintf("altinn: HTTP %d", e.StatusCode)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

var authCodeRE = regexp.MustCompile(`AUTH(\.VLD)?-\d{5}`)

// Vendor calls Altinn's system user request API with the vendor's Altinn
// token.
type Vendor struct {
	base string
	http *http.Client
}

// NewVendor returns a client for the API at base; a nil client means one
// with a 30 s timeout.
func NewVendor(base string, client *http.Client) *Vendor {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return &Vendor{base: strings.TrimSuffix(base, "/"), http: client}
}

func requestPath(agent bool) string {
	if agent {
		return "/systemuser/request/vendor/agent"
	}
	return "/systemuser/request/vendor"
}

// CreateRequest posts r. existing is true when Altinn answered with a
// pending request it already had for the same system, party and external
// reference (200 instead of 201).
func (v *Vendor) CreateRequest(ctx context.Context, token string, agent bool, r Request) (out *Request, existing bool, err error) {
	body, _ := json.Marshal(r)
	status, err := v.do(ctx, token, http.MethodPost, requestPath(agent), body, &out)
	return out, status == http.StatusOK, err
}

// GetRequest reads a request by id.
func (v *Vendor) GetRequest(ctx context.Context, token string, agent bool, id string) (*Request, error) {
	var out *Request
	_, err := v.do(ctx, token, http.MethodGet, requestPath(agent)+"/"+url.PathEscape(id), nil, &out)
	return out, err
}

// GetRequestByExternalRef reads the request of a system, party and external
// reference.
func (v *Vendor) GetRequestByExternalRef(ctx context.Context, token string, agent bool, systemID, org, ref string) (*Request, error) {
	var out *Request
	p := requestPath(agent) + "/byexternalref/" + url.PathEscape(systemID) + "/" + url.PathEscape(org) + "/" + url.PathEscape(ref)
	_, err := v.do(ctx, token, http.MethodGet, p, nil, &out)
	return out, err
}

const maxVendorAnswer = 1 << 20

func (v *Vendor) do(ctx context.Context, token, method, path string, body []byte, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, v.base+path, rd)
	if err != nil {
		return 0, fmt.Errorf("altinn: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := v.http.Do(req)
	if err != nil {
		return 0, &ProblemError{Detail: "Altinn could not be reached: " + strings.ReplaceAll(err.Error(), token, "[token]")}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxVendorAnswer))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		pe := &ProblemError{StatusCode: resp.StatusCode, Code: authCodeRE.FindString(string(data))}
		var p struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		if json.Unmarshal(data, &p) == nil {
			pe.Detail = p.Detail
			if pe.Detail == "" {
				pe.Detail = p.Title
			}
		}
		if len(pe.Detail) > 300 {
			pe.Detail = pe.Detail[:300]
		}
		return resp.StatusCode, pe
	}
	if err := json.Unmarshal(data, out); err != nil {
		return resp.StatusCode, &ProblemError{StatusCode: resp.StatusCode, Detail: "malformed answer"}
	}
	return resp.StatusCode, nil
}
