package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/logtest"
)

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = logtest.Buffer

func dial(t *testing.T, addr string) tokenbrokerv1.TokenBrokerServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tokenbrokerv1.NewTokenBrokerServiceClient(conn)
}

func TestDevMode(t *testing.T) {
	t.Parallel()
	env, stdout, stderr, stop := startDev(t)
	ctx := context.Background()
	env.Emulator.Record()
	c := dial(t, env.Addr)
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	for _, org := range []string{"310904473", "314250052"} {
		resp, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: org, Scopes: []string{"altinn:systembruker.demo"}})
		if err != nil || resp.GetAccessToken() == "" || resp.GetSystemuserId() == "" {
			t.Fatalf("GetToken(%s) = %v, %v", org, resp, err)
		}
	}
	if _, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "210493352", ExternalRef: "tenant-42", Scopes: []string{"altinn:systembruker.demo"}}); err != nil {
		t.Fatalf("external ref customer: %v", err)
	}
	alt, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{"altinn:systembruker.demo"},
		Kind: tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN})
	if err != nil || alt.GetKind() != tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN || time.Until(alt.GetExpiresAt().AsTime()) < 29*time.Minute {
		t.Fatalf("altinn token in dev mode: %v %v", alt, err)
	}
	_, err = c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "889640782", Scopes: []string{"altinn:systembruker.demo"}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("unapproved org: %v, want FailedPrecondition", err)
	}
	out := stdout.String()
	if !strings.Contains(out, "grpcurl -plaintext -d '{\"customer_org\":\"310904473\",\"scopes\":[\"altinn:systembruker.demo\"]}' "+env.Addr+" tokenbroker.v1.TokenBrokerService/GetToken") {
		t.Errorf("no ready grpcurl line in:\n%s", out)
	}
	if !strings.Contains(stderr.String(), "DEV MODE") {
		t.Error("dev mode does not say so")
	}
	if err := stop(); err != nil {
		t.Errorf("dev: %v", err)
	}
	env.Emulator.CheckNoLeaks(t, "dev output", stdout.String()+stderr.String())
}

