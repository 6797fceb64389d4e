package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// TestSignErrorIsUnavailable: a signing backend that fails is a passing
// outage the caller may retry, not an internal error.
func TestSignErrorIsUnavailable(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("client %q: %w", "demo", &maskinporten.SignError{Key: `pkcs11 key "k" (RS256)`, Err: errors.New("CKR_DEVICE_REMOVED")})
	if st := status.Convert(toStatus(err)); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "signing backend") {
		t.Errorf("toStatus(%v) = %v, want Unavailable naming the signing backend", err, st)
	}
}

// TestAltinnStatus: Altinn's answers map to codes a caller can act on,
// and keep Altinn's own code.
func TestAltinnStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pe   altinn.ProblemError
		code codes.Code
	}{
		{altinn.ProblemError{StatusCode: 0}, codes.Unavailable},
		{altinn.ProblemError{StatusCode: 500}, codes.Unavailable},
		{altinn.ProblemError{StatusCode: 503}, codes.Unavailable},
		{altinn.ProblemError{StatusCode: 429}, codes.Unavailable},
		{altinn.ProblemError{StatusCode: 404}, codes.NotFound},
		{altinn.ProblemError{StatusCode: 409, Code: "AUTH-00004"}, codes.AlreadyExists},
		{altinn.ProblemError{StatusCode: 400, Code: "AUTH.VLD-00002"}, codes.AlreadyExists},
		{altinn.ProblemError{StatusCode: 401}, codes.PermissionDenied},
		{altinn.ProblemError{StatusCode: 403}, codes.PermissionDenied},
		{altinn.ProblemError{StatusCode: 400, Code: "AUTH.VLD-00011"}, codes.InvalidArgument},
		{altinn.ProblemError{StatusCode: 400, Code: "AUTH-00001"}, codes.InvalidArgument},
		{altinn.ProblemError{StatusCode: 400, Code: "AUTH-00021"}, codes.InvalidArgument},
		{altinn.ProblemError{StatusCode: 400}, codes.InvalidArgument},
		{altinn.ProblemError{StatusCode: 400, Code: "AUTH-99999"}, codes.FailedPrecondition},
		{altinn.ProblemError{StatusCode: 422}, codes.FailedPrecondition},
	} {
		pe := tc.pe
		st := status.Convert(toStatus(fmt.Errorf("vendor: %w", &pe)))
		if st.Code() != tc.code {
			t.Errorf("%v: %v, want %v", &pe, st.Code(), tc.code)
			continue
		}
		var info *errdetails.ErrorInfo
		for _, d := range st.Details() {
			if i, ok := d.(*errdetails.ErrorInfo); ok {
				info = i
			}
		}
		if info == nil || info.GetDomain() != AltinnDomain || (pe.Code != "" && (info.GetReason() != pe.Code || info.GetMetadata()["code"] != pe.Code)) {
			t.Errorf("%v: error info %v", &pe, info)
		}
	}
}

func unixPeer(ai UnixAuthInfo) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.UnixAddr{Name: "@", Net: "unix"}, AuthInfo: ai})
}

// TestUnixPeerIdentity: a mapped uid is its identity, an unmapped one gets
// the fallback or is refused without one, and a peer whose credentials
// the kernel did not give is refused.
func TestUnixPeerIdentity(t *testing.T) {
	t.Parallel()
	ids := map[uint32]identity.ID{1000: identity.MustParse("unix:billing")}
	withFallback := UnixPeer(ids, identity.MustParse("unix:local"))
	noFallback := UnixPeer(ids, identity.ID{})
	if id, err := withFallback(unixPeer(UnixAuthInfo{Known: true, UID: 1000})); err != nil || id.String() != "unix:billing" {
		t.Errorf("mapped uid with a fallback: %q, %v; want billing", id, err)
	}
	if id, err := noFallback(unixPeer(UnixAuthInfo{Known: true, UID: 1000})); err != nil || id.String() != "unix:billing" {
		t.Errorf("mapped uid: %q, %v; want billing", id, err)
	}
	if id, err := withFallback(unixPeer(UnixAuthInfo{Known: true, UID: 1001})); err != nil || id.String() != "unix:local" {
		t.Errorf("unmapped uid with a fallback: %q, %v; want local", id, err)
	}
	if id, err := noFallback(unixPeer(UnixAuthInfo{Known: true, UID: 1001})); err == nil {
		t.Errorf("unmapped uid without a fallback: %q, want refused", id)
	}
	if id, err := withFallback(unixPeer(UnixAuthInfo{Known: false, UID: 1000})); err == nil {
		t.Errorf("unknown credentials: %q, want refused", id)
	}
	if id, err := withFallback(context.Background()); err == nil {
		t.Errorf("no peer: %q, want refused", id)
	}
}
