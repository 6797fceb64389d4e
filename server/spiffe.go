package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/broker/identity"
)

// SPIFFE authenticates callers by the X.509-SVID they present: the chain
// must verify against the bundle of the SVID's own trust domain as bundles
// holds it at the call (the broker's trust domain, or one the SPIRE agent
// delivers because it is federated with it), and allow client
// authentication. The identity is the SVID's SPIFFE ID. A caller from a
// trust domain without a bundle is refused here; one from a federated
// trust domain still needs a policy rule that names it.
func SPIFFE(bundles x509bundle.Source) Authenticator {
	return func(ctx context.Context) (identity.ID, error) {
		certs, err := peerCertificates(ctx)
		if err != nil {
			return identity.ID{}, err
		}
		id, _, err := x509svid.Verify(certs, bundles)
		if err != nil {
			return identity.ID{}, fmt.Errorf("X.509-SVID not accepted: %v", err)
		}
		if eku := certs[0].ExtKeyUsage; len(eku) > 0 && !slices.Contains(eku, x509.ExtKeyUsageClientAuth) && !slices.Contains(eku, x509.ExtKeyUsageAny) {
			return identity.ID{}, errors.New("X.509-SVID not accepted: not for client authentication")
		}
		return identity.New(identity.SPIFFE, id.String())
	}
}

// peerCertificates returns the certificates the TLS peer of the call
// presented, leaf first.
func peerCertificates(ctx context.Context) ([]*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, errors.New("not a TLS connection")
	}
	switch certs := ti.State.PeerCertificates; {
	case len(certs) == 0:
		return nil, errors.New("no client certificate")
	case len(certs) > MaxClientChain:
		return nil, fmt.Errorf("client certificate not accepted: a chain of %d certificates, at most %d allowed", len(certs), MaxClientChain)
	default:
		return certs, nil
	}
}
