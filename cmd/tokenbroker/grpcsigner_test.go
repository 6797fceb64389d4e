package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/daemon"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// unixSigner starts `tokenbroker signer serve` for the test key pemFile as
// kid on a unix socket, and returns the socket, the arguments (to start it
// again) and a stop function.
func unixSigner(t *testing.T, pemFile, kid string) (sock string, args []string, stop func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "tbsig") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	keyPath := filepath.Join(dir, kid+".pem")
	writeSecret(t, keyPath, signertest.PEM(t, pemFile))
	sock = filepath.Join(dir, "s.sock")
	args = []string{"--key", "file:" + keyPath, "--kid", kid, "--listen", "unix:" + sock}
	_, stop = startSigner(t, args...)
	return sock, args, stop
}

// TestGRPCSigner: the broker signs through an external signer process over
// a unix socket; when the signer dies, calls that need a grant get
// Unavailable and readiness turns NOT_SERVING; when it comes back, both
// recover without a broker restart.
func TestGRPCSigner(t *testing.T) {
	t.Parallel()
	const clientID = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"
	sock, signerArgs, stopSigner := unixSigner(t, "rsa-a.pkcs8.pem", "sig-a")

	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "sig-a"))
	if err := emu.AddClient(maskinportentest.Client{ID: clientID, Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	for _, org := range []string{"310904473", "314250052"} {
		emu.ApproveSystemUser(clientID, org, "")
	}
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	cfg := readFile(t, path)
	cfgS := strings.Replace(string(cfg), "signer: file:mp-key.pem", `signer: "grpc:unix:`+sock+`"`, 1)
	cfgS = strings.Replace(cfgS, "kid: smartcloud-2026", "kid: sig-a", 1)
	writeSecret(t, path, []byte(cfgS))

	addr, _, _ := startServe(t, path, serveHooks{probeInterval: 100 * time.Millisecond}) // the cleanup checks how serve ends
	ctx := context.Background()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	hc := healthpb.NewHealthClient(conn)
	get := func(org string) error {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		_, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: org, Scopes: []string{demoScope}})
		return err
	}
	serving := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return r.GetStatus()
	}
	if err := get("310904473"); err != nil {
		t.Fatalf("through the signer: %v", err)
	}

	stopSigner()
	if err := get("314250052"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "signing backend") {
		t.Fatalf("signer down: %v, want Unavailable naming the signing backend", err)
	}
	if err := get("310904473"); err != nil {
		t.Errorf("cached token while the signer is down: %v", err)
	}
	waitUntil(t, "NOT_SERVING", func() bool { return serving() == healthpb.HealthCheckResponse_NOT_SERVING })

	startSigner(t, signerArgs...)
	waitUntil(t, "SERVING again", func() bool { return serving() == healthpb.HealthCheckResponse_SERVING })
	if err := get("314250052"); err != nil {
		t.Fatalf("after the signer came back: %v", err)
	}
}

