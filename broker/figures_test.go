package broker_test

// The figures of BENCHMARKS.md. The tests check what must hold (grant
// counts, no expired token, no caller waiting) and log the measured
// figures; scripts/bench.sh runs them and the benchmarks and collects the
// lines starting with "FIGURE".

import (
	"context"
	"crypto"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// Figure 3a: 1,000 concurrent callers on a cold key make exactly one grant.
func TestFigureStampedeColdKey(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	const callers = 1000
	var wg sync.WaitGroup
	start := make(chan struct{})
	var fails atomic.Int64
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := env.b.GetToken(context.Background(), req("310904473")); err != nil {
				fails.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if fails.Load() != 0 || env.emu.Requests() != 1 {
		t.Fatalf("%d failures, %d grants for %d concurrent callers; want 0 and 1", fails.Load(), env.emu.Requests(), callers)
	}
	t.Logf("FIGURE stampede_cold_key callers=%d grants=%d", callers, env.emu.Requests())
}

// Figure 3b: 10,000 calls over 100 orgs across 3 token lifetimes. Every call
// after an org's first is a cache hit, and the grants stay within
// 100 x lifetimes + 1 per org. Time is simulated (600 s tokens, as
// Maskinporten's usual 599 s), so the run takes seconds.
func TestFigureStampedeLifetimes(t *testing.T) {
	t.Parallel()
	const (
		orgCount  = 100
		calls     = 10_000
		lifetimes = 3
		ttl       = 600 * time.Second
		step      = 5 * time.Second
	)
	env := newEmuEnv(t, emuOptions{
		tokenTTL: ttl,
		broker:   broker.Config{RefreshMargin: 30 * time.Second, RefreshFraction: 0.15},
	})
	all := orgs(orgCount)
	rng := rand.New(rand.NewPCG(1, 2))
	steps := int(lifetimes * ttl / step)
	seen := map[string]bool{}
	var waited, firstFetches, failures atomic.Int64
	done := 0
	for s := 0; s < steps; s++ {
		n := calls/steps + boolInt(s < calls%steps)
		var wg sync.WaitGroup
		batch := make([]string, n)
		for i := range batch {
			batch[i] = all[rng.IntN(orgCount)]
		}
		first := map[string]bool{}
		for _, org := range batch {
			if !seen[org] {
				seen[org], first[org] = true, true
			}
		}
		for _, org := range batch {
			wg.Add(1)
			go func(org string, first bool) {
				defer wg.Done()
				tok, err := env.b.GetToken(context.Background(), req(org))
				switch {
				case err != nil:
					failures.Add(1)
				case !tok.Cached && first:
					firstFetches.Add(1)
				case !tok.Cached:
					waited.Add(1)
				}
			}(org, first[org])
		}
		wg.Wait()
		done += n
		env.b.Sweep()
		waitFor(t, "refreshes to finish", func() bool { return env.b.Health().InFlight == 0 })
		env.clk.Advance(step)
	}
	grants := env.emu.Requests()
	bound := int64(orgCount*lifetimes + orgCount)
	t.Logf("FIGURE stampede_lifetimes calls=%d orgs=%d lifetimes=%d grants=%d bound=%d waited_after_first=%d first_fetch_waits=%d",
		done, len(seen), lifetimes, grants, bound, waited.Load(), firstFetches.Load())
	if failures.Load() != 0 || waited.Load() != 0 || grants > bound || grants < int64(orgCount*lifetimes) {
		t.Errorf("failures %d, callers that waited after the first fetch %d, grants %d (want 0, 0, %d..%d)",
			failures.Load(), waited.Load(), grants, orgCount*lifetimes, bound)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Figure 5: Maskinporten stops answering for two token lifetimes while 50
// callers loop over 10 warm orgs. Every call returns a token that is still
// valid, or Unavailable, before its deadline; after recovery each key gets
// a fresh token (the time that takes is logged, not asserted). Real time,
// with 4 s tokens, so the test takes about 14 s.
func TestFigureOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 14 s of real time")
	}
	t.Parallel()
	const (
		ttl      = 4 * time.Second
		callers  = 50
		deadline = 500 * time.Millisecond
	)
	brk := breaker.New(breaker.Config{Failures: 3, OpenFor: 200 * time.Millisecond})
	env := newEmuEnv(t, emuOptions{
		realClock:  true,
		tokenTTL:   ttl,
		fastTokens: true,
		attempt:    200 * time.Millisecond,
		breaker:    brk,
		broker: broker.Config{
			DefaultMinValidity: 200 * time.Millisecond,
			RefreshMargin:      500 * time.Millisecond,
			RefreshFraction:    0.25,
			FetchTimeout:       time.Second,
			SweepInterval:      100 * time.Millisecond,
		},
	})
	warm := append([]string{"310904473", "314250052", "313775429"}, orgs(7)...)
	for _, org := range warm {
		if _, err := env.b.GetToken(context.Background(), req(org)); err != nil {
			t.Fatal(err)
		}
	}
	var down atomic.Bool
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if !down.Load() {
			return false
		}
		hang(w, r)
		return true
	})

	type result struct {
		org      string
		at       time.Time
		code     string
		jti      string
		expired  bool
		lateness time.Duration
	}
	results := make(chan result, 1_000_000) // calls refused at once come fast: about 150,000 in 14 s
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; n < 100_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				org := warm[(i+n)%len(warm)]
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				tok, err := env.b.GetToken(ctx, req(org))
				now := time.Now()
				late := ctx.Err() != nil
				cancel()
				r := result{org: org, at: now}
				switch {
				case err == nil:
					r.code = "OK"
					exp, jti := tokenClaims(tok.AccessToken)
					r.jti = jti
					r.expired = !exp.After(now)
				case isUnavailable(err):
					r.code = "Unavailable"
				default:
					r.code = err.Error()
				}
				if late {
					r.lateness = 1
				}
				results <- r
				time.Sleep(5 * time.Millisecond)
			}
		}(i)
	}
	time.Sleep(ttl / 2)
	outage := time.Now()
	down.Store(true)
	time.Sleep(2 * ttl)
	down.Store(false)
	recovered := time.Now()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	close(results)

	counts := map[string]int{}
	jtisBefore := map[string]bool{}
	var all []result
	for r := range results {
		all = append(all, r)
	}
	for _, r := range all {
		if r.code == "OK" && r.at.Before(recovered) {
			jtisBefore[r.jti] = true
		}
	}
	fresh := map[string]time.Time{}
	var expired, late int
	for _, r := range all {
		counts[r.code]++
		if r.expired {
			expired++
		}
		if r.lateness > 0 {
			late++
		}
		if r.code == "OK" && !r.at.Before(recovered) && !jtisBefore[r.jti] {
			if _, ok := fresh[r.org]; !ok {
				fresh[r.org] = r.at
			}
		}
	}
	var slowest time.Duration
	for _, org := range warm {
		at, ok := fresh[org]
		if !ok {
			t.Errorf("org %s got no fresh token after recovery", org)
			continue
		}
		slowest = max(slowest, at.Sub(recovered))
	}
	t.Logf("FIGURE outage calls=%d ok=%d unavailable=%d other=%d expired=%d after_deadline=%d outage=%v recovery_all_keys=%v",
		len(all), counts["OK"], counts["Unavailable"], len(all)-counts["OK"]-counts["Unavailable"], expired, late,
		recovered.Sub(outage).Round(time.Millisecond), slowest.Round(time.Millisecond))
	if expired != 0 || late != 0 || counts["OK"]+counts["Unavailable"] != len(all) {
		for code, n := range counts {
			if code != "OK" && code != "Unavailable" {
				t.Errorf("%d calls ended with %q", n, code)
			}
		}
		t.Errorf("%d expired tokens, %d calls past their deadline", expired, late)
	}
	if counts["Unavailable"] == 0 {
		t.Error("no call saw the outage: the test did not test it")
	}
}