// writeConfig writes key A and a config naming it, pointed at tokenURL,
// plaintext on loopback with a policy letting the insecure identity ask for
// anything. extra is appended.
func writeConfig(t *testing.T, issuer, tokenURL string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mp-key.pem"), signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
insecure: true
http_listen: 127.0.0.1:0
policy:
  - callers: [local:insecure]
    clients: ["*"]
    scopes: ["*"]
    customer_orgs: ["*"]
maskinporten:
  environment: test
  issuer: %q
  token_url: %q
altinn:
  exchange_url: %q
clients:
  - name: smartcloud
    client_id: 7ee41fce-9f6e-4c32-8195-0fe2c1517f43
    scopes: [altinn:systembruker.demo]
    key:
      kid: smartcloud-2026
      signer: file:mp-key.pem
      expires: %s
`, issuer, tokenURL, strings.TrimSuffix(tokenURL, "/token")+maskinportentest.ExchangePath, time.Now().Add(10*24*time.Hour).Format(time.DateOnly)) + strings.Join(extra, "")
	p := filepath.Join(dir, "tokenbroker.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServeWithConfig(t *testing.T) {
	t.Parallel()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	emu.Record()
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Scopes: []string{"altinn:systembruker.demo"}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")

	addr, stderr, stop := startServe(t, path, serveHooks{})
	ctx := context.Background()
	c := dial(t, addr)
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	resp, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{"altinn:systembruker.demo"}})
	if err != nil || resp.GetKeyId() != "smartcloud-2026" || resp.GetClient() != "smartcloud" {
		t.Fatalf("GetToken = %v, %v", resp, err)
	}
	if again, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{"altinn:systembruker.demo"}}); err != nil || !again.GetCached() {
		t.Fatalf("second GetToken = %v, %v", again, err)
	}
	if alt, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{"altinn:systembruker.demo"},
		Kind: tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN}); err != nil || alt.GetKind() != tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN {
		t.Fatalf("altinn token: %v %v", alt, err)
	}
	if _, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "123456789", Scopes: []string{"altinn:systembruker.demo"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad org: %v", err)
	}
	if _, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "314250052", Scopes: []string{"altinn:systembruker.demo"}}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("org without system user: %v", err)
	}
	scrape := scrapeMetrics(t, stderr.String())
	for _, want := range []string{
		`tokenbroker_grpc_requests_total{code="OK",method="/tokenbroker.v1.TokenBrokerService/GetToken"} 3`,
		`tokenbroker_grpc_requests_total{code="InvalidArgument",method="/tokenbroker.v1.TokenBrokerService/GetToken"} 1`,
		`tokenbroker_grpc_requests_total{code="FailedPrecondition",method="/tokenbroker.v1.TokenBrokerService/GetToken"} 1`,
		`tokenbroker_cache_events_total{event="hit"} 1`,
		`tokenbroker_cache_events_total{event="miss"} 3`,
		`tokenbroker_cache_entries 3`,
		`tokenbroker_altinn_exchanges_total{outcome="ok"} 1`,
		`tokenbroker_upstream_request_duration_seconds_count{client="",upstream="altinn"} 1`,
		`tokenbroker_maskinporten_grants_total{client="smartcloud",mp_code="",outcome="ok"} 1`,
		`tokenbroker_maskinporten_grants_total{client="smartcloud",mp_code="MP-303",outcome="refused"} 1`,
		`tokenbroker_sign_duration_seconds_count{backend="file"} 2`,
		`tokenbroker_upstream_request_duration_seconds_count{client="smartcloud",upstream="maskinporten"} 2`,
		`tokenbroker_clock_skew_seconds{client="smartcloud"}`,
		`tokenbroker_key_expiry_seconds{client="smartcloud",kid="smartcloud-2026"} `,
		`tokenbroker_key_up{backend="file",client="smartcloud",kid="smartcloud-2026"} 1`,
		`tokenbroker_key_active{client="smartcloud",kid="smartcloud-2026"} 1`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	checkLabels(t, scrape)
	checkAlertMetrics(t, scrape, false)
	hz := regexp.MustCompile(`"healthz":"(http://[^"]+)"`).FindStringSubmatch(stderr.String())
	if hz == nil {
		t.Fatal("no healthz URL in the log")
	}
	hresp, err := http.Get(hz[1])
	if err != nil {
		t.Fatal(err)
	}
	hbody, err := io.ReadAll(hresp.Body)
	hresp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"status":"degraded"`, `"kid":"smartcloud-2026"`, `"active":true`, `"signing":true`, `"expires_soon":true`} {
		if !strings.Contains(string(hbody), want) {
			t.Errorf("/healthz lacks %s: %s", want, hbody)
		}
	}
	emu.CheckNoLeaks(t, "the metrics", scrape)
	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
	log := stderr.String()
	for _, want := range []string{`"msg":"operator endpoints"`, `"msg":"client ready"`, `"msg":"key expires soon`, `"kid":"smartcloud-2026"`, `"backend":"file"`, `"msg":"rpc"`, `"msg":"stopped"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	emu.CheckNoLeaks(t, "serve log", log)
}

// scrapeMetrics finds the metrics URL in the JSON log and fetches it.
func scrapeMetrics(t *testing.T, log string) string {
	t.Helper()
	m := regexp.MustCompile(`"metrics":"(http://[^"]+)"`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no metrics URL in the log:\n%s", log)
	}
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(body)
}

// checkAlertMetrics fails when the alerting rules in deploy/prometheus use
// a tokenbroker metric that scrape does not have (renamed or removed):
// the TLS metrics (tokenbroker_tls_*, only exported with TLS) when tls,
// the others when not.
func checkAlertMetrics(t *testing.T, scrape string, tls bool) {
	t.Helper()
	rules, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "tokenbroker-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`tokenbroker_[a-z_]+`).FindAllString(string(rules), -1)
	if len(names) == 0 {
		t.Fatal("no tokenbroker metric in the alerting rules")
	}
	for _, name := range names {
		if strings.HasPrefix(name, "tokenbroker_tls_") != tls || strings.HasPrefix(name, "tokenbroker_shared_cache_") {
			continue // the shared cache's metrics: TestServeWithSharedCache
		}
		rotation := strings.HasPrefix(name, "tokenbroker_key_rotation_") || strings.HasPrefix(name, "tokenbroker_registered_key_") ||
			strings.HasPrefix(name, "tokenbroker_self_service_")
		if rotation && !strings.Contains(scrape, "\n# TYPE tokenbroker_key_rotation_passes_total ") {
			continue // the rotation's metrics, exported with a rotation section: TestServeRotatesKeys
		}
		if !strings.Contains(scrape, "\n# TYPE "+name+" ") {
			t.Errorf("the alerting rules use %s, which the broker does not export", name)
		}
	}
}

