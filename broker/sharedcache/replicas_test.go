package sharedcache_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
	"github.com/tokenbroker/tokenbroker/server/logtest"
	"github.com/tokenbroker/tokenbroker/server/metrics"
)

const scope = "altinn:systembruker.demo"

// upstream stands for Maskinporten, shared by all replicas: it counts
// grants and hands out JWT-shaped tokens that carry the org number, so
// that a scan of Redis would see one in clear.
type upstream struct {
	lifetime time.Duration
	grants   atomic.Int64
	refused  map[string]bool // orgs answered with MP-303
	// started, when not nil, receives once per grant; gate, when not nil,
	// holds each grant until it closes.
	started chan struct{}
	gate    chan struct{}
	// down makes the upstream report itself unavailable (its breaker
	// open), as *maskinporten.Client does.
	down atomic.Bool

	mu  sync.Mutex
	per map[string]int
}

func (u *upstream) Token(ctx context.Context, r maskinporten.Request) (*maskinporten.Token, error) {
	n := u.grants.Add(1)
	u.mu.Lock()
	if u.per == nil {
		u.per = map[string]int{}
	}
	u.per[r.CustomerOrg]++
	u.mu.Unlock()
	if u.started != nil {
		u.started <- struct{}{}
	}
	if u.gate != nil {
		select {
		case <-u.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if u.refused[r.CustomerOrg] {
		return nil, &maskinporten.Error{StatusCode: 400, Code: "invalid_grant", MPCode: "MP-303",
			Description: "MP-303: no system user found"}
	}
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"consumer": r.CustomerOrg, "jti": n, "exp": now.Add(u.lifetime).Unix()})
	enc := base64.RawURLEncoding.EncodeToString
	return &maskinporten.Token{
		AccessToken: enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(claims) + ".c2lnbmF0dXJl",
		TokenType:   "Bearer", Scopes: r.Scopes, IssuedAt: now, ExpiresAt: now.Add(u.lifetime),
		JWTID: fmt.Sprintf("jti-%d", n),
	}, nil
}

// Unavailable, Recovering, HedgeDelay, Hedging and OnRecovery report the
// upstream's state to the broker, as *maskinporten.Client does.
func (u *upstream) Unavailable() error {
	if u.down.Load() {
		return &maskinporten.Error{Description: "circuit open", Retryable: true, CircuitOpen: true}
	}
	return nil
}
func (u *upstream) Recovering() bool                      { return false }
func (u *upstream) HedgeDelay() time.Duration             { return time.Second }
func (u *upstream) Hedging() bool                         { return false }
func (u *upstream) OnRecovery(func())                     {}
func (u *upstream) KeyID() string                         { return "kid-1" }
func (u *upstream) Environment() maskinporten.Environment { return maskinporten.Test }

var secret1 = []byte("0123456789abcdef0123456789abcdef-one")
var secret2 = []byte("0123456789abcdef0123456789abcdef-two")

// replica is one broker with its own in-process cache and, when rs is not
// nil, the shared level on it.
type replica struct {
	b     *broker.Broker
	cache *sharedcache.Cache
	logs  *logtest.Buffer // the broker's and the shared level's log lines
}

