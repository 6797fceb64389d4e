package main

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
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

// cache.shared.redis.tls: the broker reaches a Redis that speaks only TLS
// and asks for a client certificate, verifying Redis's certificate with
// the configured CA.
func TestSharedCacheTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "redis CA")
	caFile := filepath.Join(dir, "redis-ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := ca.Issue(t, tlstest.Leaf{CN: "redis", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true}).WriteFiles(t, dir, "redis")
	client := ca.Issue(t, tlstest.Leaf{CN: "tokenbroker"})
	client.WriteFiles(t, dir, "client")
	rs := sharedcachetest.StartTLS(t, srvCert, srvKey, caFile, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS}})
	if err := os.WriteFile(filepath.Join(dir, "cache-key"), []byte("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, tls string
		up        bool
	}{
		{"verified, with a client certificate", "{ca: redis-ca.pem, cert: client.pem, key: client-key.pem}", true},
		{"without a client certificate", "{ca: redis-ca.pem}", false},
		{"system roots: Redis's CA unknown", "{cert: client.pem, key: client-key.pem}", false},
	} {
		cfg, err := parseConfig(append(append([]byte{}, data...), []byte("cache:\n  shared:\n    redis: {addrs: [\""+rs.Addr()+
			"\"], tls: "+tc.tls+"}\n    keys: [{id: k1, file: cache-key}]\n")...))
		if err != nil {
			t.Fatal(err)
		}
		sc, err := sharedCacheFor(cfg, dir, os.LookupEnv, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		tok := &maskinporten.Token{AccessToken: "x", ExpiresAt: time.Now().Add(time.Minute), IssuedAt: time.Now()}
		got, err := sc.Fetch(context.Background(), "key", func(*maskinporten.Token) bool { return true },
			func(context.Context) (*maskinporten.Token, error) { return tok, nil })
		if err != nil || got != tok {
			t.Fatalf("%s: fetch through the shared level: %v", tc.name, err)
		}
		if h := sc.Health(); h.Up != tc.up || (h.Fetches == 1) != tc.up {
			t.Errorf("%s: up %v, fetches under the lock %d; want up %v", tc.name, h.Up, h.Fetches, tc.up)
		}
		sc.(*sharedcache.Cache).Close()
	}
}

// A cache.shared section that cannot work is refused at start, naming the
// field.
func TestSharedCacheConfigErrors(t *testing.T) {
	t.Parallel()
	base := writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ section, want string }{
		{"keys: [{id: k1, file: k}]\n", "cache.shared.redis.addrs: at least one"},
		{"redis: {addrs: [redis]}\n    keys: [{id: k1, file: k}]\n", `cache.shared.redis.addrs[0]: "redis" is not host:port`},
		{"redis: {addrs: [\"r:6379\"]}\n", "cache.shared.keys: at least one key"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{file: k}]\n", "cache.shared.keys[0].id: required"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1}]\n", "cache.shared.keys[0] (k1): set one of file and env"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, file: k}]\n    lock_ttl: 30s\n", "cache.shared.lock_ttl: 30s, want less than maskinporten.timeout"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, file: k}]\n    timeout: 10s\n", "cache.shared.timeout: 10s"},
		{"redis: {addrs: [\"r:6379\"], tls: {cert: c.pem}}\n    keys: [{id: k1, file: k}]\n", "cache.shared.redis.tls: cert and key go together"},
		{"redis: {addrs: [\"r:6379\"], cluster: true, db: 2}\n    keys: [{id: k1, file: k}]\n", "cache.shared.redis.db: a Cluster has only database 0"},
		{"redis: {addrs: [\"r:26379\"], cluster: true, master_name: m}\n    keys: [{id: k1, file: k}]\n", "cache.shared.redis.cluster: not with master_name"},
	} {
		_, err := parseConfig(append(append([]byte{}, data...), []byte("cache:\n  shared:\n    "+tc.section)...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.section, err, tc.want)
		}
	}
	// Secrets are read at start: a short key or a missing file names the
	// field and never the content.
	dir := filepath.Dir(base)
	if err := os.WriteFile(filepath.Join(dir, "short-key"), []byte("too-short-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ section, want string }{
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, file: short-key}]\n", "cache.shared.keys[0] (k1): secret of 16 bytes, want at least 32"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, file: missing}]\n", "cache.shared.keys[0].file: open"},
		{"redis: {addrs: [\"r:6379\"], password_file: missing}\n    keys: [{id: k1, file: short-key}]\n", "cache.shared.redis.password_file: open"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, env: TOKENBROKER_TEST_UNSET_CACHE_KEY}]\n", "cache.shared.keys[0].env: TOKENBROKER_TEST_UNSET_CACHE_KEY is not set"},
	} {
		cfg, err := parseConfig(append(append([]byte{}, data...), []byte("cache:\n  shared:\n    "+tc.section)...))
		if err != nil {
			t.Fatalf("%q: %v", tc.section, err)
		}
		_, err = sharedCacheFor(cfg, dir, func(string) (string, bool) { return "", false }, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.section, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "too-short-secret") {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}
