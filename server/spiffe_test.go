package server

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// TestSPIFFEAuthenticator: a caller is its SVID's SPIFFE ID when the SVID
// verifies against the bundle of its own trust domain and allows client
// authentication; anything else is refused with the reason.
func TestSPIFFEAuthenticator(t *testing.T) {
	t.Parallel()
	home, partner, stranger := tlstest.NewCA(t, "example.org"), tlstest.NewCA(t, "partner.org"), tlstest.NewCA(t, "stranger.org")
	bundles := x509bundle.NewSet(
		x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.org"), []*x509.Certificate{home.Cert}),
		x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("partner.org"), []*x509.Certificate{partner.Cert}))
	auth := SPIFFE(bundles)
	for _, tc := range []struct {
		name string
		cert *tlstest.Issued
		want string // the identity, or a word of the error
		ok   bool
	}{
		{"home", home.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}}), "spiffe://example.org/ns/prod/sa/billing", true},
		{"federated", partner.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://partner.org/billing"}}), "spiffe://partner.org/billing", true},
		{"no_bundle", stranger.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://stranger.org/billing"}}), "stranger.org", false},
		{"home_id_foreign_ca", partner.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}}), "not accepted", false},
		{"server_auth_only", home.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/billing"}, Server: true}), "client authentication", false},
		{"no_spiffe_id", home.Issue(t, tlstest.Leaf{CN: "billing", DNS: []string{"billing.example.org"}}), "not accepted", false},
		{"two_spiffe_ids", home.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/a", "spiffe://example.org/b"}}), "not accepted", false},
		{"expired", home.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/billing"}, Expired: true}), "expired", false},
	} {
		ctx, err := peerWith(tc.cert.TLS.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		id, err := auth(ctx)
		switch {
		case tc.ok && (err != nil || id.String() != tc.want):
			t.Errorf("%s: %q, %v; want %s", tc.name, id, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %q, %v; want an error with %q", tc.name, id, err, tc.want)
		}
	}
	if _, err := auth(context.Background()); err == nil {
		t.Error("a call without a peer authenticated")
	}
	ctx, err := peerWith()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth(ctx); err == nil || !strings.Contains(err.Error(), "no client certificate") {
		t.Errorf("no certificate: %v", err)
	}
}
