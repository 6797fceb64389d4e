package broker_test

// Fault injection with the shipped defaults (issue 14): every fault runs
// against a broker built as `tokenbroker serve` builds it, with the default
// transport, attempt timeout, retry policy, hedging, breaker, grant rate and
// sweep interval. Only token lifetimes are shortened. Tests wait on events
// (answers, the breaker's state, the emulator's counters), never on a
// clock, and assert outcomes and grant counts, never a time.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
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

// defaultsEnv is a broker with the shipped defaults in front of the
// emulator, on real time.
type defaultsEnv struct {
	b      *broker.Broker
	emu    *maskinportentest.Emulator
	mp     *maskinporten.Client
	brk    *breaker.Breaker
	hedger *hedge.Hedger
	ex     *altinn.Exchanger
	log    *bytes.Buffer
	mu     *sync.Mutex
	minVal time.Duration // min_validity of call; 0: the default
}

type defaultsOptions struct {
	tokenTTL time.Duration // 0: the emulator's 120 s
	tokenURL string        // "" : the emulator's
	noHedge  bool          // hedging off (for the figure's control run)
	noLeak   bool          // benchmarks: no recording
}

func newDefaultsEnv(t testing.TB, o defaultsOptions) *defaultsEnv {
	t.Helper()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{
		SigningKey: signertest.RSA(t, signertest.KeyB),
		TokenTTL:   o.tokenTTL,
		FastTokens: true,
	})
	if !o.noLeak {
		emu.Record()
	}
	key := signertest.Key(t, signertest.KeyA, "kid-a")
	pub, _ := key.PublicJWK()
	if err := emu.AddClient(maskinportentest.Client{ID: emuClientID, Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{scope, "other:scope"}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	for _, org := range append(orgs(2000), "310904473", "314250052", "313775429") {
		emu.ApproveSystemUser(emuClientID, org, "")
	}
	tokenURL := o.tokenURL
	if tokenURL == "" {
		tokenURL = srv.URL + "/token"
	}
	// As buildBroker in cmd/tokenbroker wires them, all with defaults.
	brk := breaker.New(breaker.Config{})
	hc := hedge.Config{Breaker: brk}
	if o.noHedge {
		hc.Budget = -1
	}
	hedger := hedge.New(hc)
	httpClient := maskinporten.NewHTTPClient(maskinporten.TransportConfig{})
	fresh := maskinporten.NewHTTPClient(maskinporten.TransportConfig{FreshConnections: true})
	t.Cleanup(httpClient.CloseIdleConnections)
	mp, err := maskinporten.New(maskinporten.Config{
		ClientID:        emuClientID,
		Key:             key,
		Environment:     maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: tokenURL},
		HTTPClient:      httpClient,
		HedgeHTTPClient: fresh,
		Hedger:          hedger,
	})
	if err != nil {
		t.Fatal(err)
	}
	env := &defaultsEnv{emu: emu, mp: mp, brk: brk, hedger: hedger, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	if o.tokenTTL > 0 && o.tokenTTL < time.Minute {
		env.minVal = time.Second
	}
	ex := altinn.NewExchanger(srv.URL+maskinportentest.ExchangePath, httpClient)
	ex.HedgeHTTP = fresh
	env.ex = ex
	b, err := broker.New(broker.Config{
		Policy:  policy.AllowAll(),
		Clients: []broker.Client{{Name: "demo", Scopes: []string{scope, "other:scope"}, Source: mp, Exchanger: ex}},
		Logger:  slog.New(slog.NewTextHandler(lockedWriter{env.mu, env.log}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	env.b = b
	if !o.noLeak {
		t.Cleanup(func() {
			env.mu.Lock()
			defer env.mu.Unlock()
			emu.CheckNoLeaks(t, "broker log", env.log.String())
		})
	}
	return env
}

// call is GetToken with the 2 s deadline of the callers.
func (env *defaultsEnv) call(org string) (*broker.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := req(org)
	r.MinValidity = env.minVal
	return env.b.GetToken(ctx, r)
}

func circuitOpen(err error) bool {
	var me *maskinporten.Error
	return errors.As(err, &me) && me.CircuitOpen && me.Retryable && me.RetryAfter >= 0
}

// The upstream hangs (or never lets a connection complete): one caller
// calling again and again for one cold key. Each flight's attempt is
// hedged once and both are reported hung at the hedge delay; a caller
// arriving while the flight is stuck starts a new one instead of joining.
// The fifth hung attempt opens the breaker, which abandons every hung
// flight; from then on the caller gets UNAVAILABLE without a grant.
// Grants: 5 (3 flights: 2 + 2 + 1, the third one's hedge refused by the
// opened breaker).
func TestFaultHang(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{})
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Hang})
	hangUntilOpen(t, env, func() int64 { return env.emu.Requests() })
}

// The token endpoint's address swallows SYNs (a full accept queue): the
// dial never completes. A first caller, without a deadline: its first try
// is hedged (one hedge per fetch) and both dials are reported hung at the
// hedge delay, then fail at the connect timeout (3 s); its two retries are
// reported hung too, and it ends with the dials' timeout after 4 attempts.
// A second caller's first attempt is the fifth hung one and opens the
// breaker, which ends that fetch at once with UNAVAILABLE. Attempts: 5,
// none of which reaches a server.
func TestFaultBlackHole(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{tokenURL: "http://" + maskinportentest.BlackHole(t) + "/token"})
	_, err := env.b.GetToken(context.Background(), req("310904473"))
	var me *maskinporten.Error
	if !errors.As(err, &me) || me.CircuitOpen || !me.Retryable || me.StatusCode != 0 {
		t.Fatalf("GetToken through a black hole: %v, want a retryable transport error", err)
	}
	if s := env.hedger.Stats(); s.Attempts != 4 || s.Hedges != 1 {
		t.Errorf("%d attempts, %d of them hedges; want 4 and 1", s.Attempts, s.Hedges)
	}
	if _, err := env.call("314250052"); !circuitOpen(err) {
		t.Fatalf("second caller: %v, want the breaker open", err)
	}
	if s := env.hedger.Stats(); s.Attempts != 5 {
		t.Errorf("%d attempts, want 5", s.Attempts)
	}
	if n := env.emu.Requests(); n != 0 {
		t.Errorf("%d requests reached the emulator through a black hole", n)
	}
	before := env.hedger.Stats().Attempts
	if _, err := env.call("313775429"); !circuitOpen(err) {
		t.Errorf("call with the breaker open: %v", err)
	}
	if n := env.hedger.Stats().Attempts - before; n > 1 {
		t.Errorf("a refused call made %d attempts", n)
	}
}

func hangUntilOpen(t *testing.T, env *defaultsEnv, attempts func() int64) {
	t.Helper()
	var errs []error
	for len(errs) < 10 {
		_, err := env.call("310904473")
		if err == nil {
			t.Fatal("got a token from a hung upstream")
		}
		errs = append(errs, err)
		if circuitOpen(err) {
			break
		}
	}
	last := errs[len(errs)-1]
	if !circuitOpen(last) {
		t.Fatalf("the breaker never opened: %v", last)
	}
	for i, err := range errs[:len(errs)-1] {
		if !errors.Is(err, broker.ErrUpstreamSlow) {
			t.Errorf("call %d before the breaker opened: %v, want ErrUpstreamSlow", i, err)
		}
	}
	if n := attempts(); n != 5 || len(errs) != 3 {
		t.Errorf("%d attempts over %d calls until the breaker opened, want 5 over 3", n, len(errs))
	}
	// While it is open, a caller without a token gets UNAVAILABLE at once:
	// without a grant, or, if a probe happens to be due, after starting
	// the probe but without waiting for it.
	before := attempts()
	_, err := env.call("314250052")
	if !circuitOpen(err) {
		t.Errorf("call with the breaker open: %v", err)
	}
	if n := attempts() - before; n > 1 {
		t.Errorf("a refused call made %d grants", n)
	}
}

// A slow answer (above the hedge delay) to every other request, starting
// with the first: the hedge, on a fresh connection, answers first and
// wins; the slow attempt is cancelled and its connection closed, never
// reused. Grants: 2, tokens issued: 1 (plus a warm-up grant and a grant
// after the fault).
func TestFaultSlow(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{})
	var addrMu sync.Mutex
	var addrs []string // the client side of the connection of each grant
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/token" {
			addrMu.Lock()
			addrs = append(addrs, r.RemoteAddr)
			addrMu.Unlock()
		}
		return false
	})
	// A warm-up grant leaves a kept-alive connection in the pool.
	if _, err := env.call("313775429"); err != nil {
		t.Fatal(err)
	}
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Slow, Delay: time.Minute, SlowEvery: 2})
	tok, err := env.call("310904473")
	if err != nil {
		t.Fatalf("GetToken with a slow first attempt: %v", err)
	}
	if tok.AccessToken == "" || env.emu.Requests() != 3 || env.emu.Issued() != 2 {
		t.Errorf("%d grants, %d tokens; want 3 and 2 (with the warm-up)", env.emu.Requests(), env.emu.Issued())
	}
	if s := env.hedger.Stats(); s.Hedges != 1 || s.HedgeWins != 1 {
		t.Errorf("hedger %+v, want 1 hedge that won", s)
	}
	waitFor(t, "the slow attempt to be cancelled", func() bool { return env.emu.Held() == 0 })
	if env.brk.Open() {
		t.Error("one slow attempt opened the breaker")
	}
	// The slow attempt took the pooled connection; the hedge came on a new
	// one; the next grant does not reuse the connection that hung.
	env.emu.SetFault(maskinportentest.Fault{})
	if _, err := env.call("314250052"); err != nil {
		t.Fatal(err)
	}
	addrMu.Lock()
	defer addrMu.Unlock()
	if len(addrs) != 4 || addrs[1] != addrs[0] || addrs[2] == addrs[1] || addrs[3] == addrs[1] {
		t.Errorf("connections of warm-up, slow attempt, hedge, next grant: %v; want the slow attempt on the pooled one, the hedge and the next grant not on it", addrs)
	}
}