func newReplica(t testing.TB, up *upstream, rs *sharedcachetest.Server, mod func(*broker.Config)) *replica {
	t.Helper()
	r := &replica{logs: &logtest.Buffer{}}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := broker.Config{
		Logger:          log,
		Policy:          policy.AllowAll(),
		Clients:         []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: up}},
		RefreshMargin:   time.Millisecond,
		RefreshFraction: 0.1,
		SweepInterval:   50 * time.Millisecond,
	}
	if rs != nil {
		c, err := sharedcache.New(sharedcache.Config{Client: rs.Client(t), Keys: []sharedcache.Key{{ID: "k1", Secret: secret1}},
			RetryEvery: 50 * time.Millisecond, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		r.cache = c
		cfg.Shared = c
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	r.b = b
	return r
}

func orgs(n int) []string {
	// Valid org numbers: eight digits and the mod-11 check digit.
	var out []string
	for base := 31090000; len(out) < n; base++ {
		d := fmt.Sprint(base)
		w := []int{3, 2, 7, 6, 5, 4, 3, 2}
		s := 0
		for i := range 8 {
			s += int(d[i]-'0') * w[i]
		}
		c := 11 - s%11
		if c == 11 {
			c = 0
		}
		if c == 10 {
			continue
		}
		out = append(out, d+fmt.Sprint(c))
	}
	return out
}

func req(org string, minValidity time.Duration) broker.Request {
	return broker.Request{CustomerOrg: org, Scopes: []string{scope}, MinValidity: minValidity}
}

// checkToken fails when tok, served by a call that started at start, is
// not for org or did not live minValidity when the broker chose it (at or
// after start, so its expiry is at least start + minValidity).
func checkToken(tok *broker.Token, org string, minValidity time.Duration, start time.Time) error {
	if left := tok.ExpiresAt.Sub(start); left < minValidity {
		return fmt.Errorf("org %s: token served with less than %v left, below min_validity %v", org, left, minValidity)
	}
	parts := strings.Split(tok.AccessToken, ".")
	var claims struct {
		Consumer string `json:"consumer"`
	}
	if len(parts) != 3 {
		return fmt.Errorf("org %s: not a JWT", org)
	}
	if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err != nil || json.Unmarshal(b, &claims) != nil || claims.Consumer != org {
		return fmt.Errorf("org %s: token of another key served (%q)", org, claims.Consumer)
	}
	return nil
}

// 3 replicas, 1,000 concurrent callers on one cold key: one grant.
func TestSharedColdKeyStampede(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: time.Minute}
	reps := []*replica{newReplica(t, up, rs, nil), newReplica(t, up, rs, nil), newReplica(t, up, rs, nil)}
	const callers = 1000
	var wg sync.WaitGroup
	start := make(chan struct{})
	var fails atomic.Int64
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := reps[i%3].b.GetToken(context.Background(), req("310904473", 10*time.Second)); err != nil {
				fails.Add(1)
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if fails.Load() != 0 || up.grants.Load() != 1 {
		t.Fatalf("%d failures, %d grants for %d callers on 3 replicas; want 0 and 1", fails.Load(), up.grants.Load(), callers)
	}
	t.Logf("FIGURE shared_stampede_cold_key replicas=3 callers=%d grants=%d", callers, up.grants.Load())
}

// run calls GetToken from workers spread over reps until stop closes,
// checking every token; it returns the number of calls and of failures.
func run(t *testing.T, reps func() []*replica, keys []string, minValidity time.Duration, stop <-chan struct{}, workers int) (calls, fails *atomic.Int64, done *sync.WaitGroup) {
	calls, fails, done = &atomic.Int64{}, &atomic.Int64{}, &sync.WaitGroup{}
	for w := range workers {
		done.Add(1)
		go func() {
			defer done.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				rr := reps()
				r := rr[rng.IntN(len(rr))]
				org := keys[rng.IntN(len(keys))]
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				start := time.Now()
				tok, err := r.b.GetToken(ctx, req(org, minValidity))
				cancel()
				calls.Add(1)
				if err == nil {
					err = checkToken(tok, org, minValidity, start)
				}
				if err != nil {
					fails.Add(1)
					t.Error(err)
				}
				time.Sleep(time.Millisecond) // pace the callers; not a wait for an outcome
			}
		}()
	}
	return calls, fails, done
}

// 100 orgs over 3 token lifetimes with callers on every replica: with the
// shared level, 3 replicas need no more grants than one replica alone
// (100 x 3 + 100). The same run without it is the figure to compare.
func TestSharedLifetimes(t *testing.T) {
	t.Parallel()
	const (
		orgCount  = 100
		lifetimes = 3
		lifetime  = 2 * time.Second
	)
	for _, tc := range []struct {
		name     string
		replicas int
		shared   bool
	}{{"1_replica", 1, false}, {"3_replicas_own_caches", 3, false}, {"3_replicas_shared", 3, true}} {
		t.Run(tc.name, func(t *testing.T) {
			var rs *sharedcachetest.Server
			if tc.shared {
				rs = sharedcachetest.Start(t)
			}
			up := &upstream{lifetime: lifetime}
			var reps []*replica
			for range tc.replicas {
				reps = append(reps, newReplica(t, up, rs, nil))
			}
			stop := make(chan struct{})
			all := orgs(orgCount)
			calls, fails, done := run(t, func() []*replica { return reps }, all, 200*time.Millisecond, stop, 12)
			deadline := time.NewTimer(lifetimes * lifetime)
			<-deadline.C
			close(stop)
			done.Wait()
			grants := up.grants.Load()
			perKey := float64(grants) / float64(orgCount*lifetimes)
			t.Logf("FIGURE shared_lifetimes case=%s replicas=%d shared=%v orgs=%d lifetimes=%d calls=%d fails=%d grants=%d grants_per_key_per_lifetime=%.2f bound=%d",
				tc.name, tc.replicas, tc.shared, orgCount, lifetimes, calls.Load(), fails.Load(), grants, perKey, orgCount*lifetimes+orgCount)
			if fails.Load() != 0 {
				t.Fatalf("%d of %d calls failed", fails.Load(), calls.Load())
			}
			if (tc.shared || tc.replicas == 1) && grants > orgCount*lifetimes+orgCount {
				t.Fatalf("%d grants for %d orgs over %d lifetimes on %d replicas; want at most %d",
					grants, orgCount, lifetimes, tc.replicas, orgCount*lifetimes+orgCount)
			}
		})
	}
}

// A replica killed and restarted while callers run on the others: no grant
// for the keys they hold, and its first calls are served from Redis.
func TestSharedReplicaRestart(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: 10 * time.Minute}
	reps := []*replica{newReplica(t, up, rs, nil), newReplica(t, up, rs, nil), newReplica(t, up, rs, nil)}
	keys := orgs(20)
	for _, org := range keys {
		if _, err := reps[0].b.GetToken(context.Background(), req(org, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	before := up.grants.Load()
	var mu sync.Mutex
	current := reps
	stop := make(chan struct{})
	calls, fails, done := run(t, func() []*replica { mu.Lock(); defer mu.Unlock(); return current[:2] }, keys, time.Minute, stop, 8)

	reps[2].b.Close()
	reps[2].cache.Close()
	fresh := newReplica(t, up, rs, nil)
	mu.Lock()
	current = []*replica{reps[0], reps[1], fresh}
	mu.Unlock()
	for _, org := range keys {
		tok, err := fresh.b.GetToken(context.Background(), req(org, time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if !tok.Cached {
			t.Errorf("org %s: the restarted replica's first call was not served from the shared cache", org)
		}
	}
	close(stop)
	done.Wait()
	h := fresh.b.Health().Shared
	t.Logf("FIGURE shared_restart keys=%d grants_before=%d grants_after=%d restarted_shared_hits=%d calls_meanwhile=%d fails=%d",
		len(keys), before, up.grants.Load(), h.Hits, calls.Load(), fails.Load())
	if up.grants.Load() != before || h.Hits != int64(len(keys)) || fails.Load() != 0 {
		t.Fatalf("grants %d -> %d, shared hits %d for %d keys, %d failed calls; want no new grant, a hit per key, no failure",
			before, up.grants.Load(), h.Hits, len(keys), fails.Load())
	}
}

// A permanent refusal learned by one replica serves the others for its
// short TTL: one grant for three replicas.
func TestSharedNegative(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: time.Minute, refused: map[string]bool{"310904473": true}}
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, up, rs, func(c *broker.Config) { c.NegativeTTL = time.Minute }))
	}
	for i, r := range reps {
		_, err := r.b.GetToken(context.Background(), req("310904473", time.Second))
		if !errors.Is(err, maskinporten.ErrNoSystemUser) {
			t.Fatalf("replica %d: %v; want ErrNoSystemUser", i, err)
		}
	}
	if up.grants.Load() != 1 {
		t.Fatalf("%d grants for a refusal asked on 3 replicas; want 1", up.grants.Load())
	}
}

// Redis stopped mid-run and started again: no call fails, the fallback and
// the return show in the health the metric reads, and no token is served
// past its expiry or below min_validity (run checks every one).
func TestSharedRedisOutage(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: 2 * time.Second}
	reps := []*replica{newReplica(t, up, rs, nil), newReplica(t, up, rs, nil), newReplica(t, up, rs, nil)}
	keys := orgs(20)
	stop := make(chan struct{})
	calls, fails, done := run(t, func() []*replica { return reps }, keys, 200*time.Millisecond, stop, 9)
	waitFor(t, "calls before the outage", func() bool { return calls.Load() > 500 })

	rs.Stop()
	t.Logf("redis stopped at %s", time.Now().Format("15:04:05.000"))
	atStop := calls.Load()
	waitFor(t, "every replica to fall back", func() bool {
		for _, r := range reps {
			if r.b.Health().Shared.Up {
				return false
			}
		}
		return true
	})
	// Calls go on for a token lifetime and more while Redis is away.
	grantsDown := up.grants.Load()
	waitFor(t, "refreshes without Redis", func() bool { return up.grants.Load() > grantsDown+int64(len(keys)) })
	duringOutage := calls.Load() - atStop

	rs.Start()
	t.Logf("redis started at %s", time.Now().Format("15:04:05.000"))
	waitFor(t, "every replica to share again", func() bool {
		for _, r := range reps {
			if h := r.b.Health().Shared; !h.Up || h.Returns == 0 {
				return false
			}
		}
		return true
	})
	hitsBack := sharedHits(reps)
	waitFor(t, "hits from Redis after its return", func() bool { return sharedHits(reps) > hitsBack })
	close(stop)
	done.Wait()
	var fallbacks, outages, returns int64
	for _, r := range reps {
		h := r.b.Health().Shared
		fallbacks += h.Fallbacks
		outages += h.Outages
		returns += h.Returns
	}
	t.Logf("FIGURE shared_redis_outage calls=%d calls_during_outage=%d failed=%d fallbacks=%d outages=%d returns=%d",
		calls.Load(), duringOutage, fails.Load(), fallbacks, outages, returns)
	if fails.Load() != 0 {
		t.Fatalf("%d of %d calls failed across a Redis outage; want 0", fails.Load(), calls.Load())
	}
	// The metric shows the fallback and the return.
	m := metrics.New()
	m.ObserveBroker(reps[0].b)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	scrape := rec.Body.String()
	for _, re := range []string{`tokenbroker_shared_cache_up 1\n`, `tokenbroker_shared_cache_events_total\{event="outage"\} [1-9]`,
		`tokenbroker_shared_cache_events_total\{event="return"\} [1-9]`, `tokenbroker_shared_cache_events_total\{event="fallback"\} [1-9]`} {
		if !regexp.MustCompile(re).MatchString(scrape) {
			t.Errorf("metrics lack %s", re)
		}
	}
	// Logged once per outage and return, and never a token.
	for i, r := range reps {
		logs := r.logs.String()
		h := r.b.Health().Shared
		if n := strings.Count(logs, "shared cache (Redis) failing"); int64(n) != h.Outages {
			t.Errorf("replica %d: %d log lines for %d outages", i, n, h.Outages)
		}
		if n := strings.Count(logs, "shared cache (Redis) back"); int64(n) != h.Returns {
			t.Errorf("replica %d: %d log lines for %d returns", i, n, h.Returns)
		}
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "Redis") {
				t.Log(l)
			}
		}
		if strings.Contains(logs, "eyJ") {
			t.Errorf("replica %d logged a token", i)
		}
	}
}

