package broker_test

// The figures of issue 14 (BENCHMARKS.md, "Hangs"), with the shipped
// defaults. They take real time (about 17 s for the hang, 15 s for the
// slow attempts), so they run only when TOKENBROKER_FIGURES=1;
// scripts/bench-hang.sh runs them 5 times and takes the medians. They log
// lines starting with "FIGURE" and assert only what must hold, never a
// time.

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
)

func figuresOnly(t *testing.T) {
	if os.Getenv("TOKENBROKER_FIGURES") != "1" {
		t.Skip("a figure for scripts/bench-hang.sh; set TOKENBROKER_FIGURES=1")
	}
}

// Figure H1/H2: Maskinporten hangs (accepts, never answers) for 12 s, two
// lifetimes of its 6 s tokens, while 20 callers loop over 10 warm orgs with
// a 2 s deadline and a min_validity of 1 s; then it answers again.
// Reported: the time from the end of the hang to every hot key holding a
// fresh token, and the calls during the hang that waited past 100 ms (how
// many, and how late into the hang the last one came).
func TestFigureHangRecovery(t *testing.T) {
	figuresOnly(t)
	const (
		ttl      = 6 * time.Second
		hangFor  = 12 * time.Second
		callers  = 20
		deadline = 2 * time.Second
	)
	env := newDefaultsEnv(t, defaultsOptions{tokenTTL: ttl, noLeak: true})
	var closedMu sync.Mutex
	var closedAt, openedAt []time.Time
	env.brk.Notify(func(s breaker.State) {
		closedMu.Lock()
		defer closedMu.Unlock()
		switch s {
		case breaker.Closed:
			closedAt = append(closedAt, time.Now())
		case breaker.Open:
			openedAt = append(openedAt, time.Now())
		}
	})
	hot := orgs(10)
	for _, org := range hot {
		if _, err := env.call(org); err != nil {
			t.Fatal(err)
		}
	}
	type result struct {
		org        string
		start, end time.Time
		tok        string
		err        error
	}
	results := make(chan result, 1_000_000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				org := hot[(i+n)%len(hot)]
				start := time.Now()
				tok, err := env.call(org)
				r := result{org: org, start: start, end: time.Now(), err: err}
				if err == nil {
					r.tok = tok.AccessToken
				}
				results <- r
				time.Sleep(5 * time.Millisecond)
			}
		}(i)
	}
	time.Sleep(2 * time.Second)
	grantsBefore := env.emu.Requests()
	hangStart := time.Now()
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Hang})
	time.Sleep(hangFor)
	env.emu.SetFault(maskinportentest.Fault{})
	recovered := time.Now()
	grantsInHang := env.emu.Requests() - grantsBefore
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	close(results)

	seenBefore := map[string]bool{}
	var all []result
	for r := range results {
		all = append(all, r)
		if r.err == nil && r.end.Before(recovered) {
			seenBefore[r.tok] = true
		}
	}
	fresh := map[string]time.Duration{}
	var inHang, slowInHang, ok, unavailable, deadlineHit, other int
	var lastSlow time.Duration
	for _, r := range all {
		if !r.start.Before(hangStart) && r.start.Before(recovered) {
			inHang++
			if r.end.Sub(r.start) > 100*time.Millisecond {
				slowInHang++
				lastSlow = max(lastSlow, r.start.Sub(hangStart))
			}
			switch {
			case r.err == nil:
				ok++
			case errors.Is(r.err, context.DeadlineExceeded):
				deadlineHit++
			case isUnavailable(r.err):
				unavailable++
			default:
				other++
				t.Logf("call failed: %v", r.err)
			}
		}
		if r.err == nil && !r.start.Before(recovered) && !seenBefore[r.tok] {
			if _, done := fresh[r.org]; !done {
				fresh[r.org] = r.end.Sub(recovered)
			}
		}
	}
	var recovery time.Duration
	for _, org := range hot {
		d, done := fresh[org]
		if !done {
			t.Errorf("org %s got no fresh token after the hang", org)
			continue
		}
		recovery = max(recovery, d)
	}
	closedMu.Lock()
	firstOpen, closeAfter := time.Duration(-1), time.Duration(-1)
	for _, at := range openedAt {
		if !at.Before(hangStart) {
			firstOpen = at.Sub(hangStart)
			break
		}
	}
	for _, at := range closedAt {
		if !at.Before(recovered) {
			closeAfter = at.Sub(recovered)
			break
		}
	}
	closedMu.Unlock()
	t.Logf("FIGURE hang_recovery recovery_ms=%d breaker_closed_ms=%d breaker_opened_after_ms=%d calls_in_hang=%d waited_over_100ms=%d share=%.4f last_wait_over_100ms_at_s=%.2f ok=%d unavailable=%d deadline_exceeded=%d other=%d grants_in_hang=%d",
		recovery.Milliseconds(), closeAfter.Milliseconds(), firstOpen.Milliseconds(), inHang, slowInHang, float64(slowInHang)/float64(max(inHang, 1)),
		lastSlow.Seconds(), ok, unavailable, deadlineHit, other, grantsInHang)
	if deadlineHit != 0 || other != 0 {
		t.Errorf("%d calls past their deadline, %d other failures during the hang", deadlineHit, other)
	}
}

