package metrics_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	"github.com/tokenbroker/tokenbroker/server/metrics"
)

// scrape returns what the metrics handler serves.
func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d", rec.Code)
	}
	body, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func expect(t *testing.T, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w+"\n") {
			t.Errorf("metrics lack %q", w)
		}
	}
}

func TestUnaryInterceptorCountsByMethodAndCode(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	ic := m.UnaryInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/tokenbroker.v1.TokenBrokerService/GetToken"}
	ok := func(context.Context, any) (any, error) { return "resp", nil }
	denied := func(context.Context, any) (any, error) { return nil, status.Error(codes.PermissionDenied, "no") }
	for _, h := range []grpc.UnaryHandler{ok, ok, denied} {
		resp, err := ic(context.Background(), nil, info, h)
		if (err == nil) != (resp == "resp") {
			t.Fatalf("interceptor changed the answer: %v, %v", resp, err)
		}
	}
	expect(t, scrape(t, m),
		`tokenbroker_grpc_requests_total{code="OK",method="/tokenbroker.v1.TokenBrokerService/GetToken"} 2`,
		`tokenbroker_grpc_requests_total{code="PermissionDenied",method="/tokenbroker.v1.TokenBrokerService/GetToken"} 1`,
		`tokenbroker_grpc_request_duration_seconds_count{method="/tokenbroker.v1.TokenBrokerService/GetToken"} 3`)
}

// TestObserveAttemptOutcomes: a grant's outcome is ok, refused (an answer
// of Maskinporten's own, with its MP code), failed (no answer, 5xx, 429)
// or circuit_open, which sent nothing and so has no latency.
func TestObserveAttemptOutcomes(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	obs := m.ObserveAttempt("smartcloud")
	for _, err := range []error{
		nil,
		&maskinporten.Error{StatusCode: 400, Code: "invalid_altinn_customer_configuration", MPCode: "MP-303"},
		&maskinporten.Error{StatusCode: 429, Retryable: true},
		&maskinporten.Error{StatusCode: 503, Retryable: true},
		&maskinporten.Error{Err: errors.New("dial tcp: refused"), Retryable: true},
		errors.New("signing failed"),
		&maskinporten.Error{Err: errors.New("open"), Retryable: true, CircuitOpen: true},
	} {
		obs(10*time.Millisecond, err)
	}
	expect(t, scrape(t, m),
		`tokenbroker_maskinporten_grants_total{client="smartcloud",mp_code="",outcome="ok"} 1`,
		`tokenbroker_maskinporten_grants_total{client="smartcloud",mp_code="MP-303",outcome="refused"} 1`,
		`tokenbroker_maskinporten_grants_total{client="smartcloud",mp_code="",outcome="failed"} 4`,
		`tokenbroker_maskinporten_grants_total{client="smartcloud",mp_code="",outcome="circuit_open"} 1`,
		`tokenbroker_upstream_request_duration_seconds_count{client="smartcloud",upstream="maskinporten"} 6`)
}

func TestObserveExchange(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	obs := m.ObserveExchange()
	obs(time.Millisecond, nil)
	obs(time.Millisecond, errors.New("401"))
	obs(time.Millisecond, nil)
	expect(t, scrape(t, m),
		`tokenbroker_altinn_exchanges_total{outcome="ok"} 2`,
		`tokenbroker_altinn_exchanges_total{outcome="failed"} 1`,
		`tokenbroker_upstream_request_duration_seconds_count{client="",upstream="altinn"} 3`)
}

func TestTimeSignerPassesThrough(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	priv := signertest.RSA(t, signertest.KeyA)
	s := m.TimeSigner("pkcs11", priv)
	if !s.Public().(*rsa.PublicKey).Equal(&priv.PublicKey) {
		t.Error("the timed signer shows another public key")
	}
	digest := make([]byte, 32)
	sig, err := s.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil || rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA256, digest, sig) != nil {
		t.Fatalf("signature through the timer: %v", err)
	}
	expect(t, scrape(t, m), `tokenbroker_sign_duration_seconds_count{backend="pkcs11"} 1`)
}