// Redis that hangs (the process stopped: connections open, no answer) is
// a failure too: each replica gives up on it after its command timeout and
// serves from its own cache; no call fails, and sharing resumes when Redis
// answers again.
func TestSharedRedisHangs(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: 2 * time.Second}
	reps := []*replica{newReplica(t, up, rs, nil), newReplica(t, up, rs, nil), newReplica(t, up, rs, nil)}
	keys := orgs(20)
	stop := make(chan struct{})
	calls, fails, done := run(t, func() []*replica { return reps }, keys, 200*time.Millisecond, stop, 9)
	waitFor(t, "calls before the hang", func() bool { return calls.Load() > 500 })
	rs.Pause()
	waitFor(t, "every replica to fall back", func() bool {
		for _, r := range reps {
			if r.b.Health().Shared.Up {
				return false
			}
		}
		return true
	})
	grantsDown := up.grants.Load()
	waitFor(t, "refreshes without Redis", func() bool { return up.grants.Load() > grantsDown+int64(len(keys)) })
	rs.Resume()
	waitFor(t, "every replica to share again", func() bool {
		for _, r := range reps {
			if h := r.b.Health().Shared; !h.Up || h.Returns == 0 {
				return false
			}
		}
		return true
	})
	close(stop)
	done.Wait()
	t.Logf("FIGURE shared_redis_hang calls=%d failed=%d", calls.Load(), fails.Load())
	if fails.Load() != 0 {
		t.Fatalf("%d of %d calls failed while Redis hung; want 0", fails.Load(), calls.Load())
	}
}

