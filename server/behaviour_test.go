package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// TestUpstreamSlowIsUnavailable: no token before the caller's deadline is
// Maskinporten being slow, which the caller may retry: Unavailable, not
// Internal.
func TestUpstreamSlowIsUnavailable(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("%w (client %q, customer_org %s)", broker.ErrUpstreamSlow, "demo", "310904473")
	if st := status.Convert(toStatus(err)); st.Code() != codes.Unavailable {
		t.Errorf("toStatus(%v) = %v, want Unavailable", err, st)
	}
}

// peerWith returns a context whose peer presented certs over TLS.
func peerWith(certs ...[]byte) (context.Context, error) {
	var parsed []*x509.Certificate
	for _, der := range certs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		parsed = append(parsed, c)
	}
	ti := credentials.TLSInfo{}
	ti.State.PeerCertificates = parsed
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{}, AuthInfo: ti}), nil
}

// TestServerAuthOnlyCertRefusedAsCaller: a certificate from the callers' CA
// that is valid only for server authentication does not make a caller.
func TestServerAuthOnlyCertRefusedAsCaller(t *testing.T) {
	t.Parallel()
	ca := tlstest.NewCA(t, "callers")
	auth := MTLS(ca.Pool())
	serverOnly := ca.Issue(t, tlstest.Leaf{CN: "billing", DNS: []string{"billing.example"}, Server: true})
	ctx, err := peerWith(serverOnly.TLS.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err == nil {
		t.Errorf("server-auth-only certificate accepted as caller %q", id)
	}
	// The same CA's client certificate is accepted, by its DNS name.
	client := ca.Issue(t, tlstest.Leaf{CN: "billing", DNS: []string{"billing.example"}})
	ctx, err = peerWith(client.TLS.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err != nil || id.String() != "dns:billing.example" {
		t.Errorf("client certificate: %q, %v; want dns:billing.example", id, err)
	}
	// A client certificate of another CA is refused.
	other := tlstest.NewCA(t, "other").Issue(t, tlstest.Leaf{CN: "billing"})
	ctx, err = peerWith(other.TLS.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err == nil {
		t.Errorf("foreign certificate accepted as caller %q", id)
	}
}