func isUnavailable(err error) bool {
	var me *maskinporten.Error
	return errors.Is(err, broker.ErrUpstreamSlow) || (errors.As(err, &me) && me.Retryable)
}

// tokenClaims reads exp and jti from a JWT without verifying it.
func tokenClaims(tok string) (time.Time, string) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, ""
	}
	var c struct {
		Exp int64  `json:"exp"`
		Jti string `json:"jti"`
	}
	_ = json.Unmarshal(raw, &c)
	return time.Unix(c.Exp, 0), c.Jti
}

// Figure 2: the cold path (a first fetch for a new org from an emulator
// that answers at once) against the raw signing rate of the same key, both
// measured here with the same parallelism. Reported: ops/s of each and the
// ratio.
func BenchmarkFigureColdPath(b *testing.B) {
	const n = 2000
	key := signertest.RSA(b, signertest.KeyA)
	digest := sha256.Sum256([]byte("a grant's signing input"))
	par := runtime.GOMAXPROCS(0) * 4
	var signRates, coldRates []float64
	for i := 0; i < b.N; i++ {
		signRates = append(signRates, rate(n, par, func(int) error {
			_, err := key.Sign(crand.Reader, digest[:], crypto.SHA256)
			return err
		}))
		env := newEmuEnv(b, emuOptions{fastTokens: true, noLeakCheck: true})
		all := orgs(n)
		for _, org := range all {
			env.emu.ApproveSystemUser(emuClientID, org, "")
		}
		coldRates = append(coldRates, rate(n, par, func(j int) error {
			_, err := env.b.GetToken(context.Background(), req(all[j]))
			return err
		}))
		if got := env.emu.Issued(); got != n {
			b.Fatalf("%d tokens issued for %d cold keys", got, n)
		}
	}
	sign, cold := median(signRates), median(coldRates)
	b.ReportMetric(sign, "sign/s")
	b.ReportMetric(cold, "coldfetch/s")
	b.ReportMetric(cold/sign, "ratio")
	fmt.Printf("FIGURE cold_path sign_per_s=%.0f cold_fetch_per_s=%.0f ratio=%.3f runs=%d\n", sign, cold, cold/sign, b.N)
}

