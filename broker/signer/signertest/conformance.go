package signertest

import (
	"context"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Conformance checks a backend's key the way every backend is checked:
// its exported public JWK is registered at the Maskinporten emulator, and a
// system user token is fetched with grants it signs.
func Conformance(tb testing.TB, key *signer.Key) {
	tb.Helper()
	pub, err := key.PublicJWK()
	if err != nil {
		tb.Fatal(err)
	}
	emu, srv := maskinportentest.NewServer(tb, maskinportentest.Config{SigningKey: RSA(tb, KeyB)})
	if err := emu.AddClient(maskinportentest.Client{ID: "conformance", Org: "991825827", SystemID: "991825827_c",
		Scopes: []string{"altinn:systembruker.demo"}, Keys: []jwk.Key{pub}}); err != nil {
		tb.Fatal(err)
	}
	emu.ApproveSystemUser("conformance", "310904473", "")
	c, err := maskinporten.New(maskinporten.Config{ClientID: "conformance", Key: key,
		Environment: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"}})
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{"altinn:systembruker.demo"}, CustomerOrg: "310904473"})
	if err != nil {
		tb.Fatalf("conformance: %s: %v", key, err)
	}
	if tok.SystemUserID == "" {
		tb.Errorf("conformance: %s: token without system user", key)
	}
}
