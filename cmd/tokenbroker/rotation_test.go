package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/selfservice"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// rotationOrgs have an approved system user in TestServeRotatesKeys.
var rotationOrgs = []string{"310904473", "314250052", "313775429"}

// TestServeRotatesKeys: a broker serves callers in a loop while `keys
// rotate` (another process's rotator, on the same state) rotates the
// client's key through the emulator's self-service API, with each backend
// that runs here. Maskinporten takes 3 s to accept the new key, and with
// key files 20 s: longer than the broker takes to follow the state, so a
// key made active before Maskinporten accepts it would sign refused
// grants and fail calls. The broker
// picks the new key up from the state without a restart, no call fails,
// and no grant of a caller is signed with a key Maskinporten does not yet
// accept. Everything but the token lifetime is the shipped default.
func TestServeRotatesKeys(t *testing.T) {
	t.Parallel()
	backends := map[string]func(t *testing.T) string{
		"file":   func(t *testing.T) string { return "file:keys/" }, // the config's dir
		"pkcs11": func(t *testing.T) string { return signertest.SoftHSMToken(t, "serve-rotation") },
		"awskms": func(t *testing.T) string {
			_, query, _ := strings.Cut(signertest.LocalKMS(t), "?")
			return "awskms:?" + query
		},
	}
	for name, location := range backends {
		propagation := 3 * time.Second
		if name == "file" {
			propagation = 20 * time.Second
		}
		t.Run(name, func(t *testing.T) { serveRotation(t, location, propagation) })
	}
}

