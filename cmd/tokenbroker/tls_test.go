package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// tlsBroker is a broker serving mTLS from files in dir, against an
// emulator with one approved customer (310904473) that every caller whose
// identity matches callerPattern may ask for.
type tlsBroker struct {
	emu                  *maskinportentest.Emulator
	dir                  string
	cert, key, ca        string
	configPath           string
	addr                 string
	log                  *syncBuffer
	stop                 func() error
	looked               chan struct{}
	serverCA, callersCA  *tlstest.CA
	serverRoots          *x509.CertPool
	firstServer, billing *tlstest.Issued
}

func startTLSBroker(t *testing.T, server tlstest.Leaf, tlsExtra string) *tlsBroker {
	t.Helper()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	b := &tlsBroker{emu: emu, serverCA: tlstest.NewCA(t, "servers"), callersCA: tlstest.NewCA(t, "callers"), looked: make(chan struct{})}
	b.serverRoots = b.serverCA.Pool()
	b.configPath = writeConfig(t, emu.Issuer(), srv.URL+"/token")
	b.dir = filepath.Dir(b.configPath)
	server.Server = true
	server.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	b.firstServer = b.serverCA.Issue(t, server)
	b.cert, b.key = b.firstServer.WriteFiles(t, b.dir, "server")
	b.ca = filepath.Join(b.dir, "callers-ca.pem")
	if err := os.WriteFile(b.ca, b.callersCA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	b.billing = b.callersCA.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}})
	cfg := strings.Replace(string(readFile(t, b.configPath)), "insecure: true\n",
		"tls:\n  cert: server.pem\n  key: server-key.pem\n  client_ca: callers-ca.pem\n"+tlsExtra, 1)
	cfg = strings.Replace(cfg, "callers: [local:insecure]", `callers: ["spiffe://example.org/ns/*/sa/billing"]`, 1)
	if err := os.WriteFile(b.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	b.addr, b.log, b.stop = startServe(t, b.configPath, serveHooks{tlsInterval: time.Millisecond, tlsLooked: b.looked})
	return b
}

// look waits for the broker's next look at its TLS files, then one more,
// so that the look after a change has finished.
func (b *tlsBroker) look(t *testing.T) {
	t.Helper()
	for range 2 {
		select {
		case <-b.looked:
		case <-time.After(time.Minute):
			t.Fatal("the broker does not look at its TLS files")
		}
	}
}

// call makes one GetToken call on a new connection presenting caller, and
// returns the serial of the server certificate that connection got.
func (b *tlsBroker) call(ctx context.Context, caller *tlstest.Issued) (string, error) {
	cfg := &tls.Config{RootCAs: b.serverRoots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{caller.TLS}}
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	var p peer.Peer
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(rctx,
		&tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{demoScope}}, grpc.Peer(&p))
	if err != nil {
		return "", err
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return "", status.Error(codes.Internal, "no server certificate")
	}
	return ti.State.PeerCertificates[0].SerialNumber.Text(16), nil
}

func (b *tlsBroker) healthz(t *testing.T) map[string]any {
	t.Helper()
	m := regexp.MustCompile(`"healthz":"(http://[^"]+)"`).FindStringSubmatch(b.log.String())
	if m == nil {
		t.Fatal("no healthz URL in the log")
	}
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("healthz: %v: %s", err, body)
	}
	return h
}

// replaceFile replaces the file at path in one step (a rename).
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func serialOf(i *tlstest.Issued) string { return i.TLS.Leaf.SerialNumber.Text(16) }

