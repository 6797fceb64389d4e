package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// Two serve processes with one cache.shared section, against a Redis with
// an ACL user whose password is in a file: the second serves the token the
// first fetched, from Redis, without a grant; /healthz and the metrics show
// the shared level.
func TestServeWithSharedCache(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t, "--user", "default", "off", "--user", "tokenbroker", "on", ">redis-password-1", "~tokenbroker:*", "+@all")
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	emu.Record()
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Scopes: []string{"altinn:systembruker.demo"}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token", `cache:
  shared:
    redis:
      addrs: [`+rs.Addr()+`]
      username: tokenbroker
      password_file: redis-password
    keys:
      - id: k1
        file: cache-key
`)
	dir := filepath.Dir(path)
	for name, content := range map[string]string{"redis-password": "redis-password-1\n", "cache-key": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	addrA, logA, _ := startServe(t, path, serveHooks{})
	addrB, logB, _ := startServe(t, path, serveHooks{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{"altinn:systembruker.demo"}}
	a, err := dial(t, addrA).GetToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := dial(t, addrB).GetToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !b.GetCached() || b.GetAccessToken() != a.GetAccessToken() || emu.Requests() != 1 {
		t.Fatalf("second replica: cached %v, same token %v, grants %d; want the first replica's token from Redis and 1 grant",
			b.GetCached(), b.GetAccessToken() == a.GetAccessToken(), emu.Requests())
	}
	scrape := scrapeMetrics(t, logB.String())
	for _, want := range []string{`tokenbroker_shared_cache_up 1`, `tokenbroker_shared_cache_events_total{event="hit"} 1`,
		`tokenbroker_shared_cache_events_total{event="fallback"} 0`} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	rules, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "tokenbroker-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`tokenbroker_shared_cache_[a-z_]+`).FindAllString(string(rules), -1) {
		if !strings.Contains(scrape, "\n# TYPE "+name+" ") {
			t.Errorf("the alerting rules use %s, which the broker does not export", name)
		}
	}
	hz := regexp.MustCompile(`"healthz":"(http://[^"]+)"`).FindStringSubmatch(logB.String())
	if hz == nil {
		t.Fatal("no healthz URL in the log")
	}
	resp, err := http.Get(hz[1])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"shared":{"up":true,"hits":1`) {
		t.Errorf("/healthz lacks the shared level: %s", body)
	}
	for _, l := range []string{logA.String(), logB.String(), scrape, string(body)} {
		emu.CheckNoLeaks(t, "serve log, metrics and health", l)
		if strings.Contains(l, "redis-password-1") || strings.Contains(l, "c2VjcmV0LXNlY3JldC1zZWNyZXQt") {
			t.Error("a Redis password or cache key is in the log, metrics or health")
		}
	}
}
