package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerclient "github.com/tokenbroker/tokenbroker/client"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

const demoScope = "altinn:systembruker.demo"

// securePolicy is the policy of TestMTLSAndPolicy; reloadedPolicy also
// lets payroll use 310904473.
const securePolicy = `policy:
  - callers: ["spiffe://example.org/ns/*/sa/billing"]
    clients: [smartcloud]
    scopes: [altinn:systembruker.demo]
    customer_orgs: ["310904473"]
  - callers: [dns:payroll.example.org]
    clients: ["*"]
    scopes: ["*"]
    customer_orgs: ["314250052"]
  - callers: [cn:reporting]
    clients: [smartcloud]
    scopes: [other:scope]
    customer_orgs: ["*"]
  - callers: [unix:sidecar]
    clients: ["*"]
    scopes: ["*"]
    customer_orgs: ["*"]
`

func TestMTLSAndPolicy(t *testing.T) {
	t.Parallel()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	emu.Record()
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Scopes: []string{demoScope, "other:scope"}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	for _, org := range []string{"310904473", "314250052"} {
		emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", org, "")
	}

	callersCA, otherCA := tlstest.NewCA(t, "callers"), tlstest.NewCA(t, "someone else")
	serverCert := callersCA.Issue(t, tlstest.Leaf{CN: "tokenbroker", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	dir := filepath.Dir(path)
	certPath, keyPath := serverCert.WriteFiles(t, dir, "server")
	if err := os.WriteFile(filepath.Join(dir, "callers-ca.pem"), callersCA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "tb.sock")
	base := readFile(t, path)
	secure := strings.Replace(string(base), "insecure: true\n", fmt.Sprintf(`tls:
  cert: %s
  key: %s
  client_ca: callers-ca.pem
unix:
  path: tb.sock
  identities: {%d: sidecar}
audit:
  sink: file:audit.jsonl
`, certPath, keyPath, os.Getuid()), 1)
	secure = strings.Replace(secure, "  - callers: [local:insecure]\n    clients: [\"*\"]\n    scopes: [\"*\"]\n    customer_orgs: [\"*\"]\n", "", 1)
	secure = strings.Replace(secure, "policy:\n", securePolicy, 1)
	secure = strings.Replace(secure, "scopes: [altinn:systembruker.demo]\n    key:", "scopes: [altinn:systembruker.demo, other:scope]\n    key:", 1)
	if err := os.WriteFile(path, []byte(secure), 0o600); err != nil {
		t.Fatal(err)
	}

	reload := make(chan struct{})
	addr, stderr, stop := startServe(t, path, serveHooks{reload: reload})
	ctx := context.Background()

	dialTLS := func(cert *tlstest.Issued) *grpc.ClientConn {
		cfg := &tls.Config{RootCAs: callersCA.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{cert.TLS}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	get := func(conn *grpc.ClientConn, org string, scopes ...string) (*tokenbrokerv1.GetTokenResponse, error) {
		if len(scopes) == 0 {
			scopes = []string{demoScope}
		}
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		return tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: org, Scopes: scopes})
	}
	// billing connects with the Go client package's mTLS helper.
	billingCert := callersCA.Issue(t, tlstest.Leaf{CN: "ignored", DNS: []string{"ignored.example.org"}, URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}})
	bcert, bkey := billingCert.WriteFiles(t, dir, "billing")
	billing, err := tokenbrokerclient.DialMTLS(addr, filepath.Join(dir, "callers-ca.pem"), bcert, bkey)
	if err != nil {
		t.Fatal(err)
	}
	defer billing.Close()
	payroll := dialTLS(callersCA.Issue(t, tlstest.Leaf{CN: "ignored", DNS: []string{"payroll.example.org"}}))
	reporting := dialTLS(callersCA.Issue(t, tlstest.Leaf{CN: "reporting"}))
	noCert := dialTLS(nil)
	foreign := dialTLS(otherCA.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}}))
	expired := dialTLS(callersCA.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}, Expired: true}))

	expect := func(name string, err error, code codes.Code, words ...string) {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != code {
			t.Errorf("%s: %v, want %v", name, st, code)
			return
		}
		for _, w := range words {
			if !strings.Contains(st.Message(), w) {
				t.Errorf("%s: message %q lacks %q", name, st.Message(), w)
			}
		}
	}
	resp, err := get(billing, "310904473")
	expect("billing (SPIFFE ID), allowed org", err, codes.OK)
	if resp.GetAccessToken() == "" {
		t.Fatal("no token")
	}
	_, err = get(billing, "314250052")
	expect("billing, other org", err, codes.PermissionDenied, "customer_org", "314250052", "spiffe://example.org/ns/prod/sa/billing")
	_, err = get(payroll, "310904473") // cached for billing: the cache must not bypass policy
	expect("payroll (DNS SAN), org cached for billing", err, codes.PermissionDenied, "customer_org", "payroll.example.org")
	_, err = get(payroll, "314250052")
	expect("payroll, allowed org", err, codes.OK)
	_, err = get(reporting, "310904473")
	expect("reporting (CN), other scope", err, codes.PermissionDenied, "scopes", demoScope)
	_, err = get(noCert, "310904473")
	expect("no certificate", err, codes.Unauthenticated, "no client certificate")
	_, err = get(foreign, "310904473")
	expect("certificate from another CA", err, codes.Unauthenticated, "not accepted")
	_, err = get(expired, "310904473")
	expect("expired certificate", err, codes.Unauthenticated, "expired")
	// Issue 12, finding 1: a certificate without a URI SAN whose CN or DNS
	// SAN spells billing's SPIFFE ID is not billing.
	const billingID = "spiffe://example.org/ns/prod/sa/billing"
	cnSpoof := dialTLS(callersCA.Issue(t, tlstest.Leaf{CN: billingID}))
	_, err = get(cnSpoof, "310904473")
	expect("CN spelling a SPIFFE ID", err, codes.PermissionDenied, "cn:"+billingID)
	dnsSpoof := dialTLS(callersCA.Issue(t, tlstest.Leaf{DNS: []string{billingID}}))
	_, err = get(dnsSpoof, "310904473")
	expect("DNS SAN spelling a SPIFFE ID", err, codes.PermissionDenied, "dns:"+billingID)
	httpsURI := dialTLS(callersCA.Issue(t, tlstest.Leaf{URIs: []string{"https://example.org/ns/prod/sa/billing"}, DNS: []string{"payroll.example.org"}}))
	_, err = get(httpsURI, "310904473")
	expect("a non-SPIFFE URI SAN names nothing (falls back to the DNS SAN)", err, codes.PermissionDenied, "dns:payroll.example.org")
	serverOnly := dialTLS(callersCA.Issue(t, tlstest.Leaf{URIs: []string{billingID}, Server: true}))
	_, err = get(serverOnly, "310904473")
	expect("certificate valid only for server auth", err, codes.Unauthenticated, "not accepted")
	// Finding 2: server reflection is a stream, and needs a caller too.
	listServices := func(conn *grpc.ClientConn) error {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(rctx)
		if err != nil {
			return err
		}
		// A Send that fails with io.EOF means the server ended the stream;
		// Recv then returns its status.
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	expect("reflection without a certificate", listServices(noCert), codes.Unauthenticated, "no client certificate")
	expect("reflection from another CA", listServices(foreign), codes.Unauthenticated, "not accepted")
	expect("reflection with a caller certificate", listServices(reporting), codes.OK)
	if denied, _ := get(billing, "314250052"); denied != nil {
		t.Error("a denied call returned a token")
	}
	if n := emu.Requests(); n != 2 {
		t.Errorf("%d grants, want 2 (refused calls never reach Maskinporten)", n)
	}
	hc, err := healthpb.NewHealthClient(noCert).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health without a certificate: %v %v", hc, err)
	}

	// The unix socket: the identity comes from the peer's uid.
	uconn, err := tokenbrokerclient.DialUnix(filepath.Join(dir, "tb.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer uconn.Close()
	_, err = get(uconn, "314250052")
	expect("unix socket peer uid -> sidecar", err, codes.OK)
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v", st, err)
	}

	// A reload changes decisions without a restart.
	reloaded := strings.Replace(secure, "    customer_orgs: [\"314250052\"]\n", "    customer_orgs: [\"314250052\", \"310904473\"]\n", 1)
	if err := os.WriteFile(path, []byte(reloaded), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	waitUntil(t, "the reload", func() bool { return strings.Contains(stderr.String(), "config reloaded") })
	_, err = get(payroll, "310904473")
	expect("payroll after reload", err, codes.OK)
	// A broken config on reload keeps the running policy.
	if err := os.WriteFile(path, []byte(reloaded+"bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	waitUntil(t, "the failed reload", func() bool { return strings.Contains(stderr.String(), "reload failed") })
	_, err = get(payroll, "310904473")
	expect("payroll after a failed reload", err, codes.OK)

	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
	auditLog, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(auditLog)), "\n")
	if len(lines) != 18 {
		t.Errorf("%d audit lines for 16 GetToken calls and 2 unauthenticated reflection calls:\n%s", len(lines), auditLog)
	}
	for _, want := range []string{`"decision":"allow"`, `"decision":"deny"`, `"decision":"unauthenticated"`,
		`"caller":"dns:payroll.example.org"`, `"caller":"unix:sidecar"`, `"token_jti":"`, `"token_sha256":"`, `"cache_hit":true`} {
		if !strings.Contains(string(auditLog), want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	emu.CheckNoLeaks(t, "the audit log", string(auditLog))
	emu.CheckNoLeaks(t, "the log", stderr.String())
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// A minute is far beyond any event a test waits for: a loaded machine
	// makes a test slower, never failed.
	for give := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(give) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