// TestTLSFilesReplacedWhileCallersLoop: callers keep calling on new
// connections while the server certificate and the callers' CA bundle are
// replaced, the pair written non-atomically (certificate first, the
// broker looking in between). No call fails; the half-written pair is
// refused and logged once; once whole, new connections get the new
// certificate, and callers of the new CA get in.
func TestTLSFilesReplacedWhileCallersLoop(t *testing.T) {
	t.Parallel()
	b := startTLSBroker(t, tlstest.Leaf{CN: "tokenbroker"}, "")
	ctx := context.Background()
	if got, err := b.call(ctx, b.billing); err != nil || got != serialOf(b.firstServer) {
		t.Fatalf("first call: %s, %v", got, err)
	}
	newCA := tlstest.NewCA(t, "callers 2027")
	newCaller := newCA.Issue(t, tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/staging/sa/billing"}})
	if _, err := b.call(ctx, newCaller); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a caller of a CA not yet in the bundle: %v, want Unauthenticated", err)
	}

	var calls, failed atomic.Int64
	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan struct{})
	// The loop's callers signal when one of them is served the second
	// certificate, so that the test waits for that event rather than
	// hoping the scheduler ran them after the reload.
	var secondSerial atomic.Value
	secondSerial.Store("")
	sawSecond, sawFirst := make(chan struct{}), make(chan struct{})
	var sawOnce, sawFirstOnce sync.Once
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				got, err := b.call(ctx, b.billing)
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					t.Errorf("call during the replacement: %v", err)
					continue
				}
				mu.Lock()
				seen[got]++
				mu.Unlock()
				if got == serialOf(b.firstServer) {
					sawFirstOnce.Do(func() { close(sawFirst) })
				}
				if got == secondSerial.Load().(string) {
					sawOnce.Do(func() { close(sawSecond) })
				}
			}
		})
	}
	// Each file is replaced in one step (as cert-manager's writers and
	// Kubernetes do), but the pair is not: the certificate comes first.
	select {
	case <-sawFirst:
	case <-time.After(time.Minute):
		close(done)
		wg.Wait()
		t.Fatal("no looping caller was served the first certificate within a minute")
	}
	second := b.serverCA.Issue(t, tlstest.Leaf{CN: "tokenbroker", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	secondSerial.Store(serialOf(second))
	replaceFile(t, b.cert, second.CertPEM)
	b.look(t) // the broker sees the new certificate with the old key
	if h := b.healthz(t); h["tls"].(map[string]any)["serial"] != serialOf(b.firstServer) || h["tls"].(map[string]any)["reload_error"] == nil {
		t.Errorf("/healthz while the pair is half-written: %v", h["tls"])
	}
	b.look(t)
	replaceFile(t, b.key, second.KeyPEM)
	replaceFile(t, b.ca, append(append([]byte{}, b.callersCA.PEM...), newCA.PEM...))
	b.look(t)
	// Every connection opened from now on gets the new certificate.
	for range 5 {
		if got, err := b.call(ctx, b.billing); err != nil || got != serialOf(second) {
			t.Fatalf("a new connection after the reload: %s, %v; want %s", got, err, serialOf(second))
		}
	}
	select {
	case <-sawSecond:
	case <-time.After(time.Minute):
		t.Error("no looping caller was served the second certificate within a minute")
	}
	close(done)
	wg.Wait()
	mu.Lock()
	t.Logf("%d calls during the replacement, %d failed; server certificates seen: %v", calls.Load(), failed.Load(), seen)
	if seen[serialOf(b.firstServer)] == 0 || seen[serialOf(second)] == 0 {
		t.Errorf("callers saw %v; want both the first and the second certificate", seen)
	}
	mu.Unlock()
	if failed.Load() != 0 {
		t.Errorf("%d of %d calls failed", failed.Load(), calls.Load())
	}
	if _, err := b.call(ctx, newCaller); err != nil {
		t.Errorf("a caller of the new CA after the bundle named it: %v", err)
	}
	log := b.log.String()
	if n := strings.Count(log, "TLS files changed but cannot be used"); n != 1 {
		t.Errorf("the half-written pair was logged %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, `"msg":"TLS material reloaded"`) || !strings.Contains(log, serialOf(second)) {
		t.Errorf("no reload line naming the new serial:\n%s", log)
	}
	tlsz := b.healthz(t)["tls"].(map[string]any)
	if tlsz["serial"] != serialOf(second) || tlsz["source"] != "files" || tlsz["expires_soon"] != false || tlsz["reload_error"] != nil {
		t.Errorf("/healthz tls after the reload: %v", tlsz)
	}
	scrape := scrapeMetrics(t, log)
	for _, want := range []string{`tokenbroker_tls_certificate_expiry_seconds{source="files"} `,
		`tokenbroker_tls_certificate_lifetime_seconds{source="files"} 46800`, `tokenbroker_tls_reload_failing{source="files"} 0`} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	checkAlertMetrics(t, scrape, true)
	for _, k := range []*tlstest.Issued{b.firstServer, second} {
		for _, l := range strings.Split(string(k.KeyPEM), "\n") {
			if len(l) > 20 && (strings.Contains(log, l) || strings.Contains(scrape, l)) {
				t.Fatal("the log or the metrics hold the server's private key")
			}
		}
	}
}

// TestTLSCertificateExpiringReported: a certificate with less than a third
// of its lifetime left shows in /healthz (degraded, expires_soon) and in
// the metric the alert reads.
func TestTLSCertificateExpiringReported(t *testing.T) {
	t.Parallel()
	now := time.Now()
	b := startTLSBroker(t, tlstest.Leaf{CN: "tokenbroker", NotBefore: now.Add(-80 * 24 * time.Hour), NotAfter: now.Add(10 * 24 * time.Hour)}, "")
	h := b.healthz(t)
	tlsz := h["tls"].(map[string]any)
	if h["status"] != "degraded" || tlsz["expires_soon"] != true || tlsz["serial"] != serialOf(b.firstServer) {
		t.Errorf("/healthz with a certificate 10 days from expiry: %v", h)
	}
	if s, ok := tlsz["expires_in_seconds"].(float64); !ok || s <= 9*86400 || s > 10*86400 {
		t.Errorf("expires_in_seconds = %v, want about 10 days", tlsz["expires_in_seconds"])
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"check", "--config", b.configPath}, &out, &out); err != nil ||
		!strings.Contains(out.String(), "mTLS, certificate CN=tokenbroker serial "+serialOf(b.firstServer)) {
		t.Errorf("check: %v\n%s", err, out.String())
	}
	scrape := scrapeMetrics(t, b.log.String())
	m := regexp.MustCompile(`tokenbroker_tls_certificate_expiry_seconds\{source="files"\} (\S+)`).FindStringSubmatch(scrape)
	if m == nil {
		t.Fatal("no expiry metric")
	}
	if v, err := strconv.ParseFloat(m[1], 64); err != nil || v <= 9*86400 || v > 10*86400 {
		t.Errorf("expiry metric %s, want about 864000 seconds", m[1])
	}
}
