// Package audit writes one JSON line per token decision: who asked, for
// what, what was decided and why. A record never holds a token, a grant or
// key material: only the token's jti and a short SHA-256 prefix of it, so
// that a token seen elsewhere can be matched to its record.
package audit

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Decisions.
const (
	Allow           = "allow"
	Deny            = "deny"
	Invalid         = "invalid"
	Error           = "error"
	Unauthenticated = "unauthenticated"
	RateLimited     = "rate_limited"
	// Suppressed marks a summary record: Suppressed records of this peer
	// or caller were not written (see Throttle).
	Suppressed = "suppressed"
)

// Record is one decision.
type Record struct {
	Time   time.Time `json:"time"`
	Caller string    `json:"caller"`
	// Peer is the network address of the caller, for calls refused before
	// the caller was known.
	Peer        string   `json:"peer,omitempty"`
	Method      string   `json:"method"`
	Client      string   `json:"client,omitempty"`
	KeyID       string   `json:"kid,omitempty"`
	CustomerOrg string   `json:"customer_org,omitempty"`
	Scopes      []string `json:"scopes,omitempty"`
	ExternalRef string   `json:"external_ref,omitempty"`
	Resource    string   `json:"resource,omitempty"`
	Decision    string   `json:"decision"`
	Code        string   `json:"code"`
	Reason      string   `json:"reason,omitempty"`
	Cached      bool     `json:"cache_hit"`
	// UpstreamLatencyMS is the Maskinporten fetch this call waited for.
	UpstreamLatencyMS float64 `json:"upstream_latency_ms,omitempty"`
	// TokenJTI is the token's jti; TokenSHA256 the first 16 hex digits of
	// the SHA-256 of the token.
	TokenJTI    string `json:"token_jti,omitempty"`
	TokenSHA256 string `json:"token_sha256,omitempty"`
	// SuppressedCount is, in a record whose Decision is Suppressed, how
	// many records were dropped since the last one written for the same
	// peer or caller.
	SuppressedCount int `json:"suppressed,omitempty"`
}

// Log writes records as JSON lines. It is safe for concurrent use; a nil
// *Log discards.
type Log struct {
	mu  sync.Mutex
	enc *json.Encoder
	w   io.Writer
}

// New returns a Log writing to w.
func New(w io.Writer) *Log {
	return &Log{enc: json.NewEncoder(w), w: w}
}

// maxField bounds every string field of a record, so that a huge bad
// request does not make a huge audit line.
const maxField = 256

// Write writes r, truncating long fields. Errors from the writer are
// returned; the caller decides whether a lost audit line is fatal.
func (l *Log) Write(r Record) error {
	if l == nil {
		return nil
	}
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	for _, f := range []*string{&r.Caller, &r.Peer, &r.Method, &r.Client, &r.KeyID, &r.CustomerOrg, &r.ExternalRef, &r.Resource, &r.Reason} {
		*f = truncate(*f)
	}
	if len(r.Scopes) > 32 {
		r.Scopes = r.Scopes[:32]
	}
	for i := range r.Scopes {
		r.Scopes[i] = truncate(r.Scopes[i])
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.enc.Encode(r)
}

func truncate(s string) string {
	if len(s) <= maxField {
		return s
	}
	return s[:maxField] + "..."
}
