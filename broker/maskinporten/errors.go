package maskinporten

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/redact"
)

// ErrNoSystemUser matches (with errors.Is) an *Error saying that the customer
// has no approved system user for this client's system and external
// reference: MP-303, or the error invalid_altinn_customer_configuration.
var ErrNoSystemUser = errors.New("no approved system user for this customer")

// Error is a failed token request: an error answer from Maskinporten, or a
// failure to reach it. It never holds the grant or a token.
type Error struct {
	// StatusCode is the HTTP status, 0 when no answer came.
	StatusCode int
	// Code is Maskinporten's OAuth error ("invalid_grant", ...), if any.
	Code string
	// MPCode is the MP-nnn code found in the description, if any.
	MPCode string
	// Description is Maskinporten's error_description, stripped of
	// anything that looks like a token and bounded in length.
	Description string
	// Retryable says whether the same request may succeed later or with a
	// fresh grant: network failures, 5xx, 429, MP-012, MP-130 and "issue
	// time is after now". Everything else needs a change of config or of
	// the customer's system users.
	Retryable bool
	// RetryAfter is the wait Maskinporten asked for with Retry-After.
	RetryAfter time.Duration
	// CircuitOpen is true when the call was not made because the
	// breaker is open after a run of failures.
	CircuitOpen bool
	// Throttled is true when the grant was not sent because Maskinporten
	// asked the client to wait (429 with Retry-After) until RetryAfter.
	Throttled bool
	// Err is the underlying transport error, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("maskinporten: ")
	switch {
	case e.Err != nil && e.StatusCode == 0:
		b.WriteString(e.Err.Error())
		return b.String()
	case e.StatusCode != 0:
		fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
	}
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.MPCode != "" && !strings.Contains(e.Description, e.MPCode) {
		fmt.Fprintf(&b, " %s", e.MPCode)
	}
	if e.Description != "" {
		fmt.Fprintf(&b, ": %s", e.Description)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the transport error.
func (e *Error) Unwrap() error { return e.Err }

// Is reports ErrNoSystemUser for MP-303 answers.
func (e *Error) Is(target error) bool {
	return target == ErrNoSystemUser && e.NoSystemUser()
}

// NoSystemUser reports whether Maskinporten found no system user matching
// the grant's authorization_details.
func (e *Error) NoSystemUser() bool {
	return e.MPCode == "MP-303" || e.Code == "invalid_altinn_customer_configuration"
}

var (
	mpCodeRE = regexp.MustCompile(`\bMP-\d{3}\b`)
)

// maxDescription bounds the description kept from an error answer.
const maxDescription = 512

// newResponseError classifies an error answer from the token endpoint.
func newResponseError(status int, code, description string) *Error {
	desc := sanitize(description)
	e := &Error{
		StatusCode:  status,
		Code:        sanitize(code),
		MPCode:      mpCodeRE.FindString(desc),
		Description: desc,
	}
	switch {
	case status >= 500 || status == 429:
		e.Retryable = true
	case e.MPCode == "MP-012", e.MPCode == "MP-130":
		e.Retryable = true
	case strings.Contains(strings.ToLower(desc), "issue time is after now"):
		e.Retryable = true
	}
	return e
}

// sanitize removes token-shaped strings and control characters and then
// bounds the length (package redact), so that an error answer can be
// logged and passed on.
func sanitize(s string) string { return redact.Cut(s, maxDescription) }
