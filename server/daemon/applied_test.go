package daemon

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/rotation/filestore"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// TestAStateThisReplicaCannotApplyHoldsUpNoOtherClient: a replica that
// cannot open client a's new key keeps a's old key (and acks it), but
// client b's new state is still applied, and a reload still loads. The key ring is built from the states applied, not from a's
// state as read: with it, every later change of the ring (b's rotation, a
// SIGHUP) tried a's new key again and failed with it, so that b's old key
// stayed registered (this replica acked it) and no reload took.
func TestAStateThisReplicaCannotApplyHoldsUpNoOtherClient(t *testing.T) {
	dir := t.TempDir()
	for name, file := range map[string]string{"a.pem": "rsa-a.pkcs8.pem", "b.pem": "rsa-b.pkcs8.pem"} {
		if err := os.WriteFile(filepath.Join(dir, name), signertest.PEM(t, file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	yaml := rotationConfig(okSelfService, "") +
		"    rotation:\n      new_keys: file:keys/\n" +
		"  - name: other\n    client_id: 0b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a90\n    scopes: [altinn:systembruker.demo]\n" +
		"    key: {kid: other-2026, signer: file:b.pem}\n    rotation:\n      new_keys: file:keys/\n"
	yaml = strings.Replace(yaml, "signer: file:mp-key.pem", "signer: file:a.pem", 1)
	cfg, err := Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	maker, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:keys/", BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	kr := &keyRotation{names: []string{"smartcloud", "other"}, makers: map[string]keymaker.Maker{"smartcloud": maker, "other": maker},
		states: map[string]rotation.State{}, errs: map[string]string{}}
	for _, name := range kr.names {
		kr.setState(name, rotation.State{})
	}
	rt := runningWith(t, cfg, dir, kr)
	ring := rt.ring
	kr.apply = rt.applyRotation

	made := func(kid string) rotation.State {
		spec, err := maker.Make(ctx, kid)
		if err != nil {
			t.Fatal(err)
		}
		return rotation.State{Active: kid, Keys: []rotation.ManagedKey{{KID: kid, URI: spec.URI, Algorithm: signer.RS256}}}
	}
	// smartcloud's new key is in a directory this replica does not see.
	aNext := uuid.NewString()
	stA := made(aNext)
	if err := os.Remove(filepath.Join(dir, "keys", aNext+".pem")); err != nil {
		t.Fatal(err)
	}
	if err := kr.applier("smartcloud")(ctx, stA); err == nil {
		t.Fatal("a key this replica cannot open was applied")
	}
	if got := rt.signsWith("smartcloud"); got != "smartcloud-2026" {
		t.Fatalf("smartcloud signs with %q, want its old key", got)
	}
	bNext := uuid.NewString()
	if err := kr.applier("other")(ctx, made(bNext)); err != nil {
		t.Fatalf("other's new state is not applied: %v", err)
	}
	if got := rt.signsWith("other"); got != bNext {
		t.Fatalf("other signs with %q, want %s", got, bNext)
	}
	if got := rt.signsWith("smartcloud"); got != "smartcloud-2026" {
		t.Fatalf("smartcloud signs with %q, want its old key", got)
	}
	// A reload builds the ring from the same states (appliedSnapshot).
	rcs, err := ringClients(cfg, dir, kr.appliedSnapshot(), kr.owns)
	if err != nil {
		t.Fatal(err)
	}
	if err := ring.Replace(ctx, rcs); err != nil {
		t.Fatalf("a reload would fail: %v", err)
	}
	// status and metrics show the state as read.
	if st := kr.snapshot()["smartcloud"]; st.Active != aNext {
		t.Fatalf("the state read is not shown: active %q", st.Active)
	}
}

// TestApplyRotationSkipsWhatTheRingHolds: the rotator applies a state as
// it saves it and the follower again when it reads it; a state whose keys
// the ring holds already reopens nothing, and an older state (a lower
// Seq, read before the rotator's newer save) is not applied over it.
func TestApplyRotationSkipsWhatTheRingHolds(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.pem"), signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(strings.Replace(rotationConfig(okSelfService, okRotation), "signer: file:mp-key.pem", "signer: file:a.pem", 1)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	maker, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:keys/", BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	kr := &keyRotation{names: []string{"smartcloud"}, makers: map[string]keymaker.Maker{"smartcloud": maker},
		states: map[string]rotation.State{}, errs: map[string]string{}}
	kr.setState("smartcloud", rotation.State{})
	kr.setApplied("smartcloud", rotation.State{})
	rt := runningWith(t, cfg, dir, kr)
	ring := rt.ring
	kid := uuid.NewString()
	spec, err := maker.Make(ctx, kid)
	if err != nil {
		t.Fatal(err)
	}
	st := rotation.State{Active: kid, Keys: []rotation.ManagedKey{{KID: kid, URI: spec.URI, Algorithm: signer.RS256}}, Seq: 5}
	if err := rt.applyRotation(ctx, "smartcloud", st); err != nil {
		t.Fatal(err)
	}
	handle := ring.Active("smartcloud")
	if handle == nil || handle.KeyID != kid {
		t.Fatalf("active %v, want %s", handle, kid)
	}
	// The same keys again, and a later save with the same keys: no reopening.
	later := st
	later.Seq, later.LastOutcome = 6, rotation.OutcomeWaiting
	for _, s := range []rotation.State{st, later} {
		if err := rt.applyRotation(ctx, "smartcloud", s); err != nil {
			t.Fatal(err)
		}
		if ring.Active("smartcloud") != handle {
			t.Fatalf("seq %d: the ring was rebuilt for keys it holds", s.Seq)
		}
	}
	// An older state (the config's key active) is not applied.
	if err := rt.applyRotation(ctx, "smartcloud", rotation.State{Seq: 4}); err != nil {
		t.Fatal(err)
	}
	if ring.Active("smartcloud") != handle {
		t.Fatal("an older state was applied over a newer one")
	}
}

// TestStartDuringGraceFallsBackToTheOldKey: a broker that starts while a
// rotation waits out its grace period signs with the new key and falls
// back to the old one, as a broker that switched does.
func TestStartDuringGraceFallsBackToTheOldKey(t *testing.T) {
	dir := t.TempDir()
	p12, _ := signertest.EnterpriseCert(t, "991825827", "pw")
	for name, data := range map[string][]byte{"mp-key.pem": signertest.PEM(t, "rsa-a.pkcs8.pem"), "business.p12": p12, "business.pw": []byte("pw\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"keys", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := Parse([]byte(rotationConfig(okSelfService, okRotation)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	maker, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:keys/", BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	kid := uuid.NewString()
	spec, err := maker.Make(ctx, kid)
	if err != nil {
		t.Fatal(err)
	}
	store, err := filestore.New(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	lease, err := store.Lease(ctx, "smartcloud", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := lease.Save(ctx, rotation.State{Active: kid, LastRotation: now, Seq: 4,
		Keys:     []rotation.ManagedKey{{KID: kid, URI: spec.URI, Algorithm: signer.RS256}},
		Rotation: &rotation.InFlight{Step: rotation.StepRetire, Next: kid, Old: "smartcloud-2026", Started: now, Activated: now}}); err != nil {
		t.Fatal(err)
	}
	_ = lease.Release(ctx)
	rt, err := buildBroker(ctx, cfg, dir, slog.New(slog.DiscardHandler), telemetry{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.ring.Close()
	defer rt.broker.Close()
	defer rt.rotation.close()
	mp := rt.clients["smartcloud"]
	if mp.Key().KeyID != kid || mp.FallbackKey() == nil || mp.FallbackKey().KeyID != "smartcloud-2026" {
		t.Fatalf("signs with %s, falls back to %v; want %s and smartcloud-2026", mp.Key().KeyID, mp.FallbackKey(), kid)
	}
}

// runningWith is the part of a running broker the rotation touches: a key
// ring opened from kr's states, closed when the test ends.
func runningWith(t *testing.T, cfg *Config, dir string, kr *keyRotation) *running {
	t.Helper()
	rcs, err := ringClients(cfg, dir, kr.snapshot(), kr.owns)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keyring.Open(context.Background(), keyring.Config{}, rcs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ring.Close() })
	return &running{ring: ring, rotation: kr, cfg: cfg, baseDir: dir}
}
