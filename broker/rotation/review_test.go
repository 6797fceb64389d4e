package rotation_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// A next key removed from the registration by someone else after it became
// active must not make the rotation remove the old key too: that would
// leave no key we hold registered, and every replica still on the old key
// would stop getting tokens.
func TestRotationRetireKeepsOldWhenNextWasRemoved(t *testing.T) {
	w := newWorld(t)
	r := w.rotator(t, nil)
	ctx := context.Background()
	rep, err := r.Pass(ctx, rotation.Options{Force: true})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("%+v %v", rep, err)
	}
	// Someone replaces the set: the config key and a key of theirs, not
	// our next key.
	reg, _ := w.reg.Keys(ctx, "cid")
	hand, _ := rsa.GenerateKey(rand.Reader, 2048)
	pub, _ := rotation.PublicJWK("by-hand", signer.RS256, &hand.PublicKey)
	if _, err := w.reg.SetKeys(ctx, "cid", []json.RawMessage{reg[0].JWK, pub}); err != nil {
		t.Fatal(err)
	}
	w.advance(rotation.DefaultGrace)
	if _, err := r.Pass(ctx, rotation.Options{}); err == nil {
		t.Fatal("the rotation retired the old key while the next one is not registered")
	}
	if got := w.reg.kids(); !slices.Contains(got, "config-kid") {
		t.Fatalf("registered %v: the old key, the only one we hold, was removed", got)
	}
	if len(w.maker.destroyed) != 0 {
		t.Fatalf("destroyed %v", w.maker.destroyed)
	}
}

// A renewal that does not move the active key's expiry (Digdir caps or
// ignores it) must not be reported as done pass after pass until the key
// expires: the key is rotated instead, which registers a fresh one.
func TestRotationRotatesWhenRenewalDoesNotRenew(t *testing.T) {
	w := newWorld(t)
	r := w.rotator(t, nil)
	ctx := context.Background()
	if _, err := r.Pass(ctx, rotation.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	w.advance(rotation.DefaultGrace)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("%+v %v", rep, err)
	}
	active := rep.Active
	// Ten days later the active key expires in 20 days, and posting it
	// again does not change that.
	w.advance(10 * 24 * time.Hour)
	w.reg.mu.Lock()
	w.reg.keys[0].Expires = w.clock().Add(20 * 24 * time.Hour)
	w.reg.noRenew = true
	w.reg.mu.Unlock()
	rep, err = r.Pass(ctx, rotation.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != rotation.OutcomeWaiting || rep.Old != active {
		t.Fatalf("%+v: the key in use expires in 20 days and is not rotated", rep)
	}
}
