package broker

import (
	"errors"
	"fmt"
)

// Sentinel errors of the broker. Errors from GetToken wrap one of these, a
// *FieldError, or a *maskinporten.Error; test them with errors.Is and
// errors.As.
var (
	// ErrPermissionDenied: the policy refuses the caller; the error wraps
	// a *policy.DeniedError naming the refused field.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrScopeNotAllowed: a requested scope is not configured for the
	// client. The error names the scope.
	ErrScopeNotAllowed = errors.New("scope not allowed")
	// ErrMinValidityTooLong: the requested min_validity is longer than
	// the tokens Maskinporten issues for this key live.
	ErrMinValidityTooLong = errors.New("min_validity longer than the token lifetime")
	// ErrUpstreamSlow: no token arrived from Maskinporten before the
	// caller's deadline; the fetch goes on for later callers.
	ErrUpstreamSlow = errors.New("no answer from Maskinporten before the caller's deadline")
	// ErrNotFound: the system user request does not exist, or exists for
	// a customer the caller may not see; the two are not told apart.
	ErrNotFound = errors.New("no such system user request")
)

// FieldError says that a request field is invalid. Its message starts with
// the field's name as the API spells it.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldError(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
