package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// fakeSource is a TokenSource that counts calls and can block or fail.
type fakeSource struct {
	calls    atomic.Int64
	lifetime time.Duration
	now      func() time.Time
	gate     chan struct{} // when not nil, Token waits for it to close
	gateOrg  string        // when not empty, only this org waits for gate
	started  chan struct{} // when not nil, receives once per call
	err      error
	panic    bool

	mu   sync.Mutex
	reqs []maskinporten.Request
}

var _ broker.TokenSource = (*fakeSource)(nil)

func (f *fakeSource) Token(ctx context.Context, r maskinporten.Request) (*maskinporten.Token, error) {
	n := f.calls.Add(1)
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
	if f.started != nil {
		f.started <- struct{}{}
	}
	if f.gate != nil && (f.gateOrg == "" || f.gateOrg == r.CustomerOrg) {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.panic {
		panic("source exploded")
	}
	if f.err != nil {
		return nil, f.err
	}
	now := f.now()
	return &maskinporten.Token{
		AccessToken: "token-" + r.CustomerOrg + "-" + string(rune('0'+n%10)),
		TokenType:   "Bearer",
		Scopes:      r.Scopes,
		IssuedAt:    now,
		ExpiresAt:   now.Add(f.lifetime),
	}, nil
}

func (f *fakeSource) KeyID() string { return "kid-1" }
func (f *fakeSource) Environment() maskinporten.Environment {
	return maskinporten.Test
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const scope = "altinn:systembruker.demo"

func newBroker(t *testing.T, src *fakeSource) (*broker.Broker, *clock) {
	t.Helper()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	if src.lifetime == 0 {
		src.lifetime = 120 * time.Second
	}
	src.now = clk.Now
	b, err := broker.New(broker.Config{
		Policy:  policy.AllowAll(),
		Clients: []broker.Client{{Name: "demo", Scopes: []string{scope, "other:scope"}, Source: src}},
		Now:     clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, clk
}

func req(org string) broker.Request {
	return broker.Request{CustomerOrg: org, Scopes: []string{scope}}
}

func TestValidation(t *testing.T) {
	t.Parallel()
	b, _ := newBroker(t, &fakeSource{})
	long := strings.Repeat("x", 2000)
	tests := []struct {
		name  string
		mod   func(r *broker.Request)
		field string
	}{
		{"org_check_digit_1", func(r *broker.Request) { r.CustomerOrg = "123456789" }, "customer_org"},
		{"org_check_digit_2", func(r *broker.Request) { r.CustomerOrg = "987654321" }, "customer_org"},
		{"org_placeholder", func(r *broker.Request) { r.CustomerOrg = "999888777" }, "customer_org"},
		{"org_short", func(r *broker.Request) { r.CustomerOrg = "12345678" }, "customer_org"},
		{"org_long", func(r *broker.Request) { r.CustomerOrg = "1234567890" }, "customer_org"},
		{"org_letters", func(r *broker.Request) { r.CustomerOrg = "abcdefghi" }, "customer_org"},
		{"org_space", func(r *broker.Request) { r.CustomerOrg = " 310904473" }, "customer_org"},
		{"org_empty", func(r *broker.Request) { r.CustomerOrg = "" }, "customer_org"},
		{"org_huge", func(r *broker.Request) { r.CustomerOrg = long }, "customer_org"},
		{"no_scopes", func(r *broker.Request) { r.Scopes = nil }, "scopes"},
		{"empty_scope", func(r *broker.Request) { r.Scopes = []string{""} }, "scopes"},
		{"scope_with_space", func(r *broker.Request) { r.Scopes = []string{"a b"} }, "scopes"},
		{"scope_with_quote", func(r *broker.Request) { r.Scopes = []string{`a"b`} }, "scopes"},
		{"scope_non_ascii", func(r *broker.Request) { r.Scopes = []string{"æøå:x"} }, "scopes"},
		{"scope_huge", func(r *broker.Request) { r.Scopes = []string{long} }, "scopes"},
		{"too_many_scopes", func(r *broker.Request) { r.Scopes = make([]string, 10000) }, "scopes"},
		{"external_ref_control", func(r *broker.Request) { r.ExternalRef = "a\nb" }, "external_ref"},
		{"external_ref_huge", func(r *broker.Request) { r.ExternalRef = long }, "external_ref"},
		{"external_ref_bad_utf8", func(r *broker.Request) { r.ExternalRef = "\xff\xfe" }, "external_ref"},
		{"resource_relative", func(r *broker.Request) { r.Resource = "/api" }, "resource"},
		{"resource_fragment", func(r *broker.Request) { r.Resource = "https://x/#f" }, "resource"},
		{"resource_huge", func(r *broker.Request) { r.Resource = "https://x/" + long }, "resource"},
		{"min_validity_negative", func(r *broker.Request) { r.MinValidity = -time.Second }, "min_validity"},
		{"min_validity_huge", func(r *broker.Request) { r.MinValidity = 2 * time.Hour }, "min_validity"},
		{"client_unknown", func(r *broker.Request) { r.Client = "nope" }, "client"},
		{"client_control", func(r *broker.Request) { r.Client = "de\x00mo" }, "client"},
		{"client_huge", func(r *broker.Request) { r.Client = long }, "client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := req("310904473")
			tc.mod(&r)
			_, err := b.GetToken(context.Background(), r)
			var fe *broker.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("error = %v, want a FieldError for %s", err, tc.field)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("message %q does not start with the field name", err)
			}
			if len(err.Error()) > 300 {
				t.Errorf("message is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestValidOrgNumbers(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	b, _ := newBroker(t, src)
	for _, org := range []string{"991825827", "310904473", "314250052", "313775429", "210493352"} {
		tok, err := b.GetToken(context.Background(), req(org))
		if err != nil {
			t.Fatalf("%s: %v", org, err)
		}
		if tok.CustomerOrg != org {
			t.Errorf("customer org %q, want %q", tok.CustomerOrg, org)
		}
		tok, err = b.GetToken(context.Background(), req("0192:"+org))
		if err != nil || !tok.Cached {
			t.Fatalf("0192:%s: %v, cached %v; want the cached token of %s", org, err, tok != nil && tok.Cached, org)
		}
	}
	if n := src.calls.Load(); n != 5 {
		t.Errorf("%d fetches, want 5", n)
	}
}

func TestScopeNotAllowedMakesNoCall(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	b, _ := newBroker(t, src)
	r := req("310904473")
	r.Scopes = []string{scope, "forbidden:scope"}
	_, err := b.GetToken(context.Background(), r)
	if !errors.Is(err, broker.ErrScopeNotAllowed) || !strings.Contains(err.Error(), `"forbidden:scope"`) {
		t.Fatalf("error = %v, want ErrScopeNotAllowed naming the scope", err)
	}
	if n := src.calls.Load(); n != 0 {
		t.Errorf("%d upstream calls, want 0", n)
	}
}

func TestCacheKey(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	b, _ := newBroker(t, src)
	ctx := context.Background()
	get := func(r broker.Request) *broker.Token {
		t.Helper()
		tok, err := b.GetToken(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	base := broker.Request{CustomerOrg: "310904473", Scopes: []string{scope, "other:scope"}}
	if tok := get(base); tok.Cached {
		t.Error("first call served from cache")
	}
	same := base
	same.Scopes = []string{"other:scope", scope, scope}
	same.Client = "demo"
	if tok := get(same); !tok.Cached {
		t.Error("reordered, duplicated scopes missed the cache")
	}
	variants := []func(r *broker.Request){
		func(r *broker.Request) { r.Scopes = []string{scope} },
		func(r *broker.Request) { r.CustomerOrg = "314250052" },
		func(r *broker.Request) { r.ExternalRef = "tenant-1" },
		func(r *broker.Request) { r.Resource = "https://api.example/" },
	}
	for i, v := range variants {
		r := base
		v(&r)
		if tok := get(r); tok.Cached {
			t.Errorf("variant %d served another key's token", i)
		}
		if tok := get(r); !tok.Cached {
			t.Errorf("variant %d: second call missed the cache", i)
		}
	}
	if n := src.calls.Load(); n != 5 {
		t.Errorf("%d fetches, want 5", n)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if got := strings.Join(src.reqs[0].Scopes, " "); got != "altinn:systembruker.demo other:scope" {
		t.Errorf("scopes sent upstream = %q, want sorted", got)
	}
}

func TestSingleFlight(t *testing.T) {
	t.Parallel()
	src := &fakeSource{gate: make(chan struct{})}
	b, _ := newBroker(t, src)
	const callers = 200
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	var ready sync.WaitGroup
	ready.Add(callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			_, err := b.GetToken(context.Background(), req("310904473"))
			errs <- err
		}()
	}
	ready.Wait()
	// Every caller has missed the cache (and so joins the one flight, which
	// cannot finish before the gate opens) before the gate opens.
	waitFor(t, "every caller to miss the cache", func() bool { return b.Health().Misses == callers })
	close(src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("%d fetches for %d concurrent callers, want 1", n, callers)
	}
}

func TestSlowKeyDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	slow := &fakeSource{gate: gate, gateOrg: "310904473", started: make(chan struct{}, 2)}
	b, _ := newBroker(t, slow)
	done := make(chan error, 1)
	go func() {
		_, err := b.GetToken(context.Background(), req("310904473"))
		done <- err
	}()
	// A call that ends before its fetch starts fails the test, not hangs it.
	select {
	case <-slow.started:
	case err := <-done:
		t.Fatalf("org A ended before its fetch started: %v", err)
	}
	// Org A's fetch hangs; org B must still be fetched and served.
	tok, err := b.GetToken(context.Background(), req("314250052"))
	if err != nil || tok.CustomerOrg != "314250052" {
		t.Fatalf("org B: %v", err)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatalf("org A: %v", err)
	}
}

func TestMinValidity(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	b, clk := newBroker(t, src)
	ctx := context.Background()
	if _, err := b.GetToken(ctx, req("310904473")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(80 * time.Second) // 40s left: the default 30s still holds
	if tok, err := b.GetToken(ctx, req("310904473")); err != nil || !tok.Cached {
		t.Fatalf("40s left: %v, want a cache hit", err)
	}
	r := req("310904473")
	r.MinValidity = 60 * time.Second
	// The refresh ahead that the call at 40 s left started may already
	// have stored the fresh token, so it may come from the cache; what
	// matters is that it lives long enough.
	tok, err := b.GetToken(ctx, r)
	if err != nil {
		t.Fatalf("min_validity 60s with 40s left: %v, want a fresh token", err)
	}
	if left := tok.ExpiresAt.Sub(clk.Now()); left < 60*time.Second {
		t.Errorf("token lives %v, want at least 60s", left)
	}
	clk.Advance(100 * time.Second) // 20s left
	if tok, err := b.GetToken(ctx, req("310904473")); err != nil || tok.Cached {
		t.Fatalf("20s left: %v, want a fresh token under the 30s default", err)
	}
	if n := src.calls.Load(); n != 3 {
		t.Errorf("%d fetches, want 3", n)
	}
	r.MinValidity = 10 * time.Minute
	if _, err := b.GetToken(ctx, r); !errors.Is(err, broker.ErrMinValidityTooLong) {
		t.Fatalf("min_validity 10m for 2m tokens: %v, want ErrMinValidityTooLong", err)
	}
	if n := src.calls.Load(); n != 3 {
		t.Errorf("an impossible min_validity cost an upstream call (%d fetches)", n)
	}
}

func TestMinValidityFirstFetch(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	b, _ := newBroker(t, src)
	r := req("310904473")
	r.MinValidity = 5 * time.Minute
	if _, err := b.GetToken(context.Background(), r); !errors.Is(err, broker.ErrMinValidityTooLong) {
		t.Fatalf("error = %v, want ErrMinValidityTooLong", err)
	}
	if tok, err := b.GetToken(context.Background(), req("310904473")); err != nil || !tok.Cached {
		t.Fatalf("the token fetched for the refused call should serve others: %v", err)
	}
}

func TestCallerGivesUpFetchGoesOn(t *testing.T) {
	t.Parallel()
	src := &fakeSource{gate: make(chan struct{}), started: make(chan struct{}, 1)}
	b, _ := newBroker(t, src)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.GetToken(ctx, req("310904473"))
		errc <- err
	}()
	select {
	case <-src.started:
	case err := <-errc:
		t.Fatalf("the call ended before its fetch started: %v", err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
	close(src.gate)
	tok, err := b.GetToken(context.Background(), req("310904473"))
	if err != nil {
		t.Fatal(err)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("%d fetches, want 1 (the second caller joins or reuses the first fetch), token cached=%v", n, tok.Cached)
	}
}

func TestUpstreamErrorsAreNotCached(t *testing.T) {
	t.Parallel()
	src := &fakeSource{err: &maskinporten.Error{StatusCode: 500, Retryable: true}}
	b, _ := newBroker(t, src)
	for i := 0; i < 2; i++ {
		_, err := b.GetToken(context.Background(), req("310904473"))
		var me *maskinporten.Error
		if !errors.As(err, &me) || !strings.Contains(err.Error(), "310904473") {
			t.Fatalf("error = %v, want the *maskinporten.Error with the org", err)
		}
	}
	if n := src.calls.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

func TestPanickingSource(t *testing.T) {
	t.Parallel()
	b, _ := newBroker(t, &fakeSource{panic: true})
	if _, err := b.GetToken(context.Background(), req("310904473")); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("error = %v, want a panic turned into an error", err)
	}
}

func TestClientSelection(t *testing.T) {
	t.Parallel()
	a, c := &fakeSource{lifetime: time.Minute, now: time.Now}, &fakeSource{lifetime: time.Minute, now: time.Now}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), Clients: []broker.Client{
		{Name: "a", Scopes: []string{scope}, Source: a},
		{Name: "c", Scopes: []string{scope}, Source: c},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var fe *broker.FieldError
	if _, err := b.GetToken(context.Background(), req("310904473")); !errors.As(err, &fe) || fe.Field != "client" {
		t.Fatalf("no client with two configured: %v", err)
	}
	r := req("310904473")
	r.Client = "c"
	tok, err := b.GetToken(context.Background(), r)
	if err != nil || tok.Client != "c" || c.calls.Load() != 1 || a.calls.Load() != 0 {
		t.Fatalf("client c: %v; calls a=%d c=%d", err, a.calls.Load(), c.calls.Load())
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	src := &fakeSource{}
	for name, cfg := range map[string]broker.Config{
		"no_clients":     {},
		"no_name":        {Clients: []broker.Client{{Scopes: []string{scope}, Source: src}}},
		"duplicate_name": {Clients: []broker.Client{{Name: "a", Scopes: []string{scope}, Source: src}, {Name: "a", Scopes: []string{scope}, Source: src}}},
		"no_source":      {Clients: []broker.Client{{Name: "a", Scopes: []string{scope}}}},
		"no_scopes":      {Clients: []broker.Client{{Name: "a", Source: src}}},
		"bad_default":    {Clients: []broker.Client{{Name: "a", Scopes: []string{scope}, Source: src}}, DefaultMinValidity: 2 * time.Hour},
	} {
		if _, err := broker.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The broker reads the upstream's state through an optional interface; a
// method missing on either upstream would silently turn that off.
var (
	_ interface {
		Unavailable() error
		Recovering() bool
		HedgeDelay() time.Duration
		Hedging() bool
		OnRecovery(func())
	} = (*maskinporten.Client)(nil)
	_ interface {
		Unavailable() error
		Recovering() bool
		HedgeDelay() time.Duration
		Hedging() bool
		OnRecovery(func())
	} = (*altinn.Exchanger)(nil)
)
