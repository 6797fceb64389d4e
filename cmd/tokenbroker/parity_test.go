package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// TestDevServeParity: dev mode assembles the same broker as serve with the
// equivalent config file (insecure on loopback, one client, the defaults
// for everything else): the tuned transports, hedgers and breakers,
// metrics, audit, key ring and probes, limits. It fails if dev skips
// something serve has. Only what a config file brings differs: reloads.
func TestDevServeParity(t *testing.T) {
	t.Parallel()
	got := make(chan daemon.Components, 2)
	var out, banner syncBuffer
	_, stopDev := background(t, &out, func(ctx context.Context, ready chan<- devEnv) error {
		return runDev(ctx, []string{"--listen", "127.0.0.1:0"}, &banner, &out, ready, func(c daemon.Components) { got <- c })
	})
	dev := <-got
	if err := stopDev(); err != nil {
		t.Fatal(err)
	}
	// The banner is printed as dev always printed it: no line indented
	// but the two commands to try.
	for _, l := range strings.Split(strings.TrimSpace(banner.String()), "\n") {
		if strings.HasPrefix(l, "\t") || (strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "  grpcurl ")) {
			t.Errorf("banner line %q is indented", l)
		}
	}
	if !strings.Contains(banner.String(), "tokenbroker dev is serving on 127.0.0.1:") {
		t.Errorf("banner: %s", banner.String())
	}

	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	if err := emu.AddClient(maskinportentest.Client{ID: "c", Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{demoScope}, Keys: []jwk.Key{publicJWK(t, signertest.Key(t, signertest.KeyA, "k"))}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "k.pem"), signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tokenbroker.yaml")
	writeSecret(t, path, []byte(fmt.Sprintf(`listen: 127.0.0.1:0
insecure: true
insecure_identity: local:dev
policy:
  - {callers: [local:dev], clients: ["*"], scopes: ["*"], customer_orgs: ["*"]}
maskinporten: {environment: test, issuer: %q, token_url: %q}
altinn: {exchange_url: %q, base_url: %q}
clients:
  - {name: demo, client_id: c, scopes: [%s], system_id: 991825827_x, key: {kid: k, signer: file:k.pem}}
`, emu.Issuer(), srv.URL+"/token", srv.URL+maskinportentest.ExchangePath, srv.URL+"/authentication/api/v1", demoScope)))
	_, _, stopServe := startServe(t, path, serveHooks{built: func(c daemon.Components) { got <- c }})
	serve := <-got
	if err := stopServe(); err != nil {
		t.Fatal(err)
	}

	if !serve.Reload || dev.Reload {
		t.Errorf("reload: serve %v, dev %v; want only serve, which has a file", serve.Reload, dev.Reload)
	}
	dev.Reload, serve.Reload = false, false
	if !reflect.DeepEqual(dev, serve) {
		t.Errorf("dev assembles\n  %+v\nserve assembles\n  %+v", dev, serve)
	}
	if !dev.MaskinportenHedger || !dev.AltinnHedger || !dev.Metrics || !dev.KeyRing || dev.Interceptors == 0 {
		t.Errorf("dev lacks a production part: %+v", dev)
	}
}
