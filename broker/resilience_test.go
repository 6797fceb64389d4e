package broker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/hedge"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const emuClientID = "client-1"

// emuEnv is a broker in front of the Maskinporten emulator, both on one
// settable clock.
type emuEnv struct {
	b   *broker.Broker
	emu *maskinportentest.Emulator
	clk *clock
	log *bytes.Buffer
	mu  *sync.Mutex
}

type emuOptions struct {
	broker      broker.Config
	breaker     *breaker.Breaker
	attempt     time.Duration // per-attempt timeout; 0 means 10 s, so that a loaded machine never turns a slow answer into a retry and an extra grant
	maxAttempts int
	emuNow      func() time.Time
	tokenTTL    time.Duration
	fastTokens  bool
	realClock   bool // the broker and emulator use time.Now
	noLeakCheck bool // for benchmarks that do not record
}

func newEmuEnv(t testing.TB, o emuOptions) *emuEnv {
	t.Helper()
	clk := &clock{t: time.Now().Truncate(time.Second)}
	now := clk.Now
	if o.realClock {
		now = time.Now
	}
	emuNow := o.emuNow
	if emuNow == nil {
		emuNow = now
	}
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{
		SigningKey: signertest.RSA(t, signertest.KeyB),
		Now:        emuNow,
		TokenTTL:   o.tokenTTL,
		FastTokens: o.fastTokens,
	})
	if !o.noLeakCheck {
		emu.Record()
	}
	key := signertest.Key(t, signertest.KeyA, "kid-a")
	pub, err := key.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.AddClient(maskinportentest.Client{ID: emuClientID, Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{scope, "other:scope"}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	for _, org := range append(orgs(100), "310904473", "314250052", "313775429") {
		emu.ApproveSystemUser(emuClientID, org, "")
	}
	if o.attempt == 0 {
		o.attempt = 10 * time.Second
	}
	if o.maxAttempts == 0 {
		o.maxAttempts = 3
	}
	mp, err := maskinporten.New(maskinporten.Config{
		ClientID:       emuClientID,
		Key:            key,
		Environment:    maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"},
		Now:            now,
		AttemptTimeout: o.attempt,
		// These tests count grants for the cache's behaviour; a machine
		// loaded enough to make an answer outlast the hedge delay would
		// add a hedge. Hedging is tested with the shipped defaults in
		// faults_test.go.
		Hedger: hedge.New(hedge.Config{Breaker: o.breaker, Budget: -1}),
		Retry:  maskinporten.RetryPolicy{MaxAttempts: o.maxAttempts, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	env := &emuEnv{emu: emu, clk: clk, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cfg := o.broker
	cfg.Clients = []broker.Client{{Name: "demo", Scopes: []string{scope, "other:scope"}, Source: mp,
		Exchanger: altinn.NewExchanger(srv.URL+maskinportentest.ExchangePath, nil)}}
	cfg.Now = now
	if cfg.Policy == nil {
		cfg.Policy = policy.AllowAll()
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = -1
	}
	cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{env.mu, env.log}, nil))
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	env.b = b
	if !o.noLeakCheck {
		t.Cleanup(func() {
			env.mu.Lock()
			defer env.mu.Unlock()
			emu.CheckNoLeaks(t, "broker log", env.log.String())
		})
	}
	return env
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// orgs returns n valid organisation numbers starting at 310000000.
func orgs(n int) []string {
	var out []string
	for i := 310000000; len(out) < n; i++ {
		s := fmt.Sprint(i)
		sum := 0
		for j, w := range []int{3, 2, 7, 6, 5, 4, 3, 2} {
			sum += int(s[j]-'0') * w
		}
		c := 11 - sum%11
		if c == 11 {
			c = 0
		}
		if c == 10 || int(s[8]-'0') != c {
			continue
		}
		out = append(out, s)
	}
	return out
}

// waitFor polls cond until it holds. It gives up only after a minute, far
// beyond any event a test waits for, so that a loaded machine makes a test
// slower, never failed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for give := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(give) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// failFirst answers the first n token requests with fn and lets the rest
// through.
func failFirst(n int64, fn func(w http.ResponseWriter, r *http.Request)) func(http.ResponseWriter, *http.Request) bool {
	var count atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) bool {
		if count.Add(1) > n {
			return false
		}
		fn(w, r)
		return true
	}
}

// hang answers nothing until the client gives up. It reads the body first:
// only then does the server notice a closed connection.
func hang(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	select {
	case <-r.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

func TestFaultInjection(t *testing.T) {
	t.Parallel()
	status := func(code int) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "fault", code) }
	}
	tests := []struct {
		name   string
		hook   func(http.ResponseWriter, *http.Request) bool
		ok     bool
		grants int64
	}{
		{"500_always", failFirst(100, status(500)), false, 3},
		{"503_once", failFirst(1, status(503)), true, 2},
		{"429_retry_after", failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(429)
		}), true, 2},
		{"hang_once", failFirst(1, hang), true, 2},
		{"dropped_connection", failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}), true, 2},
		{"garbage_body", failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, "{not json")
		}), true, 2},
		{"slow_answer", func(w http.ResponseWriter, r *http.Request) bool {
			time.Sleep(100 * time.Millisecond) // far within the attempt timeout, however loaded the machine
			return false
		}, true, 1},
		{"grant_used_before_once", failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"MP-012: Grant is used before"}`)
		}), true, 2},
		{"grant_expired_once", failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"MP-130: grant expired"}`)
		}), true, 2},
		{"permanent_error", failFirst(100, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"MP-110: invalid audience"}`)
		}), false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A hang costs one attempt timeout, so it is short; the slow
			// answer must stay far within it, however loaded the machine.
			attempt := time.Second
			if tc.name == "slow_answer" {
				attempt = time.Minute
			}
			env := newEmuEnv(t, emuOptions{attempt: attempt})
			var arrivals []time.Time
			var mu sync.Mutex
			env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				mu.Lock()
				arrivals = append(arrivals, time.Now())
				mu.Unlock()
				return tc.hook(w, r)
			})
			tok, err := env.b.GetToken(context.Background(), req("310904473"))
			if tc.ok && (err != nil || tok.AccessToken == "") {
				t.Fatalf("GetToken: %v, want a token", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("GetToken succeeded, want an error")
			}
			if n := env.emu.Requests(); n != tc.grants {
				t.Errorf("%d grants, want %d", n, tc.grants)
			}
			if tc.name == "429_retry_after" {
				mu.Lock()
				gap := arrivals[1].Sub(arrivals[0])
				mu.Unlock()
				if gap < time.Second-50*time.Millisecond {
					t.Errorf("retried %v after a 429 with Retry-After: 1", gap)
				}
			}
			if assertions := env.emu.Assertions(); len(assertions) > 1 && assertions[0] == assertions[1] {
				t.Error("a retry reused the grant")
			}
		})
	}
}

func TestNegativeCache(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{broker: broker.Config{NegativeTTL: 5 * time.Second}})
	ctx := context.Background()
	const unapproved = "889640782"
	for i := 0; i < 5; i++ {
		if _, err := env.b.GetToken(ctx, req(unapproved)); !errors.Is(err, maskinporten.ErrNoSystemUser) {
			t.Fatalf("call %d: %v, want ErrNoSystemUser", i, err)
		}
	}
	if n := env.emu.Requests(); n != 1 {
		t.Errorf("%d grants for 5 calls within the negative TTL, want 1", n)
	}
	env.emu.ApproveSystemUser(emuClientID, unapproved, "")
	env.clk.Advance(6 * time.Second)
	if _, err := env.b.GetToken(ctx, req(unapproved)); err != nil {
		t.Fatalf("after the negative TTL and approval: %v", err)
	}
	if n := env.emu.Requests(); n != 2 {
		t.Errorf("%d grants, want 2", n)
	}
}

func TestCircuitBreaker(t *testing.T) {
	t.Parallel()
	brk := breaker.New(breaker.Config{Failures: 3, OpenFor: time.Hour})
	env := newEmuEnv(t, emuOptions{breaker: brk})
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return true
	})
	ctx := context.Background()
	if _, err := env.b.GetToken(ctx, req("310904473")); err == nil {
		t.Fatal("first call succeeded")
	}
	if n := env.emu.Requests(); n != 3 || !brk.Open() {
		t.Fatalf("%d grants, breaker open %v; want 3 and open", n, brk.Open())
	}
	for _, org := range []string{"314250052", "313775429"} {
		_, err := env.b.GetToken(ctx, req(org))
		var me *maskinporten.Error
		if !errors.As(err, &me) || !me.CircuitOpen || !me.Retryable {
			t.Fatalf("call with the circuit open: %v, want a retryable CircuitOpen error", err)
		}
	}
	if n := env.emu.Requests(); n != 3 {
		t.Errorf("%d grants, want no more while the circuit is open", n)
	}
}

func TestServeThroughOutage(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	ctx := context.Background()
	first, err := env.b.GetToken(ctx, req("310904473"))
	if err != nil {
		t.Fatal(err)
	}
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return true
	})
	// 70 s in, the token is inside its refresh window (60 s margin): the
	// refresh fails, but the token still serves.
	env.clk.Advance(70 * time.Second)
	tok, err := env.b.GetToken(ctx, req("310904473"))
	if err != nil || !tok.Cached || tok.AccessToken != first.AccessToken {
		t.Fatalf("in the refresh window during an outage: %v, want the cached token", err)
	}
	waitFor(t, "the failed refresh", func() bool { return env.emu.Requests() >= 4 })
	tok, err = env.b.GetToken(ctx, req("310904473"))
	if err != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("after a failed refresh: %v, want the cached token", err)
	}
	// 100 s in, 20 s are left: less than the default min validity of 30 s.
	env.clk.Advance(30 * time.Second)
	if _, err := env.b.GetToken(ctx, req("310904473")); err == nil {
		t.Fatal("served a token living less than min_validity during an outage")
	}
	r := req("310904473")
	r.MinValidity = 10 * time.Second
	if tok, err := env.b.GetToken(ctx, r); err != nil || tok.ExpiresAt.Sub(env.clk.Now()) < 10*time.Second {
		t.Fatalf("with min_validity 10s and 20s left: %v", err)
	}
	env.clk.Advance(25 * time.Second) // expired
	r.MinValidity = time.Second
	if tok, err := env.b.GetToken(ctx, r); err == nil {
		t.Fatalf("served an expired token (expires %v, now %v)", tok.ExpiresAt, env.clk.Now())
	}
	env.emu.SetHook(nil)
	if _, err := env.b.GetToken(ctx, r); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestRefreshAhead(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	ctx := context.Background()
	first, err := env.b.GetToken(ctx, req("310904473"))
	if err != nil {
		t.Fatal(err)
	}
	env.clk.Advance(75 * time.Second) // 45 s left: due for refresh, still valid for the default 30 s
	tok, err := env.b.GetToken(ctx, req("310904473"))
	if err != nil || !tok.Cached || tok.AccessToken != first.AccessToken {
		t.Fatalf("in the refresh window: %v, cached %v; want the old token at once", err, tok != nil && tok.Cached)
	}
	waitFor(t, "the background refresh", func() bool { return env.emu.Issued() == 2 })
	waitFor(t, "the new token", func() bool {
		tok, err := env.b.GetToken(ctx, req("310904473"))
		return err == nil && tok.AccessToken != first.AccessToken
	})
	h := env.b.Health()
	if h.Misses != 1 || h.Refreshes != 1 {
		t.Errorf("misses %d refreshes %d, want 1 and 1: callers never waited on the refresh", h.Misses, h.Refreshes)
	}
}

func TestSweepRefreshesOnlyKeysInUse(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	ctx := context.Background()
	for _, org := range []string{"310904473", "314250052"} {
		if _, err := env.b.GetToken(ctx, req(org)); err != nil {
			t.Fatal(err)
		}
	}
	env.clk.Advance(10 * time.Second)
	// 310904473 is used again after its fetch; 314250052 is not.
	if _, err := env.b.GetToken(ctx, req("310904473")); err != nil {
		t.Fatal(err)
	}
	env.clk.Advance(60 * time.Second) // both past their refresh time
	// Sweep starts every refresh it decides on before it returns (each is
	// counted in flight at once): when none is left in flight, all are done.
	env.b.Sweep()
	waitFor(t, "the refreshes Sweep started", func() bool { return env.b.Health().InFlight == 0 })
	if n := env.emu.Issued(); n != 3 {
		t.Errorf("%d tokens issued, want 3: a key not used since its fetch was refreshed", n)
	}
}

func TestEviction(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{broker: broker.Config{IdleAfter: time.Minute, MaxEntries: 10}})
	ctx := context.Background()
	all := orgs(25)
	for _, org := range all {
		if _, err := env.b.GetToken(ctx, req(org)); err != nil {
			t.Fatal(err)
		}
		env.clk.Advance(time.Millisecond * 100)
	}
	h := env.b.Health()
	if h.Entries > 10 || h.Evictions < 15 {
		t.Errorf("entries %d evictions %d with a cap of 10 after 25 keys", h.Entries, h.Evictions)
	}
	// The most recent key survived.
	if tok, err := env.b.GetToken(ctx, req(all[24])); err != nil || !tok.Cached {
		t.Errorf("most recent key evicted: %v", err)
	}
	env.clk.Advance(2 * time.Minute)
	env.b.Sweep()
	if h := env.b.Health(); h.Entries != 0 {
		t.Errorf("%d entries after every key idled past idle_after", h.Entries)
	}
}

func TestIsolation(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{attempt: 10 * time.Second})
	gate := make(chan struct{})
	var blocked atomic.Bool
	blocked.Store(true) // let the warm-up through
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if blocked.CompareAndSwap(false, true) {
			select { // org A's grant hangs
			case <-gate:
			case <-time.After(10 * time.Second):
			}
		}
		return false
	})
	ctx := context.Background()
	// Warm org C, then block org A's fetch.
	if _, err := env.b.GetToken(ctx, req("313775429")); err != nil {
		t.Fatal(err)
	}
	blocked.Store(false)
	aDone := make(chan error, 1)
	go func() {
		_, err := env.b.GetToken(ctx, req("310904473"))
		aDone <- err
	}()
	waitFor(t, "org A's fetch to block", func() bool { return env.emu.Requests() == 2 })
	if tok, err := env.b.GetToken(ctx, req("314250052")); err != nil || tok.Cached {
		t.Fatalf("org B fetch while A blocks: %v", err)
	}
	if tok, err := env.b.GetToken(ctx, req("313775429")); err != nil || !tok.Cached {
		t.Fatalf("org C cache hit while A blocks: %v", err)
	}
	select {
	case err := <-aDone:
		t.Fatalf("org A finished early: %v", err)
	default:
	}
	close(gate)
	if err := <-aDone; err != nil {
		t.Fatalf("org A: %v", err)
	}
}

func TestCallerDeadlineGivesUnavailable(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{attempt: 5 * time.Second})
	gate := make(chan struct{})
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-gate:
		case <-r.Context().Done():
		}
		return true
	})
	defer close(gate)
	// The caller's context has a deadline but never ends: the answer can
	// only come from the broker's own timer, set before the deadline, never
	// from the context, however late the scheduler runs the test.
	ctx := deadlineOnly{Context: context.Background(), deadline: time.Now().Add(300 * time.Millisecond)}
	_, err := env.b.GetToken(ctx, req("310904473"))
	if !errors.Is(err, broker.ErrUpstreamSlow) {
		t.Fatalf("error = %v, want ErrUpstreamSlow", err)
	}
}

// deadlineOnly is a context with a deadline that is never done.
type deadlineOnly struct {
	context.Context
	deadline time.Time
}

func (d deadlineOnly) Deadline() (time.Time, bool) { return d.deadline, true }

func TestClockSkewReported(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	// The emulator's clock runs 20 s ahead of the broker's.
	skewed := newEmuEnv(t, emuOptions{emuNow: func() time.Time { return time.Now().Add(20 * time.Second) }})
	ctx := context.Background()
	for _, e := range []*emuEnv{env, skewed} {
		if _, err := e.b.GetToken(ctx, req("310904473")); err != nil {
			t.Fatal(err)
		}
		e.b.Sweep()
	}
	if h := env.b.Health().Clients["demo"]; !h.ClockSkewKnown || h.ClockSkewTooLarge {
		t.Errorf("in-step clocks: %+v", h)
	}
	h := skewed.b.Health().Clients["demo"]
	if !h.ClockSkewKnown || !h.ClockSkewTooLarge || h.ClockSkew < 15*time.Second || h.ClockSkew > 25*time.Second {
		t.Errorf("clock 20s ahead: %+v", h)
	}
	skewed.mu.Lock()
	logged := strings.Contains(skewed.log.String(), "local clock is off")
	skewed.mu.Unlock()
	if !logged {
		t.Error("skew not logged")
	}
}

func TestAltinnExchange(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	ctx := context.Background()
	r := req("310904473")
	r.Kind = broker.KindAltinn
	tok, err := env.b.GetToken(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	exp, _ := tokenClaims(tok.AccessToken)
	if tok.Kind != broker.KindAltinn || tok.Cached || !strings.Contains(decodePayload(tok.AccessToken), `"urn:altinn:orgNumber":"991825827"`) {
		t.Errorf("altinn token: kind %q cached %v claims %s", tok.Kind, tok.Cached, decodePayload(tok.AccessToken))
	}
	if d := exp.Sub(env.clk.Now()); d < 29*time.Minute || tok.ExpiresAt.Sub(env.clk.Now()) < 29*time.Minute {
		t.Errorf("altinn token lives %v, want its own 30 minutes", d)
	}
	// Cached by its own key; the Maskinporten token of the same key is
	// cached too, from the one grant.
	if again, err := env.b.GetToken(ctx, r); err != nil || !again.Cached || again.AccessToken != tok.AccessToken {
		t.Errorf("second altinn call: %v cached=%v", err, again != nil && again.Cached)
	}
	mp, err := env.b.GetToken(ctx, req("310904473"))
	if err != nil || !mp.Cached || mp.Kind != broker.KindMaskinporten || mp.AccessToken == tok.AccessToken {
		t.Errorf("maskinporten call after the exchange: %v cached=%v", err, mp != nil && mp.Cached)
	}
	if env.emu.Requests() != 1 || env.emu.Exchanges() != 1 {
		t.Errorf("%d grants and %d exchanges, want 1 and 1", env.emu.Requests(), env.emu.Exchanges())
	}
	// 130 s on, both have gone stale for Maskinporten's 120 s tokens, but the
	// Altinn token lives on by its own exp: still a cache hit.
	env.clk.Advance(130 * time.Second)
	if again, err := env.b.GetToken(ctx, r); err != nil || !again.Cached {
		t.Errorf("altinn token after the maskinporten token expired: %v", err)
	}
}

func TestAltinnRejectsRefetches(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	var rejected atomic.Bool
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == maskinportentest.ExchangePath && rejected.CompareAndSwap(false, true) {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	r := req("310904473")
	r.Kind = broker.KindAltinn
	if _, err := env.b.GetToken(context.Background(), r); err != nil {
		t.Fatalf("after one 401 from Altinn: %v", err)
	}
	if env.emu.Requests() != 2 || env.emu.Exchanges() != 1 {
		t.Errorf("%d grants and %d exchanges, want 2 (a fresh token after the 401) and 1", env.emu.Requests(), env.emu.Exchanges())
	}
}

func decodePayload(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	return string(b)
}