// TestGRPCSignerTCP: over TCP the signer demands the broker's client
// certificate, and the broker verifies the signer's.
func TestGRPCSignerTCP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "a.pem")
	writeSecret(t, keyPath, signertest.PEM(t, "rsa-a.pkcs8.pem"))
	ca := tlstest.NewCA(t, "signer-ca")
	sCert, sKey := ca.Issue(t, tlstest.Leaf{CN: "signer", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true}).WriteFiles(t, dir, "signer")
	bCert, bKey := ca.Issue(t, tlstest.Leaf{CN: "broker"}).WriteFiles(t, dir, "broker")
	caPath := filepath.Join(dir, "ca.pem")
	writeSecret(t, caPath, ca.PEM)

	addr, _ := startSigner(t, "--key", "file:"+keyPath, "--kid", "a", "--listen", "127.0.0.1:0",
		"--tls-cert", sCert, "--tls-key", sKey, "--client-ca", caPath)
	key, err := daemon.OpenKey(daemon.KeyConfig{KID: "a", Signer: fmt.Sprintf("grpc:%s?ca=%s&cert=%s&key=%s", addr, caPath, bCert, bKey)}, "")
	if err != nil {
		t.Fatalf("open over mTLS: %v", err)
	}
	signertest.Conformance(t, key)

	// Without a client certificate the signer refuses the connection.
	other := tlstest.NewCA(t, "other")
	oCert, oKey := other.Issue(t, tlstest.Leaf{CN: "intruder"}).WriteFiles(t, dir, "intruder")
	if _, err := daemon.OpenKey(daemon.KeyConfig{KID: "a", Signer: fmt.Sprintf("grpc:%s?ca=%s&cert=%s&key=%s", addr, caPath, oCert, oKey)}, ""); err == nil {
		t.Error("a client certificate from another CA got the public key")
	}
	if _, err := runSignerArgsError(t, []string{"serve", "--key", "file:" + keyPath, "--kid", "a", "--listen", "127.0.0.1:0"}); err == nil ||
		!strings.Contains(err.Error(), "TCP needs") {
		t.Errorf("TCP without TLS: %v", err)
	}
}

// runSignerArgsError runs the signer with args that must fail at start.
func runSignerArgsError(t *testing.T, args []string) (string, error) {
	t.Helper()
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := runSigner(ctx, args, &out, nil)
	return out.String(), err
}

// TestStandbyKeyProbed: a standby key is probed like the active one, so
// when its signer dies the metrics and the log say so while readiness,
// which follows the active key, stays SERVING; when it comes back, so does
// its metric.
func TestStandbyKeyProbed(t *testing.T) {
	t.Parallel()
	sock, signerArgs, stopSigner := unixSigner(t, "rsa-b.pkcs1.pem", "sig-b")

	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.Record()
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_x", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	cfg := readFile(t, path)
	keys := regexp.MustCompile(`(?m)^    key:\n(^      .*\n)+`)
	if !keys.Match(cfg) {
		t.Fatalf("no key block in the config:\n%s", cfg)
	}
	cfg = keys.ReplaceAll(cfg, []byte(`    keys:
      - {kid: smartcloud-2026, signer: file:mp-key.pem, active: true}
      - {kid: sig-b, signer: "grpc:unix:`+sock+`"}
`))
	// The probe interval comes from the config here, not from a test hook.
	cfg = bytes.Replace(cfg, []byte("maskinporten:\n"), []byte("maskinporten:\n  sign_probe_interval: 100ms\n"), 1)
	writeSecret(t, path, cfg)

	addr, stderr, _ := startServe(t, path, serveHooks{}) // the cleanup checks how serve ends
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	up := func(v string) string {
		return `tokenbroker_key_up{backend="grpc",client="smartcloud",kid="sig-b"} ` + v
	}
	metricIs := func(want string) func() bool {
		return func() bool { return strings.Contains(scrapeMetrics(t, stderr.String()), want) }
	}
	waitUntil(t, "the standby key up", metricIs(up("1")))

	stopSigner()
	waitUntil(t, "the standby key down in the metrics", metricIs(up("0")))
	if log := stderr.String(); !strings.Contains(log, `"msg":"key does not sign"`) || !strings.Contains(log, `"kid":"sig-b"`) {
		t.Errorf("the log does not name the failing standby key:\n%s", log)
	}
	if strings.Contains(stderr.String(), "NOT_SERVING") {
		t.Error("readiness went NOT_SERVING for a standby key")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health with a standby key down: %v %v, want SERVING", r.GetStatus(), err)
	}
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{
		CustomerOrg: "310904473", Scopes: []string{demoScope}}); err != nil {
		t.Errorf("GetToken with the active key fine and a standby key down: %v", err)
	}

	startSigner(t, signerArgs...)
	waitUntil(t, "the standby key up again", metricIs(up("1")))
	emu.CheckNoLeaks(t, "serve log", stderr.String())
	emu.CheckNoLeaks(t, "the metrics", scrapeMetrics(t, stderr.String()))
}
