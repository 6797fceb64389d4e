package selfservice

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/tokenbroker/tokenbroker/broker/redact"
)

// Errors to test with errors.Is on what Keys and SetKeys return.
var (
	// ErrDuplicateKID: the API answered 409, a kid of the set is already
	// registered (on another client, or with other key material).
	ErrDuplicateKID = errors.New("selfservice: a kid is already registered")
	// ErrTooManyKeys: more keys than a client keeps
	// (rotation.MaxRegisteredKeys).
	ErrTooManyKeys = errors.New("selfservice: too many keys for one client")
	// ErrForbidden: the API refused the admin token (401, after one retry
	// with a new token, or 403: a missing scope or a client of another
	// organisation).
	ErrForbidden = errors.New("selfservice: not allowed")
	// ErrNotFound: the API does not know the client (404).
	ErrNotFound = errors.New("selfservice: no such client")
)

// maxMessage bounds the text kept from an error answer.
const maxMessage = 512

// Error is a failed call: an error answer from the API or a failure to
// reach it. Its text is scrubbed of anything token-shaped (package redact)
// and bounded; it never holds the access token, a grant or key material.
type Error struct {
	// Op is "read keys" or "set keys"; ClientID the client called for.
	Op, ClientID string
	// StatusCode is the HTTP status, 0 when no answer came.
	StatusCode int
	// Code is the answer's "error", Message its error messages (errors[]
	// or error_description), CorrelationID its correlation_id, which
	// Digdir's support asks for.
	Code, Message, CorrelationID string
	// Err is the transport error, if any, scrubbed.
	Err error

	sentinel error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("selfservice: ")
	b.WriteString(e.Op)
	if e.ClientID != "" {
		fmt.Fprintf(&b, " of client %q", redact.Cut(e.ClientID, 64))
	}
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.StatusCode)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	} else if e.Code != "" {
		fmt.Fprintf(&b, ": %s", e.Code)
	}
	if e.CorrelationID != "" {
		fmt.Fprintf(&b, " (correlation_id %s)", e.CorrelationID)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the transport error.
func (e *Error) Unwrap() error { return e.Err }

// Is matches ErrDuplicateKID, ErrTooManyKeys, ErrForbidden and ErrNotFound.
func (e *Error) Is(target error) bool {
	return target != nil && target == e.sentinel
}

// newError reads an error answer in Digdir's shape: {status, timestamp,
// correlation_id, errors[{errorMessage, ...}], error, error_description}.
func newError(op, clientID string, status int, body []byte) *Error {
	var ans struct {
		CorrelationID string `json:"correlation_id"`
		Errors        []struct {
			Message string `json:"errorMessage"`
		} `json:"errors"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(body, &ans)
	var msgs []string
	for _, fe := range ans.Errors {
		if fe.Message != "" {
			msgs = append(msgs, fe.Message)
		}
	}
	msg := strings.Join(msgs, "; ")
	if msg == "" {
		msg = strings.TrimLeft(ans.Description, ", ")
	}
	e := &Error{
		Op: op, ClientID: clientID, StatusCode: status,
		Code:          redact.Cut(ans.Error, 128),
		Message:       redact.Cut(msg, maxMessage),
		CorrelationID: redact.Cut(ans.CorrelationID, 64),
	}
	switch {
	case status == http.StatusConflict:
		e.sentinel = ErrDuplicateKID
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		e.sentinel = ErrForbidden
	case status == http.StatusNotFound:
		e.sentinel = ErrNotFound
	case status == http.StatusBadRequest && strings.Contains(strings.ToLower(msg), "at most") && strings.Contains(msg, "keys"):
		e.sentinel = ErrTooManyKeys
	}
	return e
}

// scrubbed returns err with its text cleaned of the token and anything
// token-shaped, and bounded; errors.Is still sees through it (a deadline,
// a refused connection). nil for nil.
func scrubbed(err error, token string) error {
	if err == nil {
		return nil
	}
	s := err.Error()
	if token != "" {
		s = strings.ReplaceAll(s, token, redact.Mark)
	}
	return &scrubError{text: redact.Cut(s, maxMessage), err: err}
}

type scrubError struct {
	text string
	err  error
}

func (e *scrubError) Error() string { return e.text }
func (e *scrubError) Unwrap() error { return e.err }