func TestObserveKeys(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	set := time.Now()
	expires := set.Add(48 * time.Hour)
	m.ObserveKeys(func() []metrics.Key {
		return []metrics.Key{
			{Client: "smartcloud", KeyID: "a", Backend: "file", Active: false, Signing: true},
			{Client: "smartcloud", KeyID: "b", Backend: "pkcs11", Active: true, Signing: false, Expires: expires},
		}
	})
	got := scrape(t, m)
	elapsed := time.Since(set)
	expect(t, got,
		`tokenbroker_key_up{backend="file",client="smartcloud",kid="a"} 1`,
		`tokenbroker_key_up{backend="pkcs11",client="smartcloud",kid="b"} 0`,
		`tokenbroker_key_active{client="smartcloud",kid="a"} 0`,
		`tokenbroker_key_active{client="smartcloud",kid="b"} 1`)
	if strings.Contains(got, `tokenbroker_key_expiry_seconds{client="smartcloud",kid="a"}`) {
		t.Error("a key without expiry has an expiry metric")
	}
	m2 := regexp.MustCompile(`\ntokenbroker_key_expiry_seconds\{client="smartcloud",kid="b"\} (\S+)\n`).FindStringSubmatch(got)
	if m2 == nil {
		t.Fatal("no expiry metric for key b")
	}
	secs, err := strconv.ParseFloat(m2[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	// The scrape happened between set and set+elapsed.
	if left := time.Duration(secs * float64(time.Second)); left > 48*time.Hour || left < 48*time.Hour-elapsed {
		t.Errorf("key b expires in %v by the metric, want 48 h less at most %v", left, elapsed)
	}
}

type source struct{}

func (source) Token(_ context.Context, r maskinporten.Request) (*maskinporten.Token, error) {
	now := time.Now()
	return &maskinporten.Token{AccessToken: "secret-token-value", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}, nil
}
func (source) KeyID() string                         { return "k" }
func (source) Environment() maskinporten.Environment { return maskinporten.Test }

// TestObserveBroker: the cache counters follow the broker, and no token
// or organisation number reaches a metric.
func TestObserveBroker(t *testing.T) {
	t.Parallel()
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), SweepInterval: -1,
		Clients: []broker.Client{{Name: "smartcloud", Scopes: []string{"a:b"}, Source: source{}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := metrics.New()
	m.ObserveBroker(b)
	for i := 0; i < 3; i++ {
		if _, err := b.GetToken(context.Background(), broker.Request{CustomerOrg: "310904473", Scopes: []string{"a:b"}}); err != nil {
			t.Fatal(err)
		}
	}
	// A fetch counts itself out of flight just after its callers have the
	// token: wait for it before reading the gauge.
	for give := time.Now().Add(time.Minute); b.Health().InFlight != 0; runtime.Gosched() {
		if time.Now().After(give) {
			t.Fatal("a fetch is still in flight after a minute")
		}
	}
	got := scrape(t, m)
	expect(t, got,
		`tokenbroker_cache_events_total{event="hit"} 2`,
		`tokenbroker_cache_events_total{event="miss"} 1`,
		`tokenbroker_cache_entries 1`,
		`tokenbroker_cache_fetches_in_flight 0`)
	if strings.Contains(got, "secret-token-value") || strings.Contains(got, "310904473") {
		t.Error("a token or an organisation number reached the metrics")
	}
}

func TestObserveRotation(t *testing.T) {
	m := metrics.New()
	now := time.Now()
	pass := m.ObserveRotation(func() []metrics.Rotation {
		return []metrics.Rotation{
			{Client: "smartcloud", Failing: true, Due: now.Add(-time.Hour), Step: "prove", LastRotation: time.Unix(1700000000, 0),
				Registered: []metrics.RegisteredKey{{KeyID: "k1", Expires: now.Add(10 * 24 * time.Hour)}, {KeyID: "by-hand"}}},
			{Client: "other", Due: now.Add(48 * time.Hour)},
		}
	})
	pass("smartcloud", "failed")
	pass("smartcloud", "failed")
	pass("other", "not_due")
	out := scrape(t, m)
	for _, want := range []string{
		`tokenbroker_key_rotation_failing{client="smartcloud"} 1`,
		`tokenbroker_key_rotation_failing{client="other"} 0`,
		`tokenbroker_key_rotation_in_progress{client="smartcloud",step="prove"} 1`,
		`tokenbroker_key_rotation_last_timestamp_seconds{client="smartcloud"} 1.7e+09`,
		`tokenbroker_key_rotation_passes_total{client="smartcloud",outcome="failed"} 2`,
		`tokenbroker_key_rotation_passes_total{client="other",outcome="not_due"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s", want)
		}
	}
	for _, re := range []string{
		`tokenbroker_key_rotation_due_seconds\{client="smartcloud"\} -3[56]\d\d(\.\d+)?\n`,
		`tokenbroker_key_rotation_due_seconds\{client="other"\} 1[67]\d{4}(\.\d+)?\n`,
		`tokenbroker_registered_key_expiry_seconds\{client="smartcloud",kid="k1"\} 86[34]\d{3}(\.\d+)?\n`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("no match for %s", re)
		}
	}
	if strings.Contains(out, `kid="by-hand"`) || strings.Contains(out, `tokenbroker_key_rotation_in_progress{client="other"`) {
		t.Error("a key without expiry or a client without a rotation under way was exported")
	}
}

func TestObserveFallbacks(t *testing.T) {
	m := metrics.New()
	m.ObserveFallbacks(func() map[string]int64 { return map[string]int64{"smartcloud": 3, "other": 0} })
	expect(t, scrape(t, m), `tokenbroker_key_fallbacks_total{client="smartcloud"} 3`, `tokenbroker_key_fallbacks_total{client="other"} 0`)
}

func TestObserveSelfServiceCertificate(t *testing.T) {
	m := metrics.New()
	m.ObserveSelfServiceCertificate(func() time.Time { return time.Now().Add(10 * 24 * time.Hour) })
	out := scrape(t, m)
	if !regexp.MustCompile(`\ntokenbroker_self_service_certificate_expiry_seconds 86[34]\d{3}(\.\d+)?\n`).MatchString(out) {
		t.Errorf("no certificate expiry of 10 days in\n%s", out)
	}
}
