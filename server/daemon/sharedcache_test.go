package daemon

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// baseConfig is a valid config without a cache section; the tests add
// one. Nothing here reads its key file.
const baseConfig = `listen: 127.0.0.1:0
insecure: true
policy:
  - callers: [local:insecure]
    clients: ["*"]
    scopes: ["*"]
    customer_orgs: ["*"]
maskinporten:
  environment: test
clients:
  - name: smartcloud
    client_id: 7ee41fce-9f6e-4c32-8195-0fe2c1517f43
    scopes: [altinn:systembruker.demo]
    key:
      kid: smartcloud-2026
      signer: file:mp-key.pem
`

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
	data := []byte(baseConfig)
	for _, tc := range []struct {
		name, tls string
		up        bool
	}{
		{"verified, with a client certificate", "{ca: redis-ca.pem, cert: client.pem, key: client-key.pem}", true},
		{"without a client certificate", "{ca: redis-ca.pem}", false},
		{"system roots: Redis's CA unknown", "{cert: client.pem, key: client-key.pem}", false},
	} {
		cfg, err := Parse(append(append([]byte{}, data...), []byte("cache:\n  shared:\n    redis: {addrs: [\""+rs.Addr()+
			"\"], tls: "+tc.tls+"}\n    keys: [{id: k1, file: cache-key}]\n")...))
		if err != nil {
			t.Fatal(err)
		}
		sc, closeShared, err := sharedCacheFor(cfg, dir, os.LookupEnv, slog.New(slog.DiscardHandler))
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
		closeShared()
	}
}

// A cache.shared section that cannot work is refused at start, naming the
// field.
func TestSharedCacheConfigErrors(t *testing.T) {
	t.Parallel()
	data := []byte(baseConfig)
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
		_, err := Parse(append(append([]byte{}, data...), []byte("cache:\n  shared:\n    "+tc.section)...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.section, err, tc.want)
		}
	}
	// Secrets are read at start: a short key or a missing file names the
	// field and never the content.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "short-key"), []byte("too-short-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ section, want string }{
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, file: short-key}]\n", "cache.shared.keys[0] (k1): secret of 16 bytes, want at least 32"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, file: missing}]\n", "cache.shared.keys[0].file: open"},
		{"redis: {addrs: [\"r:6379\"], password_file: missing}\n    keys: [{id: k1, file: short-key}]\n", "cache.shared.redis.password_file: open"},
		{"redis: {addrs: [\"r:6379\"]}\n    keys: [{id: k1, env: TOKENBROKER_TEST_UNSET_CACHE_KEY}]\n", "cache.shared.keys[0].env: TOKENBROKER_TEST_UNSET_CACHE_KEY is not set"},
	} {
		cfg, err := Parse(append(append([]byte{}, data...), []byte("cache:\n  shared:\n    "+tc.section)...))
		if err != nil {
			t.Fatalf("%q: %v", tc.section, err)
		}
		_, _, err = sharedCacheFor(cfg, dir, func(string) (string, bool) { return "", false }, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.section, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "too-short-secret") {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}