// Every other request fails with a 503: each of 10 keys gets its token on
// the retry. Grants: 20, the breaker stays closed.
func TestFaultFlapping(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{})
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Flap})
	for _, org := range orgs(10) {
		if _, err := env.call(org); err != nil {
			t.Fatalf("org %s: %v", org, err)
		}
	}
	// A hedge could go out only if the machine were so loaded that an
	// answer took longer than the hedge delay; it is counted apart.
	hedges := env.hedger.Stats().Hedges
	if n, issued := env.emu.Requests(), env.emu.Issued(); n != 20+hedges || issued < 10 || issued > 10+hedges {
		t.Errorf("%d grants, %d tokens, %d hedges; want 20 and 10 (plus the hedges)", n, issued, hedges)
	}
	if env.brk.Open() {
		t.Error("a flapping upstream opened the breaker")
	}
}

// A 429 storm with Retry-After: 1. The first key's fetch makes its 3
// attempts, each after the pause the previous 429 asked for; meanwhile the
// pause holds back the whole client, so a caller for another key gets
// UNAVAILABLE with the time left, without a grant. After the storm, one
// grant gets the token. Grants: 3 + 0 + 1.
func TestFault429Storm(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{})
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Throttle, RetryAfter: time.Second})
	_, err := env.b.GetToken(context.Background(), req("310904473"))
	var me *maskinporten.Error
	if !errors.As(err, &me) || me.StatusCode != http.StatusTooManyRequests || !me.Retryable {
		t.Fatalf("during the storm: %v, want a retryable 429", err)
	}
	if n := env.emu.Requests(); n != 3 {
		t.Fatalf("%d grants for one key during the storm, want 3", n)
	}
	_, err = env.call("314250052")
	if !errors.As(err, &me) || !me.Throttled || me.RetryAfter <= 0 {
		t.Fatalf("another key during the pause: %v, want the client's pause", err)
	}
	if n := env.emu.Requests(); n != 3 {
		t.Errorf("%d grants, want none more during the pause", n)
	}
	env.emu.SetFault(maskinportentest.Fault{})
	waitFor(t, "a token after the storm", func() bool {
		_, err := env.call("314250052")
		return err == nil
	})
	if n := env.emu.Requests(); n != 4 {
		t.Errorf("%d grants, want 4", n)
	}
}

