package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/server"
)

// TestZeroIdentityIsUnauthenticatedAtTheTap: an authenticator that returns
// no error and no identity has not authenticated the caller. The tap
// refuses the call itself, as it refuses any call without an identity,
// and audits the refusal; the call never gets past it.
func TestZeroIdentityIsUnauthenticatedAtTheTap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *server.Config) {
		c.Authenticate = func(context.Context) (identity.ID, error) { return identity.ID{}, nil }
	})
	_, err := h.get(t, validRequest())
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetToken: %v, want Unauthenticated", err)
	}
	if !strings.Contains(status.Convert(err).Message(), "no identity") {
		t.Errorf("message %q, want the tap's reason (no identity)", status.Convert(err).Message())
	}
	if a := h.audit.String(); !strings.Contains(a, `"decision":"unauthenticated"`) {
		t.Errorf("no unauthenticated record in the audit log:\n%s", a)
	}
	if n := h.emu.Requests(); n != 0 {
		t.Errorf("%d grants, want none", n)
	}
}
