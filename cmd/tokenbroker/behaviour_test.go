package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// TestInsecureOnAllInterfacesRefused: plaintext is for loopback only; a
// listen address without a host (":port") is every interface, not loopback.
func TestInsecureOnAllInterfacesRefused(t *testing.T) {
	t.Parallel()
	base := readString(t, writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token"))
	if _, err := daemon.Parse([]byte(base)); err != nil {
		t.Fatalf("the loopback config itself: %v", err)
	}
	for _, listen := range []string{":50051", "0.0.0.0:50051", "[::]:50051", "192.0.2.1:50051", "example.org:50051"} {
		cfg := strings.Replace(base, "listen: 127.0.0.1:0\n", "listen: \""+listen+"\"\n", 1)
		if _, err := daemon.Parse([]byte(cfg)); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("insecure with listen %q: %v, want refused (loopback only)", listen, err)
		}
	}
	for _, listen := range []string{"localhost:50051", "[::1]:50051", "127.0.0.2:50051"} {
		cfg := strings.Replace(base, "listen: 127.0.0.1:0\n", "listen: \""+listen+"\"\n", 1)
		if _, err := daemon.Parse([]byte(cfg)); err != nil {
			t.Errorf("insecure with loopback listen %q: %v", listen, err)
		}
	}
}

// readString returns the content of path.
func readString(t *testing.T, path string) string {
	t.Helper()
	return string(readFile(t, path))
}

// readFile returns the content of path.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publicJWK returns k's public key as a JWK.
func publicJWK(t *testing.T, k *signer.Key) jwk.Key {
	t.Helper()
	pub, err := k.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestTracingSwitchAlone: `tracing: true` in the config turns tracing on
// with no OTEL_* variable set. Not parallel: it changes the environment.
func TestTracingSwitchAlone(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	if err := os.Unsetenv("OTEL_TRACES_EXPORTER"); err != nil {
		t.Fatal(err)
	}
	cfg, err := daemon.Parse([]byte(strings.Replace(readString(t, writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")),
		"insecure: true\n", "insecure: true\ntracing: true\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Tracing {
		t.Fatal("tracing: true not read")
	}
	tp, stop, err := daemon.SetupTracing(context.Background(), cfg.Tracing)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if tp == nil {
		t.Error("tracing: true without OTEL_TRACES_EXPORTER gave no tracer provider")
	}
}

// TestReloadWithBadKeyChangesNothing: a reload whose policy is valid but
// one of whose keys fails to load is refused whole: the old policy stays.
func TestReloadWithBadKeyChangesNothing(t *testing.T) {
	t.Parallel()
	const clientID = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.Record()
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: clientID, Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	for _, org := range []string{"310904473", "314250052"} {
		emu.ApproveSystemUser(clientID, org, "")
	}
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	base := readString(t, path)
	narrow := strings.Replace(base, `    customer_orgs: ["*"]`, `    customer_orgs: ["310904473"]`, 1)
	if narrow == base {
		t.Fatal("the config has no customer_orgs line to narrow")
	}
	if err := os.WriteFile(path, []byte(narrow), 0o600); err != nil {
		t.Fatal(err)
	}
	reload := make(chan struct{})
	addr, stderr, stop := startServe(t, path, serveHooks{reload: reload})
	c := dial(t, addr)
	get := func(org string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: org, Scopes: []string{demoScope}})
		return err
	}
	if err := get("310904473"); err != nil {
		t.Fatalf("allowed org: %v", err)
	}
	if err := get("314250052"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("org outside the policy: %v, want PermissionDenied", err)
	}
	// The new config widens the policy (valid) and names a key file that
	// does not exist.
	broken := strings.Replace(base, "file:mp-key.pem", "file:absent.pem", 1)
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	waitUntil(t, "the failed reload", func() bool { return strings.Contains(stderr.String(), "reload failed") })
	if strings.Contains(stderr.String(), "config reloaded") {
		t.Fatal("a config with a missing key was reloaded")
	}
	if err := get("314250052"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("after a failed reload, org outside the old policy: %v, want PermissionDenied", err)
	}
	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
	emu.CheckNoLeaks(t, "serve log", stderr.String())
}