// checkLabels fails when a label value looks like an organisation number:
// cardinality must not grow with customers.
func checkLabels(t *testing.T, scrape string) {
	t.Helper()
	labels := regexp.MustCompile(`\{[^}]*\}`)
	org := regexp.MustCompile(`\d{9}`)
	for _, l := range labels.FindAllString(scrape, -1) {
		if org.MatchString(l) {
			t.Errorf("label set %s holds an organisation number", l)
		}
	}
}

func TestServeRefusesToStart(t *testing.T) {
	t.Parallel()
	good := writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")
	dir := filepath.Dir(good)
	base, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	replace := func(old, with string) string { return strings.Replace(string(base), old, with, 1) }
	if err := os.WriteFile(filepath.Join(dir, "garbage.pem"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, config, want string
	}{
		{"missing_config", filepath.Join(dir, "nope.yaml"), "nope.yaml"},
		{"unknown_key", write("unknown.yaml", string(base)+"colour: blue\n"), "colour"},
		{"unknown_nested_key", write("nested.yaml", replace("    key:\n", "    keyz: x\n    key:\n")), "keyz"},
		{"missing_key_file", write("missing.yaml", replace("file:mp-key.pem", "file:absent.pem")), "absent.pem"},
		{"unparsable_key", write("garbage.yaml", replace("file:mp-key.pem", "file:garbage.pem")), "garbage.pem"},
		{"unknown_signer_scheme", write("scheme.yaml", replace("file:mp-key.pem", "vault:secret/mp")), "unsupported signer scheme"},
		{"bad_gcpkms_uri", write("gcp.yaml", replace("file:mp-key.pem", "gcpkms:projects/p")), "gcpkms URI"},
		{"bad_azurekv_uri", write("az.yaml", replace("file:mp-key.pem", "azurekv:http://v/keys/k")), "azurekv URI"},
		{"bad_awskms_uri", write("aws.yaml", replace("file:mp-key.pem", "'awskms:k?colour=red'")), "awskms URI"},
		{"bad_pkcs11_uri", write("p11.yaml", replace("file:mp-key.pem", "'pkcs11:token=t'")), "pkcs11 URI"},
		{"bad_grpc_uri", write("grpc.yaml", replace("file:mp-key.pem", "'grpc:host:1'")), "mutual TLS"},
		{"signer_not_uri", write("nouri.yaml", replace("file:mp-key.pem", "mp-key.pem")), "not a URI"},
		{"bad_token_url", write("badurl.yaml", replace(`token_url: "http://127.0.0.1:9/token"`, `token_url: "ftp:/x"`)), "token_url"},
		{"mixed_altinn_base_url", write("altinnbase.yaml", strings.Replace(string(base), "altinn:\n", "altinn:\n  base_url: https://platform.altinn.no/authentication/api/v1\n", 1)), "altinn.base_url"},
		{"mixed_altinn_environment", write("altinnmix.yaml", regexp.MustCompile(`exchange_url: "[^"]*"`).ReplaceAllString(string(base),
			`exchange_url: "https://platform.altinn.no/authentication/api/v1/exchange/maskinporten"`)), "altinn.exchange_url"},
		{"mixed_environments", write("mixed.yaml", replace(`token_url: "http://127.0.0.1:9/token"`, `token_url: "https://maskinporten.no/token"`)), "Maskinporten prod"},
		{"bad_environment", write("env.yaml", replace("environment: test", "environment: staging")), "staging"},
		{"no_clients", write("noclients.yaml", "listen: 127.0.0.1:0\nmaskinporten:\n  environment: test\n"), "clients"},
		{"bad_duration", write("dur.yaml", replace("  environment: test\n", "  environment: test\n  timeout: soon\n")), "soon"},
		{"grant_lifetime", write("gl.yaml", replace("  environment: test\n", "  environment: test\n  grant_lifetime: 5m\n")), "grant_lifetime"},
		{"bad_connect_timeout", write("bad_connect_timeout.yaml", replace("  environment: test\n", "  environment: test\n  connect_timeout: 2m\n")), "maskinporten.connect_timeout"},
		{"bad_response_header_timeout", write("bad_response_header_timeout.yaml", replace("  environment: test\n", "  environment: test\n  response_header_timeout: 6m\n")), "maskinporten.response_header_timeout"},
		{"bad_idle_conn_timeout", write("bad_idle_conn_timeout.yaml", replace("  environment: test\n", "  environment: test\n  idle_conn_timeout: 2h\n")), "maskinporten.idle_conn_timeout"},
		{"bad_reconnect_interval", write("bad_reconnect_interval.yaml", replace("  environment: test\n", "  environment: test\n  reconnect_interval: 25h\n")), "maskinporten.reconnect_interval"},
		{"bad_grant_rate", write("bad_grant_rate.yaml", replace("  environment: test\n", "  environment: test\n  grant_rate: -3\n")), "maskinporten.grant_rate"},
		{"bad_grant_burst", write("bad_grant_burst.yaml", replace("  environment: test\n", "  environment: test\n  grant_burst: -1\n")), "maskinporten.grant_burst"},
		{"bad_hedge_budget", write("bad_hedge_budget.yaml", replace("  environment: test\n", "  environment: test\n  hedge:\n    budget: 1.5\n")), "maskinporten.hedge.budget"},
		{"hedge_max_below_floor", write("hedge_max_below_floor.yaml", replace("  environment: test\n", "  environment: test\n  hedge:\n    delay_floor: 1s\n    delay_max: 500ms\n")), "maskinporten.hedge.delay_max"},
		{"bad_open_for", write("bad_open_for.yaml", replace("  environment: test\n", "  environment: test\n  breaker:\n    open_for: 11m\n")), "maskinporten.breaker.open_for"},
		{"bad_expiry", write("exp.yaml", replace("      kid: smartcloud-2026\n", "      kid: smartcloud-2026\n      expire: 2027\n")), "expire"},
		{"bad_expiry_value", write("exp2.yaml", regexp.MustCompile(`expires: \S+`).ReplaceAllString(string(base), "expires: soon")), "key.expires"},
		{"bad_algorithm", write("alg.yaml", replace("      kid: smartcloud-2026\n", "      kid: smartcloud-2026\n      algorithm: ES256\n")), "ES256"},
		{"duplicate_client", write("dup.yaml", string(base)+strings.SplitN(string(base), "clients:\n", 2)[1]), "used twice"},
		{"bad_listen", write("listen.yaml", replace("listen: 127.0.0.1:0\n", "listen: nowhere\n")), "listen"},
		{"insecure_off_loopback", write("insec.yaml", replace("listen: 127.0.0.1:0\n", "listen: 0.0.0.0:0\n")), "loopback"},
		{"no_tls", write("notls.yaml", replace("insecure: true\n", "")), "tls: cert, key and client_ca are required"},
		{"bad_policy", write("pol.yaml", replace("    customer_orgs: [\"*\"]\n", "")), "policy[0].customer_orgs"},
		{"bad_audit", write("audit.yaml", string(base)+"audit:\n  sink: syslog\n"), "audit.sink"},
		{"audit_file_readable_by_others", write("auditperm.yaml", string(base)+"audit:\n  sink: file:readable.jsonl\n"), "chmod 600"},
		{"bare_caller", write("bare.yaml", replace("callers: [local:insecure]", "callers: [insecure]")), "does not name the kind"},
		{"caller_glob_all", write("star.yaml", replace("callers: [local:insecure]", `callers: ["*"]`)), "does not name the kind"},
		{"insecure_identity_of_another_kind", write("insid.yaml", string(base)+"insecure_identity: spiffe://example.org/billing\n"), "insecure_identity"},
		{"unix_identity_of_another_kind", write("unixid.yaml", string(base)+"unix:\n  path: x.sock\n  identities: {1000: \"cn:billing\"}\n"), "unix.identities[1000]"},
		{"bad_max_header_bytes", write("hdr.yaml", string(base)+"limits:\n  max_header_bytes: 10\n"), "limits.max_header_bytes"},
		{"bad_unix_mode", write("umode.yaml", string(base)+"unix:\n  path: x.sock\n  mode: rw\n"), "unix.mode"},
		{"bad_http_listen", write("hlisten.yaml", replace("http_listen: 127.0.0.1:0", "http_listen: nowhere")), "http_listen"},
		{"two_documents", write("docs.yaml", string(base)+"---\nlisten: x\n"), "more than one"},
		{"empty", write("empty.yaml", ""), "empty"},
	}
	// An audit file that others can read is refused, not appended to.
	if err := os.WriteFile(filepath.Join(dir, "readable.jsonl"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "readable.jsonl"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			err := run(context.Background(), []string{"serve", "--config", tc.config}, &stderr, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if strings.Contains(err.Error(), "MII") {
				t.Errorf("error leaks key material: %q", err)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), nil, &out, &out); err == nil {
		t.Error("no command accepted")
	}
	if err := run(context.Background(), []string{"frobnicate"}, &out, &out); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Errorf("unknown command: %v", err)
	}
	if err := run(context.Background(), []string{"serve"}, &out, &out); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("serve without config: %v", err)
	}
}

// background runs run until the test ends or stop is called, and returns
// what it sends on ready; it fails the test, with out, if run returns
// first. stop cancels run and returns its error.
func background[T any](tb testing.TB, out *syncBuffer, run func(ctx context.Context, ready chan<- T) error) (v T, stop func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan T, 1), make(chan error, 1)
	go func() { done <- run(ctx, ready) }()
	select {
	case v = <-ready:
	case err := <-done:
		cancel()
		tb.Fatalf("stopped at start: %v\n%s", err, out.String())
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("stopped with an error: %v\n%s", err, out.String())
		}
	})
	return v, stop
}