// Figure H3/H4: 300 cold keys fetched at 40 per second (below the default
// grant rate of 50 per second, so that the limiter does not queue them)
// while every 20th attempt (5 %) is answered only after 1 s, with hedging
// (the default) and without (hedge.budget -1). Reported: p50, p99 and max
// of the cold fetches, and the extra grants hedging caused.
func TestFigureSlowAttempts(t *testing.T) {
	figuresOnly(t)
	const (
		keys  = 300
		every = 25 * time.Millisecond
	)
	for _, mode := range []string{"hedged", "unhedged"} {
		env := newDefaultsEnv(t, defaultsOptions{noHedge: mode == "unhedged", noLeak: true})
		env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Slow, Delay: time.Second, SlowEvery: 20})
		all := orgs(keys)
		lat := make([]time.Duration, keys)
		var wg sync.WaitGroup
		var failed sync.Map
		tick := time.NewTicker(every)
		for i, org := range all {
			<-tick.C
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				start := time.Now()
				_, err := env.b.GetToken(ctx, req(org))
				lat[i] = time.Since(start)
				if err != nil {
					failed.Store(org, err)
				}
			}()
		}
		tick.Stop()
		wg.Wait()
		failed.Range(func(k, v any) bool {
			t.Errorf("%s: org %v: %v", mode, k, v)
			return true
		})
		slices.Sort(lat)
		s := env.hedger.Stats()
		primaries := s.Attempts - s.Hedges
		t.Logf("FIGURE slow_attempts mode=%s keys=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f grants=%d primaries=%d hedges=%d hedge_wins=%d extra_grants=%.4f slow_answers=%d hedge_delay_ms=%d",
			mode, keys, ms(lat[keys/2]), ms(lat[keys*99/100]), ms(lat[keys-1]), env.emu.Requests(), primaries, s.Hedges, s.HedgeWins,
			float64(s.Hedges)/float64(max(primaries, 1)), env.emu.Faulted(), env.hedger.Delay().Milliseconds())
		var me *maskinporten.Error
		_ = me
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

var _ = broker.ErrUpstreamSlow

// Figure H2b: the same callers, but on 10 cold orgs (no token yet) while
// Maskinporten hangs from the start, for 4 s: here every call must wait
// until the breaker learns of the hang. Reported: the calls that waited
// past 100 ms and how late into the hang the last one started, and the
// time from the end of the hang until every org has a token.
func TestFigureHangCold(t *testing.T) {
	figuresOnly(t)
	const (
		hangFor = 4 * time.Second
		callers = 20
	)
	env := newDefaultsEnv(t, defaultsOptions{tokenTTL: 6 * time.Second, noLeak: true})
	cold := orgs(10)
	env.emu.SetFault(maskinportentest.Fault{Mode: maskinportentest.Hang})
	type result struct {
		org        string
		start, end time.Time
		err        error
	}
	results := make(chan result, 1_000_000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	hangStart := time.Now()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				org := cold[(i+n)%len(cold)]
				start := time.Now()
				_, err := env.call(org)
				results <- result{org, start, time.Now(), err}
				time.Sleep(5 * time.Millisecond)
			}
		}(i)
	}
	time.Sleep(hangFor)
	env.emu.SetFault(maskinportentest.Fault{})
	recovered := time.Now()
	grantsInHang := env.emu.Requests()
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	close(results)
	var inHang, slow, deadlineHit, other int
	var lastSlow time.Duration
	first := map[string]time.Duration{}
	for r := range results {
		if r.start.Before(recovered) {
			inHang++
			if r.end.Sub(r.start) > 100*time.Millisecond {
				slow++
				lastSlow = max(lastSlow, r.start.Sub(hangStart))
			}
			switch {
			case r.err == nil:
			case errors.Is(r.err, context.DeadlineExceeded):
				deadlineHit++
			case !isUnavailable(r.err):
				other++
			}
		}
		if r.err == nil && !r.start.Before(recovered) {
			if _, ok := first[r.org]; !ok {
				first[r.org] = r.end.Sub(recovered)
			}
		}
	}
	var recovery time.Duration
	for _, org := range cold {
		d, ok := first[org]
		if !ok {
			t.Errorf("org %s got no token after the hang", org)
		}
		recovery = max(recovery, d)
	}
	t.Logf("FIGURE hang_cold calls_in_hang=%d waited_over_100ms=%d share=%.4f last_wait_over_100ms_at_s=%.2f deadline_exceeded=%d other=%d grants_in_hang=%d recovery_ms=%d",
		inHang, slow, float64(slow)/float64(max(inHang, 1)), lastSlow.Seconds(), deadlineHit, other, grantsInHang, recovery.Milliseconds())
	if deadlineHit != 0 || other != 0 {
		t.Errorf("%d calls past their deadline, %d other failures", deadlineHit, other)
	}
}
