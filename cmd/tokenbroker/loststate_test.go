package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/rotation/filestore"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// rotatingConfig writes a config whose client smartcloud (config key
// smartcloud-2026) rotates into file:keys/ with its state in state/,
// against a new emulator with the self-service client (newRotationSetup,
// the emulator accepting a new key after 1 s); extra is appended to the
// client's rotation section.
func rotatingConfig(t *testing.T, extra string) (emu *maskinportentest.Emulator, path string) {
	t.Helper()
	rs := newRotationSetup(t, time.Second, "  state_dir: state\n", "file:keys/", extra)
	return rs.emu, rs.path
}

const rotatingClientID = rotationClientID

// keysRotate runs `keys rotate` on the config at path for smartcloud.
func keysRotate(path string, args ...string) (string, error) {
	var out, errOut syncBuffer
	err := run(context.Background(), append([]string{"keys", "rotate", "--config", path, "--client", "smartcloud"}, args...), &out, &errOut)
	return out.String() + errOut.String(), err
}

// TestServeRefusesALostRotationState: after a rotation replaced the
// config's key at Digdir, the rotation state is deleted. A broker that
// starts then would sign with the config's key, which Maskinporten no
// longer accepts, and `keys rotate` would start over from it, making and
// registering yet another key. Instead serve refuses to start, `keys
// status` and `keys rotate` say the state was lost and how to recover,
// nothing is made or registered; and the recovery the message gives (the
// key in use into the config as `keys:`, active) starts a broker that
// gets tokens.
func TestServeRefusesALostRotationState(t *testing.T) {
	t.Parallel()
	emu, path := rotatingConfig(t, "")
	dir := filepath.Dir(path)
	_, stderr, stop := startServe(t, path, serveHooks{})
	out, err := keysRotate(path)
	if err != nil {
		t.Fatalf("keys rotate: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`rotation at step retire \(next (\S+), old smartcloud-2026\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keys rotate said:\n%s", out)
	}
	next := m[1]
	if err := stop(); err != nil {
		t.Fatalf("serve: %v\n%s", err, stderr.String())
	}
	// The grace period passed and the old key was removed (as the broker
	// does after it), then the state was lost.
	var jwkNext []byte
	for _, k := range emu.RegisteredKeys(rotatingClientID) {
		if k.KID == next {
			jwkNext = k.JWK
		}
	}
	if err := emu.ReplaceKeys(rotatingClientID, jwkNext); err != nil {
		t.Fatal(err)
	}
	states, _ := filepath.Glob(filepath.Join(dir, "state", "*.rotation.json"))
	if len(states) != 1 {
		t.Fatalf("state files %v", states)
	}
	if err := os.Remove(states[0]); err != nil {
		t.Fatal(err)
	}
	writes := emu.JWKSWrites()

	ctx, cancel := context.WithCancel(context.Background())
	var log syncBuffer
	ready, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- runServe(ctx, []string{"--config", path}, &log, serveHooks{ready: ready}) }()
	select {
	case err = <-done:
	case <-ready:
		cancel()
		<-done
		t.Fatalf("serve started on a lost state\n%s", log.String())
	}
	cancel()
	if err == nil {
		t.Fatal("serve ended without an error")
	}
	want := []string{"rotation state of client smartcloud is empty", "config key smartcloud-2026 is no longer registered",
		"registered: " + next, "Restore the state", "`keys:` with `active: true`"}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("serve's error lacks %q: %v", w, err)
		}
	}

	var status, errOut syncBuffer
	err = run(context.Background(), []string{"keys", "status", "--config", path}, &status, &errOut)
	if err == nil || !strings.Contains(status.String(), "LOST: ") || !strings.Contains(status.String(), "config key smartcloud-2026 is no longer registered") {
		t.Errorf("keys status: %v\n%s", err, status.String())
	}
	out, err = keysRotate(path)
	if err == nil || !strings.Contains(err.Error(), "the state was lost") {
		t.Errorf("keys rotate on a lost state: %v\n%s", err, out)
	}
	made, _ := os.ReadDir(filepath.Join(dir, "keys"))
	if len(made) != 1 || emu.JWKSWrites() != writes {
		t.Fatalf("on a lost state: %d keys made, %d registrations written", len(made), emu.JWKSWrites()-writes)
	}

	// The recovery: the key in use into the config, active.
	cfg := regexp.MustCompile(`(?s)    key:\n      kid: smartcloud-2026\n.*?expires: [0-9-]+\n`).ReplaceAll(readFile(t, path),
		[]byte("    keys:\n      - {kid: "+next+", signer: \"file:keys/"+next+".pem\", active: true}\n"))
	writeSecret(t, path, cfg)
	addr, stderr, _ := startServe(t, path, serveHooks{})
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	// Tokens live 4 s here (newRotationSetup): ask for 1 s left.
	if _, err := dial(t, addr).GetToken(cctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: rotationOrgs[0], Scopes: []string{demoScope},
		MinValidity: durationpb.New(time.Second)}); err != nil {
		t.Fatalf("after the recovery: %v\n%s", err, stderr.String())
	}
}

// TestKeysRotateWithinGraceNeedsForce: `keys rotate` run again after a
// rotation finished (typically by the broker, at the end of the grace
// period) does not start another one within the grace period unless
// --force says so; a rotation under way is continued without it.
func TestKeysRotateWithinGraceNeedsForce(t *testing.T) {
	t.Parallel()
	emu, path := rotatingConfig(t, "")
	out, err := keysRotate(path)
	if err != nil {
		t.Fatalf("keys rotate: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`rotation at step retire \(next (\S+), old smartcloud-2026\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keys rotate said:\n%s", out)
	}
	next := m[1]
	// Under way: continued.
	if out, err := keysRotate(path); err != nil || !strings.Contains(out, "client smartcloud: waiting") {
		t.Fatalf("keys rotate during the grace period: %v\n%s", err, out)
	}
	// The broker finished it a moment ago.
	store, err := filestore.New(filepath.Join(filepath.Dir(path), "state"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := store.Load(ctx, "smartcloud")
	if err != nil || st.Rotation == nil {
		t.Fatalf("state %+v, %v", st, err)
	}
	st.Rotation, st.Retired, st.LastFinished = nil, []string{"smartcloud-2026"}, time.Now()
	l, err := store.Lease(ctx, "smartcloud", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	_ = l.Release(ctx)
	writes := emu.JWKSWrites()

	for _, args := range [][]string{nil, {"--dry-run"}} {
		out, err := keysRotate(path, args...)
		if err == nil || !strings.Contains(err.Error(), "the last rotation of client smartcloud completed at") ||
			!strings.Contains(err.Error(), "within the grace period of 1h0m0s") || !strings.Contains(err.Error(), "run with --force") {
			t.Fatalf("keys rotate %v within the grace period: %v\n%s", args, err, out)
		}
	}
	if emu.JWKSWrites() != writes {
		t.Fatal("a refused keys rotate wrote the registration")
	}
	out, err = keysRotate(path, "--force")
	if err != nil {
		t.Fatalf("keys rotate --force: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`rotation at step retire \(next \S+, old ` + regexp.QuoteMeta(next) + `\)`).MatchString(out) {
		t.Fatalf("keys rotate --force said:\n%s", out)
	}
}