// startServe runs runServe on the config at path; hooks.ready is set here.
func startServe(t *testing.T, path string, hooks serveHooks) (addr string, log *syncBuffer, stop func() error) {
	t.Helper()
	log = &syncBuffer{}
	addr, stop = background(t, log, func(ctx context.Context, ready chan<- string) error {
		hooks.ready = ready
		return runServe(ctx, []string{"--config", path}, log, hooks)
	})
	return addr, log, stop
}

// startSigner runs `tokenbroker signer serve args...` and returns its
// address.
func startSigner(tb testing.TB, args ...string) (addr string, stop func()) {
	tb.Helper()
	var out syncBuffer
	addr, stopErr := background(tb, &out, func(ctx context.Context, ready chan<- string) error {
		return runSigner(ctx, append([]string{"serve"}, args...), &out, ready)
	})
	return addr, func() {
		if err := stopErr(); err != nil {
			tb.Errorf("signer stopped with an error: %v", err)
		}
	}
}

// startDev runs dev mode on a free loopback port.
func startDev(t *testing.T) (env devEnv, stdout, stderr *syncBuffer, stop func() error) {
	t.Helper()
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	env, stop = background(t, stderr, func(ctx context.Context, ready chan<- devEnv) error {
		return runDev(ctx, []string{"--listen", "127.0.0.1:0"}, stdout, stderr, ready, nil)
	})
	return env, stdout, stderr, stop
}