// A hang that ends: 10 hot keys (callers keep using them) with 8 s tokens.
// Maskinporten hangs when their first refreshes are due; the breaker opens
// on the hung refreshes while every caller keeps its still-valid token.
// When the hang ends, the next probe closes the breaker and every key is
// refreshed at once. Outcome: no caller error while tokens were valid,
// every key fresh; grants: 10 warm-ups + the refreshes that hung (5 to 13:
// hedges included, within the budget's floor) + 10 fresh.
func TestFaultHangEnds(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{tokenTTL: 8 * time.Second})
	hot := orgs(10)
	first := map[string]string{}
	for _, org := range hot {
		tok, err := env.call(org)
		if err != nil {
			t.Fatal(err)
		}
		first[org] = tok.AccessToken
	}
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Hang})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var callErrs []error
	wg.Add(1)
	go func() { // callers keep the keys hot
		defer wg.Done()
		for {
			for _, org := range hot {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := env.call(org); err != nil {
					mu.Lock()
					callErrs = append(callErrs, err)
					mu.Unlock()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	waitFor(t, "the breaker to open on hung refreshes", env.brk.Open)
	hung := env.emu.Requests() - 10
	env.emu.SetFault(maskinportentest.Fault{})
	fresh := func() bool {
		for _, org := range hot {
			tok, err := env.call(org)
			if err != nil || tok.AccessToken == first[org] {
				return false
			}
		}
		return true
	}
	waitFor(t, "every hot key to hold a fresh token", fresh)
	close(stop)
	wg.Wait()
	if len(callErrs) > 0 {
		t.Errorf("%d calls failed while every key held a valid token, first: %v", len(callErrs), callErrs[0])
	}
	if issued, hedges := env.emu.Issued(), env.hedger.Stats().Hedges; issued < 20 || issued > 20+hedges {
		t.Errorf("%d tokens issued, want 20 (10 warm-ups, 10 refreshes; more only for hedges, %d)", issued, hedges)
	}
	// The 10 refreshes fall due within 5 % of the lifetime of each other,
	// so all may go out before the first is reported hung; the hedges
	// sent before the breaker opened are within the budget's floor.
	if hung < 5 || hung > 10+hedge.DefaultMinPerMinute {
		t.Errorf("%d grants hung before the breaker opened, want 5 to %d", hung, 10+hedge.DefaultMinPerMinute)
	}
	t.Logf("grants: 10 warm-ups, %d hung, %d in all", hung, env.emu.Requests())
}

// The Altinn exchange hangs once: it is hedged like a grant, and the
// hedge's answer wins. Grants: 1, exchange requests: 2, Altinn tokens: 1.
func TestFaultExchangeHang(t *testing.T) {
	t.Parallel()
	env := newDefaultsEnv(t, defaultsOptions{})
	var requests atomic.Int64
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != maskinportentest.ExchangePath || requests.Add(1) > 1 {
			return false
		}
		<-r.Context().Done() // a GET has no body: the server sees the client go
		return true
	})
	r := req("310904473")
	r.Kind = broker.KindAltinn
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := env.b.GetToken(ctx, r); err != nil {
		t.Fatalf("Altinn token with a hung exchange: %v", err)
	}
	if g, x, n := env.emu.Requests(), requests.Load(), env.emu.Exchanges(); g != 1 || x != 2 || n != 1 {
		t.Errorf("%d grants, %d exchange requests, %d Altinn tokens; want 1, 2, 1", g, x, n)
	}
	if s := env.ex.Hedger.Stats(); s.Hedges != 1 || s.HedgeWins != 1 {
		t.Errorf("exchange hedger %+v, want 1 hedge that won", s)
	}
}