func sharedHits(reps []*replica) int64 {
	var n int64
	for _, r := range reps {
		n += r.b.Health().Shared.Hits
	}
	return n
}

// waitFor polls cond until it holds, failing after a generous bound (a
// hang, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Figure: the latency of a call served from Redis (a cold replica: its own
// cache misses, Redis has the token) against one served from the replica's
// own cache. Nothing is asserted about time; the figure is logged.
func TestFigureSharedHitLatency(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: 10 * time.Minute}
	warm := newReplica(t, up, rs, nil)
	keys := orgs(500)
	for _, org := range keys {
		if _, err := warm.b.GetToken(context.Background(), req(org, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	cold := newReplica(t, up, rs, nil)
	grants := up.grants.Load()
	var redisHit, localHit []time.Duration
	for _, org := range keys {
		for i, into := range []*[]time.Duration{&redisHit, &localHit} {
			start := time.Now()
			tok, err := cold.b.GetToken(context.Background(), req(org, time.Minute))
			*into = append(*into, time.Since(start))
			if err != nil || !tok.Cached {
				t.Fatalf("call %d for org %s: cached %v, %v", i, org, tok != nil && tok.Cached, err)
			}
		}
	}
	if up.grants.Load() != grants {
		t.Fatalf("%d grants for tokens Redis holds", up.grants.Load()-grants)
	}
	pct := func(d []time.Duration, p float64) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[int(p*float64(len(s)-1))]
	}
	r50, r99, l50, l99 := pct(redisHit, .5), pct(redisHit, .99), pct(localHit, .5), pct(localHit, .99)
	t.Logf("FIGURE shared_hit_latency calls=%d redis_p50=%v redis_p99=%v inprocess_p50=%v inprocess_p99=%v ratio_p50=%.0f ratio_p99=%.0f",
		len(keys), r50, r99, l50, l99, float64(r50)/float64(l50), float64(r99)/float64(l99))
}

// A replica that died holding a key's lock delays the others only until
// the lock expires; then one of them fetches. A replica whose lock expired
// and was taken by another does not delete the other's lock when it is
// done (the fencing value).
func TestSharedLockTakeoverAndFencing(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	raw := rs.Raw(t)
	ctx := context.Background()
	up := &upstream{lifetime: time.Minute}
	r := newReplica(t, up, rs, nil)
	org := orgs(1)[0]
	_, lock := sharedcache.Names(r.cache, sharedKeyFor(org))

	// A dead replica's lock, with the expiry it set.
	if err := raw.Set(ctx, lock, "fence-of-a-dead-replica", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.b.GetToken(ctx, req(org, time.Second)); err != nil {
		t.Fatal(err)
	}
	if up.grants.Load() != 1 || r.b.Health().Shared.Waits != 1 {
		t.Fatalf("%d grants, %d waits; want the replica to wait for the dead lock, then fetch once", up.grants.Load(), r.b.Health().Shared.Waits)
	}

	// Fencing: while this replica fetches, its lock is replaced by
	// another's (as after an expiry); finishing must leave that one.
	org2 := orgs(2)[1]
	_, lock2 := sharedcache.Names(r.cache, sharedKeyFor(org2))
	up.started, up.gate = make(chan struct{}, 1), make(chan struct{})
	got := make(chan error, 1)
	go func() {
		_, err := r.b.GetToken(ctx, req(org2, time.Second))
		got <- err
	}()
	<-up.started
	if err := raw.Set(ctx, lock2, "fence-of-another-replica", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	close(up.gate)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if v, err := raw.Get(ctx, lock2).Result(); err != nil || v != "fence-of-another-replica" {
		t.Fatalf("the other replica's lock after this one finished: %q, %v; want it kept", v, err)
	}
}

// While Maskinporten is known to be down, a replica that does not hold a
// key serves the token another replica stored in Redis, instead of failing
// at once; a key Redis does not hold fails as before.
func TestSharedServesThroughUpstreamOutage(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	up := &upstream{lifetime: time.Minute}
	a := newReplica(t, up, rs, nil)
	keys := orgs(2)
	if _, err := a.b.GetToken(context.Background(), req(keys[0], 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	up.down.Store(true)
	b := newReplica(t, up, rs, nil)
	start := time.Now()
	tok, err := b.b.GetToken(context.Background(), req(keys[0], 10*time.Second))
	if err == nil {
		err = checkToken(tok, keys[0], 10*time.Second, start)
	}
	if err != nil || !tok.Cached {
		t.Fatalf("during the outage, a token Redis holds: %v; want it, cached", err)
	}
	if _, err := b.b.GetToken(context.Background(), req(keys[1], 10*time.Second)); err == nil {
		t.Fatal("during the outage, a key nobody holds got a token")
	}
	if up.grants.Load() != 1 {
		t.Fatalf("%d grants; want 1 (before the outage)", up.grants.Load())
	}
}