func serveRotation(t *testing.T, location func(t *testing.T) string, propagation time.Duration) {
	rs := newRotationSetup(t, propagation, "  state_dir: state\n", location(t), "")
	emu, path := rs.emu, rs.path
	const clientID = rotationClientID
	addr, stderr, stop := startServe(t, path, serveHooks{})
	cl := loopCallers(t, addr)

	// Another process rotates: the broker's own code path.
	var out, errOut syncBuffer
	rotateStart := time.Now()
	if err := run(context.Background(), []string{"keys", "rotate", "--config", path, "--client", "smartcloud"}, &out, &errOut); err != nil {
		t.Fatalf("keys rotate: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	m := regexp.MustCompile(`rotation at step retire \(next (\S+), old smartcloud-2026\)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("keys rotate said:\n%s\n%s", out.String(), errOut.String())
	}
	next := m[1]
	activated := time.Now()
	var usable time.Time
	for _, k := range emu.RegisteredKeys(clientID) {
		if k.KID == next {
			usable = k.UsableFrom
		}
	}
	if usable.IsZero() {
		t.Fatalf("%s is not registered", next)
	}
	// The broker follows the state (every 15 s by default): wait until its
	// callers' grants carry the new kid, then let them run a while more.
	deadline := time.Now().Add(90 * time.Second)
	for !grantsWith(t, emu, next) {
		if time.Now().After(deadline) {
			t.Fatalf("the broker never signed with %s\n%s", next, stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	switched := time.Now()
	time.Sleep(2 * time.Second)
	cl.stop(t)
	// No caller's grant signed with the new key before Maskinporten took it.
	early := 0
	for _, a := range emu.Assertions() {
		kid, iat, systemUser := grantInfo(t, a)
		if systemUser && kid == next && iat.Before(usable.Truncate(time.Second)) {
			early++
		}
	}
	if early != 0 {
		t.Fatalf("%d grants of callers were signed with %s before Maskinporten accepted it", early, next)
	}
	t.Logf("%d calls, 0 failed; keys rotate took %v (Maskinporten accepted the key after %v); the broker signed with it %v later",
		cl.calls.Load(), activated.Sub(rotateStart).Round(100*time.Millisecond), usable.Sub(rotateStart).Round(100*time.Millisecond),
		switched.Sub(activated).Round(100*time.Millisecond))

	// keys status shows the rotation.
	var status syncBuffer
	if err := run(context.Background(), []string{"keys", "status", "--config", path}, &status, &errOut); err != nil {
		t.Fatalf("keys status: %v\n%s", err, status.String())
	}
	for _, want := range []string{"active         " + next, "next           " + next + " (rotation at step retire)",
		"registered     smartcloud-2026", "registered     " + next + " (active)", "next due"} {
		if !strings.Contains(status.String(), want) {
			t.Errorf("keys status lacks %q:\n%s", want, status.String())
		}
	}
	scrape := scrapeMetrics(t, stderr.String())
	for _, want := range []string{
		`tokenbroker_key_active{client="smartcloud",kid="` + next + `"} 1`,
		`tokenbroker_key_rotation_failing{client="smartcloud"} 0`,
		`tokenbroker_key_rotation_in_progress{client="smartcloud",step="retire"} 1`,
		`tokenbroker_registered_key_expiry_seconds{client="smartcloud",kid="` + next + `"}`,
		`tokenbroker_key_rotation_due_seconds{client="smartcloud"}`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	checkAlertMetrics(t, scrape, false)
	health := getHealthz(t, stderr.String())
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// No grant or token (the callers', the proofs', the self-service
	// client's admin tokens: the emulator recorded them all), password or
	// private key in the log, the commands' output, /healthz or the metrics.
	for where, text := range map[string]string{"the broker's log": stderr.String(), "keys rotate": out.String() + errOut.String(),
		"keys status": status.String(), "/healthz": health, "the metrics": scrape} {
		for _, secret := range []string{"pw-123", "PRIVATE KEY"} {
			if strings.Contains(text, secret) {
				t.Errorf("%q reached %s", secret, where)
			}
		}
		emu.CheckNoLeaks(t, where, text)
	}
}

// grantsWith reports whether a recorded grant of a caller (one with
// authorization_details) carries kid.
func grantsWith(t *testing.T, emu *maskinportentest.Emulator, kid string) bool {
	for _, a := range emu.Assertions() {
		if k, _, su := grantInfo(t, a); su && k == kid {
			return true
		}
	}
	return false
}

// grantInfo reads a grant's kid, iat and whether it asks for a system user.
func grantInfo(t *testing.T, assertion string) (kid string, iat time.Time, systemUser bool) {
	t.Helper()
	parts := strings.Split(assertion, ".")
	var hdr struct {
		KID string `json:"kid"`
	}
	var claims struct {
		IAT     int64           `json:"iat"`
		Details json.RawMessage `json:"authorization_details"`
	}
	for i, v := range []any{&hdr, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatal(err)
		}
	}
	return hdr.KID, time.Unix(claims.IAT, 0), len(claims.Details) > 0
}

// TestDevRotatesKeys: dev mode rotates its key through the embedded
// emulator's self-service API (--rotate-after), with the emulator's default
// propagation delay of 10 s, while callers loop: no call fails, and no
// caller's grant is signed with the new key before the emulator accepts it.
func TestDevRotatesKeys(t *testing.T) {
	t.Parallel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	env, stop := background(t, stderr, func(ctx context.Context, ready chan<- devEnv) error {
		return runDev(ctx, []string{"--listen", "127.0.0.1:0", "--token-ttl", "5s", "--rotate-after", "2s"}, stdout, stderr, ready, nil)
	})
	env.Emulator.Record()
	cl := loopCallers(t, env.Addr)
	m := regexp.MustCompile(`rotation done as far as the grace period.* active=(\S+)`)
	deadline := time.Now().Add(90 * time.Second)
	var next string
	for next == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no rotation in dev mode:\n%s", stderr.String())
		}
		if s := m.FindStringSubmatch(stderr.String()); s != nil {
			next = s[1]
		}
		time.Sleep(100 * time.Millisecond)
	}
	var usable time.Time
	for _, k := range env.Emulator.RegisteredKeys(env.ClientID) {
		if k.KID == next {
			usable = k.UsableFrom
		}
	}
	for !grantsWith(t, env.Emulator, next) {
		if time.Now().After(deadline) {
			t.Fatalf("dev mode never signed with %s", next)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	cl.stop(t)
	for _, a := range env.Emulator.Assertions() {
		if kid, iat, su := grantInfo(t, a); su && kid == next && iat.Before(usable.Truncate(time.Second)) {
			t.Fatalf("a caller's grant was signed with %s at %v, before the emulator accepted it at %v", kid, iat, usable)
		}
	}
	t.Logf("%d calls, 0 failed; dev mode switched to %s", cl.calls.Load(), next)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestServeReplicasRotateOnce: three replicas share Redis (cache.shared)
// and start with a key whose rotation is due. They race for it: exactly one
// rotates (one registration written, one key made), and all three sign
// with the new key, without a restart, while callers loop over them with 0
// failed calls.
func TestServeReplicasRotateOnce(t *testing.T) {
	t.Parallel()
	redis := sharedcachetest.Start(t)
	// One key directory for all: the volume replicas share for file keys.
	rs := newRotationSetup(t, 3*time.Second, "", "file:keys/",
		"cache:\n  shared:\n    redis:\n      addrs: ["+redis.Addr()+"]\n    keys:\n      - id: k1\n        file: cache-key\n")
	emu, path, dir := rs.emu, rs.path, rs.dir
	const clientID = rotationClientID
	writeSecret(t, filepath.Join(dir, "cache-key"), []byte("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"))
	// Registered 165 days ago (it expires in 200): with rotation every 90
	// days, due now.
	if err := emu.SetKeyExpiry(clientID, "smartcloud-2026", time.Now().Add(200*24*time.Hour)); err != nil {
		t.Fatal(err)
	}

	var addrs []string
	var logs []*syncBuffer
	for range 3 {
		addr, log, _ := startServe(t, path, serveHooks{})
		addrs, logs = append(addrs, addr), append(logs, log)
	}
	cl := loopCallers(t, addrs...)
	// Every replica comes to sign with the one new key.
	deadline := time.Now().Add(90 * time.Second)
	var next string
	for {
		if time.Now().After(deadline) {
			t.Fatalf("not every replica uses a new key; registered %v", emu.RegisteredKeys(clientID))
		}
		if reg := emu.RegisteredKeys(clientID); len(reg) == 2 {
			next = reg[1].KID
		}
		all := next != ""
		for _, log := range logs {
			all = all && strings.Contains(scrapeMetrics(t, log.String()), `tokenbroker_key_active{client="smartcloud",kid="`+next+`"} 1`)
		}
		if all {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	cl.stop(t)
	made, err := filepath.Glob(filepath.Join(dir, "keys", "*.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if w := emu.JWKSWrites(); w != 1 || len(made) != 1 {
		t.Fatalf("%d registration writes and %d keys made by 3 replicas, want exactly one rotation", w, len(made))
	}
	t.Logf("3 replicas, 1 rotation (1 write, 1 key), %d calls, 0 failed", cl.calls.Load())
}

// rotationSetup is an emulator with a rotating client (its first key, key
// A, registered now) and the organisation's self-service client, and a
// config file for them: self_service with a business certificate, the
// client's rotation making keys at newKeys, and extra appended at the end.
type rotationSetup struct {
	emu  *maskinportentest.Emulator
	path string
	dir  string
}

const (
	rotationClientID = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"
	rotationAdminID  = "selfservice-admin"
)

func newRotationSetup(t *testing.T, propagation time.Duration, selfService, newKeys, extra string) *rotationSetup {
	t.Helper()
	p12, cas := signertest.EnterpriseCert(t, "991825827", "pw-123")
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{TokenTTL: 4 * time.Second})
	emu.Record()
	emu.SetPropagationDelay(propagation)
	pub, err := signertest.Key(t, signertest.KeyA, "smartcloud-2026").PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []maskinportentest.Client{
		{ID: rotationClientID, Org: "991825827", SystemID: "991825827_x", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}},
		{ID: rotationAdminID, Org: "991825827", Scopes: []string{selfservice.ScopeRead, selfservice.ScopeWrite}, CertificateCAs: cas},
	} {
		if err := emu.AddClient(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, org := range rotationOrgs {
		emu.ApproveSystemUser(rotationClientID, org, "")
	}
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	dir := filepath.Dir(path)
	writeSecret(t, filepath.Join(dir, "vs.p12"), p12)
	writeSecret(t, filepath.Join(dir, "vs.pw"), []byte("pw-123\n"))
	for _, d := range []string{"keys", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cfg := readFile(t, path)
	cfg = bytes.Replace(cfg, []byte("clients:\n"), []byte(fmt.Sprintf(`self_service:
  client_id: %s
  key:
    signer: file:vs.p12
    password_file: vs.pw
  url: %s
%sclients:
`, rotationAdminID, srv.URL, selfService)), 1)
	cfg = append(cfg, fmt.Sprintf("    rotation:\n      new_keys: %q\n%s", newKeys, extra)...)
	writeSecret(t, path, cfg)
	return &rotationSetup{emu: emu, path: path, dir: dir}
}

// callers are 4 goroutines per broker address calling GetToken in a loop
// over rotationOrgs, 20 ms apart, counting calls and failures.
type callers struct {
	calls, failed atomic.Int64
	firstErr      atomic.Value
	cancel        func()
	wg            sync.WaitGroup
}

func loopCallers(t *testing.T, addrs ...string) *callers {
	t.Helper()
	cl := &callers{}
	ctx, cancel := context.WithCancel(context.Background())
	cl.cancel = cancel
	for _, addr := range addrs {
		c := dial(t, addr)
		for i := range 4 {
			cl.wg.Add(1)
			go func() {
				defer cl.wg.Done()
				for n := 0; ctx.Err() == nil; n++ {
					cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
					// Tokens live a few seconds here, so callers ask for 1 s left.
					_, err := c.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: rotationOrgs[(i+n)%len(rotationOrgs)],
						Scopes: []string{demoScope}, MinValidity: durationpb.New(time.Second)})
					ccancel()
					cl.calls.Add(1)
					if err != nil {
						cl.failed.Add(1)
						cl.firstErr.CompareAndSwap(nil, err.Error())
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
		}
	}
	return cl
}

// stop ends the loops and fails t if a call failed.
func (cl *callers) stop(t *testing.T) {
	t.Helper()
	cl.cancel()
	cl.wg.Wait()
	if cl.failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed, first: %v", cl.failed.Load(), cl.calls.Load(), cl.firstErr.Load())
	}
}

// TestCheckCommandWithRotation: check opens the self-service client's key
// with its certificate, warns when the certificate expires soon, and
// describes each client's rotation.
func TestCheckCommandWithRotation(t *testing.T) {
	t.Parallel()
	rs := newRotationSetup(t, 0, "  state_dir: state\n", "file:keys/", "")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"check", "--config", rs.path}, &out, &out); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"client smartcloud: rotation every 90d (grace 1h0m0s, renew 30d before expiry), new keys at file:keys/",
		`self-service client selfservice-admin: business certificate "TEST VENDOR AS" (serialNumber 991825827)`,
		"renew it, key rotation stops when it expires", // the test certificate lives a day
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
	writeSecret(t, filepath.Join(rs.dir, "vs.pw"), []byte("wrong\n"))
	if err := run(context.Background(), []string{"check", "--config", rs.path}, &out, &out); err == nil || !strings.Contains(err.Error(), "self_service.key") {
		t.Errorf("check with a wrong PKCS#12 password: %v", err)
	}
}