// rate runs fn(0..n-1) on par goroutines and returns calls per second.
func rate(n, par int, fn func(int) error) float64 {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	for g := 0; g < par; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := int(next.Add(1)) - 1
				if j >= n {
					return
				}
				if fn(j) != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		panic(fmt.Sprintf("%d calls failed", failed.Load()))
	}
	return float64(n) / time.Since(start).Seconds()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Figure 4: heap per cached entry with 100,000 entries holding ~1 KiB
// tokens, measured through GetToken with an in-memory source.
func BenchmarkFigureMemory(b *testing.B) {
	const entries = 100_000
	all := orgs(entries)
	var perEntry []float64
	for i := 0; i < b.N; i++ {
		src := &bigTokenSource{}
		br, err := broker.New(broker.Config{
			Policy:        policy.AllowAll(),
			Clients:       []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: src}},
			SweepInterval: -1,
			MaxEntries:    entries * 2,
		})
		if err != nil {
			b.Fatal(err)
		}
		before := heap()
		for _, org := range all {
			if _, err := br.GetToken(context.Background(), req(org)); err != nil {
				b.Fatal(err)
			}
		}
		after := heap()
		if h := br.Health(); h.Entries != entries {
			b.Fatalf("%d entries, want %d", h.Entries, entries)
		}
		perEntry = append(perEntry, float64(after-before)/entries)
		runtime.KeepAlive(br)
		br.Close()
	}
	m := median(perEntry)
	b.ReportMetric(m, "B/entry")
	fmt.Printf("FIGURE memory entries=%d bytes_per_entry=%.0f token_bytes=%d runs=%d\n", entries, m, bigTokenLen, b.N)
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// bigTokenLen is the size of the tokens bigTokenSource makes: about what a
// Maskinporten system user token weighs.
const bigTokenLen = 1024

// bigTokenSource returns a distinct 1 KiB token per call, at once.
type bigTokenSource struct{ n atomic.Int64 }

func (s *bigTokenSource) Token(ctx context.Context, r maskinporten.Request) (*maskinporten.Token, error) {
	n := s.n.Add(1)
	tok := fmt.Sprintf("%08d", n) + strings.Repeat("x", bigTokenLen-8)
	now := time.Now()
	return &maskinporten.Token{
		AccessToken:  tok,
		TokenType:    "Bearer",
		Scopes:       r.Scopes,
		IssuedAt:     now,
		ExpiresAt:    now.Add(10 * time.Minute),
		SystemUserID: "0a70d580-ed0b-4e03-8514-29c13ad5f549",
		SystemID:     "991825827_smartcloud",
		JWTID:        "474b8729-5772-46d0-9734-969da8f8426a",
	}, nil
}

func (s *bigTokenSource) KeyID() string                         { return "kid-1" }
func (s *bigTokenSource) Environment() maskinporten.Environment { return maskinporten.Test }
