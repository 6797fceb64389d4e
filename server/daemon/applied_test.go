package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
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
	rcs, err := ringClients(cfg, dir, kr.snapshot(), kr.owns)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keyring.Open(ctx, keyring.Config{}, rcs)
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	rt := &running{ring: ring, rotation: kr, cfg: cfg, baseDir: dir}
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
	rcs, err = ringClients(cfg, dir, kr.appliedSnapshot(), kr.owns)
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
