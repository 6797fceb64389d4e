package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

func TestToStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"field", &broker.FieldError{Field: "scopes", Reason: "required"}, codes.InvalidArgument, "scopes: required"},
		{"scope", fmt.Errorf("%w: scope %q", broker.ErrScopeNotAllowed, "x:y"), codes.PermissionDenied, `"x:y"`},
		{"min_validity", broker.ErrMinValidityTooLong, codes.OutOfRange, "min_validity"},
		{"mp303", fmt.Errorf("client: %w", &maskinporten.Error{StatusCode: 400, Code: "invalid_altinn_customer_configuration", MPCode: "MP-303"}), codes.FailedPrecondition, "approve a system user"},
		{"mp200", &maskinporten.Error{StatusCode: 400, Code: "invalid_scope", MPCode: "MP-200"}, codes.FailedPrecondition, "MP-200"},
		{"mp_5xx", &maskinporten.Error{StatusCode: 503, Retryable: true}, codes.Unavailable, "unavailable"},
		{"network", &maskinporten.Error{Err: errors.New("dial tcp: refused"), Retryable: true}, codes.Unavailable, "refused"},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "deadline"},
		{"canceled", context.Canceled, codes.Canceled, "canceled"},
		{"other", errors.New("secret internals: /etc/key.pem"), codes.Internal, "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := status.Convert(toStatus(tc.err))
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("toStatus(%v) = %v, want %v containing %q", tc.err, st, tc.code, tc.msg)
			}
			if tc.code == codes.Internal && strings.Contains(st.Message(), "secret") {
				t.Errorf("Internal leaks detail: %q", st.Message())
			}
		})
	}
}

func TestRecoverUnary(t *testing.T) {
	t.Parallel()
	var buf strings.Builder
	s := &Server{log: slog.New(slog.NewTextHandler(&buf, nil))}
	_, err := s.recoverUnary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
		func(ctx context.Context, req any) (any, error) { panic("boom") })
	if status.Code(err) != codes.Internal {
		t.Fatalf("error = %v, want Internal", err)
	}
	if !strings.Contains(buf.String(), "boom") {
		t.Errorf("panic not logged: %s", buf.String())
	}
}

// An open breaker or a 429 pause answers Unavailable with a RetryInfo
// saying when to come back.
func TestStatusRetryInfo(t *testing.T) {
	t.Parallel()
	for name, err := range map[string]error{
		"circuit_open": fmt.Errorf("client %q: %w", "demo", &maskinporten.Error{Retryable: true, CircuitOpen: true, RetryAfter: 200 * time.Millisecond, Err: errors.New("circuit open")}),
		"throttled":    &maskinporten.Error{StatusCode: 429, Retryable: true, Throttled: true, RetryAfter: 200 * time.Millisecond},
	} {
		st := status.Convert(toStatus(err))
		var ri *errdetails.RetryInfo
		for _, d := range st.Details() {
			if r, ok := d.(*errdetails.RetryInfo); ok {
				ri = r
			}
		}
		if st.Code() != codes.Unavailable || ri == nil || ri.GetRetryDelay().AsDuration() != 200*time.Millisecond {
			t.Errorf("%s: %v with RetryInfo %v, want Unavailable with a 200ms RetryInfo", name, st, ri)
		}
	}
}