// TestConfigWatch: with config_watch_interval the broker reloads its
// config file when its content changes (as a Kubernetes config map
// update does), reports a broken version once, and leaves an unchanged
// file alone.
func TestConfigWatch(t *testing.T) {
	t.Parallel()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.Record()
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_x", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token", "config_watch_interval: 20ms\n")
	original, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	looked := make(chan struct{})
	addr, stderr, stop := startServe(t, path, serveHooks{looked: looked})
	// The watcher waits for the test to take each look; a goroutine takes
	// them until the test asks for some, and until the test returns. (It
	// used to stop on t.Context(): with -failfast and another test of the
	// package failing first, the watcher was then left blocked and the
	// reload never came, under load in mutation runs.)
	want := make(chan int)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		for {
			select {
			case n := <-want:
				for range n {
					<-looked
				}
				want <- 0
			case <-looked:
			case <-quit:
				return
			}
		}
	}()
	looks := func(n int) {
		want <- n
		<-want
	}
	c := dial(t, addr)
	get := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{demoScope}})
		return err
	}
	count := func(msg string) int { return strings.Count(stderr.String(), msg) }
	if err := get(); err != nil {
		t.Fatalf("before the change: %v", err)
	}

	narrowed := bytes.Replace(original, []byte(`customer_orgs: ["*"]`), []byte(`customer_orgs: ["314250052"]`), 1)
	if bytes.Equal(narrowed, original) {
		t.Fatal("the policy line to change is not in the config")
	}
	writeSecret(t, path, narrowed)
	waitUntil(t, "the reload", func() bool { return count(`"msg":"config reloaded`) == 1 })
	if err := get(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("after the policy change: %v, want PermissionDenied", err)
	}

	writeSecret(t, path, append(narrowed, "bogus: 1\n"...))
	waitUntil(t, "the failed reload", func() bool { return count(`"msg":"reload failed`) == 1 })
	looks(10) // ten more looks at the same broken file
	if n := count(`"msg":"reload failed`); n != 1 {
		t.Errorf("a broken file was reported %d times, want once", n)
	}
	if n := count(`"msg":"config reloaded`); n != 1 {
		t.Errorf("%d reloads, want 1: an unchanged file was reloaded", n)
	}
	if err := get(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("after a broken change: %v, want the narrowed policy still", err)
	}

	writeSecret(t, path, original)
	waitUntil(t, "the second reload", func() bool { return count(`"msg":"config reloaded`) == 2 })
	if err := get(); err != nil {
		t.Errorf("after restoring the policy: %v", err)
	}
	if err := stop(); err != nil {
		t.Error(err)
	}
	emu.CheckNoLeaks(t, "serve log", stderr.String())
}
