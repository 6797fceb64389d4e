package maskinporten_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// TestFallbackKeyWhenTheActiveKidIsUnknown: right after a switch, a
// Maskinporten node that does not know the new kid yet refuses the grant;
// the client gets the token with the key it switched from instead, once,
// and only for that refusal.
func TestFallbackKeyWhenTheActiveKidIsUnknown(t *testing.T) {
	t.Parallel()
	emu, c := newEmulated(t)
	emu.ApproveSystemUser(testClientID, customerOrg, "")
	old := c.Key()
	if err := c.SetKey(signertest.Key(t, signertest.KeyB, "kid-not-yet-known")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg}

	// Without a fallback the refusal reaches the caller.
	_, err := c.Token(ctx, req)
	if !maskinporten.UnknownKID(err) {
		t.Fatalf("err = %v, want the unknown kid refusal", err)
	}
	c.SetFallbackKey(old)
	before := emu.Requests()
	tok, err := c.Token(ctx, req)
	if err != nil || tok.AccessToken == "" {
		t.Fatalf("with the fallback: %v", err)
	}
	if n := emu.Requests() - before; n != 2 || c.Fallbacks() != 1 {
		t.Fatalf("%d grants and %d fallbacks, want 2 grants (refused, then the old key) and 1", n, c.Fallbacks())
	}

	// With the unknown kid, a refusal of the request itself comes from the
	// fallback's answer.
	_, err = c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: "314250052"})
	var me *maskinporten.Error
	if !errors.As(err, &me) || me.MPCode != "MP-303" {
		t.Fatalf("err = %v, want the MP-303 of a customer without a system user", err)
	}

	// Other refusals of a known key are not retried with the fallback.
	unknown := c.Key()
	if err := c.SetKey(old); err != nil {
		t.Fatal(err)
	}
	c.SetFallbackKey(unknown)
	fallbacks := c.Fallbacks()
	before = emu.Requests()
	_, err = c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: "314250052"})
	if !errors.As(err, &me) || me.MPCode != "MP-303" {
		t.Fatalf("err = %v, want MP-303", err)
	}
	if n := emu.Requests() - before; n != 1 || c.Fallbacks() != fallbacks {
		t.Fatalf("%d grants for a refusal that is not about the kid, want 1", n)
	}

	// A fallback that is the active key itself is no fallback.
	if err := c.SetKey(unknown); err != nil {
		t.Fatal(err)
	}
	c.SetFallbackKey(unknown)
	if _, err := c.Token(ctx, req); !maskinporten.UnknownKID(err) {
		t.Fatalf("err = %v, want the refusal", err)
	}
}
