package broker

import (
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/orgno"
)

// Request is what a caller asks GetToken for. Field names in errors follow
// the API: client, customer_org, scopes, external_ref, resource,
// min_validity.
type Request struct {
	// Caller is the authenticated identity of the caller, which the policy
	// checks; the transport sets it, never the caller's own words.
	Caller string
	// Client names a configured client; empty when only one is configured.
	Client string
	// CustomerOrg owns the system user: nine digits, "0192:" accepted.
	CustomerOrg string
	// Scopes to ask for; at least one.
	Scopes []string
	// ExternalRef of the system user, if it was created with one.
	ExternalRef string
	// Resource is an optional audience restriction, an absolute URI.
	Resource string
	// MinValidity is how long the token must stay valid; 0 means the
	// broker's default.
	MinValidity time.Duration
	// Kind is KindMaskinporten (or empty) for the Maskinporten token,
	// KindAltinn for the Altinn token exchanged for it.
	Kind string
}

// Token kinds.
const (
	KindMaskinporten = "maskinporten"
	KindAltinn       = "altinn"
)

// Limits on request fields. They are far above what real requests need and
// keep every string the broker handles small.
const (
	MaxClientLen      = 64
	MaxScopes         = 16
	MaxScopeLen       = 256
	MaxExternalRefLen = 255
	MaxResourceLen    = 1024
	MaxMinValidity    = time.Hour
)

// validRequest is a Request after validation: the org number bare, the
// scopes sorted and unique.
type validRequest struct {
	Request
	scopes []string
}

// validate checks every field of r except the client name's existence.
func validate(r Request) (*validRequest, error) {
	if err := checkString("client", r.Client, MaxClientLen); err != nil {
		return nil, err
	}
	if r.CustomerOrg == "" {
		return nil, fieldError("customer_org", "required")
	}
	org, err := orgno.Parse(r.CustomerOrg)
	if err != nil {
		if len(r.CustomerOrg) > 32 || !utf8.ValidString(r.CustomerOrg) {
			return nil, fieldError("customer_org", "not an organisation number: %v", err)
		}
		return nil, fieldError("customer_org", "%q is not an organisation number: %v", r.CustomerOrg, err)
	}
	if len(r.Scopes) == 0 {
		return nil, fieldError("scopes", "at least one scope is required")
	}
	if len(r.Scopes) > MaxScopes {
		return nil, fieldError("scopes", "%d scopes, at most %d allowed", len(r.Scopes), MaxScopes)
	}
	for i, s := range r.Scopes {
		if msg := checkScope(s); msg != "" {
			return nil, fieldError("scopes", "scope %d: %s", i, msg)
		}
	}
	if err := checkExternalRef(r.ExternalRef); err != nil {
		return nil, err
	}
	if r.Resource != "" {
		if err := checkString("resource", r.Resource, MaxResourceLen); err != nil {
			return nil, err
		}
		u, err := url.Parse(r.Resource)
		if err != nil || !u.IsAbs() || u.Fragment != "" || strings.ContainsAny(r.Resource, " \t") {
			return nil, fieldError("resource", "want an absolute URI without fragment")
		}
	}
	switch {
	case r.MinValidity < 0:
		return nil, fieldError("min_validity", "negative")
	case r.MinValidity > MaxMinValidity:
		return nil, fieldError("min_validity", "%v exceeds the maximum of %v", r.MinValidity, MaxMinValidity)
	}
	switch r.Kind {
	case "", KindMaskinporten, KindAltinn:
	default:
		return nil, fieldError("kind", "want MASKINPORTEN or ALTINN")
	}
	v := &validRequest{Request: r, scopes: maskinporten.SortedScopes(r.Scopes)}
	v.CustomerOrg = org
	return v, nil
}

// checkScope accepts an RFC 6749 scope-token: printable ASCII except space,
// double quote and backslash.
func checkScope(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > MaxScopeLen {
		return "longer than " + strconv.Itoa(MaxScopeLen) + " bytes"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return "has a character not allowed in a scope"
		}
	}
	return ""
}

// checkString bounds the length of s and refuses control characters and
// invalid UTF-8.
func checkString(field, s string, limit int) error {
	if len(s) > limit {
		return fieldError(field, "longer than %d bytes", limit)
	}
	if !utf8.ValidString(s) {
		return fieldError(field, "not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case r == utf8.RuneError:
			return fieldError(field, "not valid UTF-8")
		case unicode.IsControl(r):
			return fieldError(field, "has a control character")
		}
	}
	return nil
}

// checkExternalRef is the one rule for external_ref, in GetToken, requests
// and look-ups alike: bounded, valid UTF-8 without control characters, and
// without leading or trailing whitespace. Altinn trims every string of a
// request before storing it (Altinn/altinn-authentication
// src/Authentication/Filters/TrimStringsActionFilter.cs), so a padded
// reference would be stored trimmed, and grants and look-ups with the
// padded value would never match it. Refusing is clearer than trimming
// silently: policy entries and the caller's own records keep one spelling.
func checkExternalRef(ref string) error {
	if err := checkString("external_ref", ref, MaxExternalRefLen); err != nil {
		return err
	}
	if strings.TrimSpace(ref) != ref {
		return fieldError("external_ref", "leading or trailing whitespace (Altinn stores external references trimmed)")
	}
	return nil
}
