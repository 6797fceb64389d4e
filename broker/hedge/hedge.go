// Package hedge runs requests to an upstream as hedged attempts: when an
// attempt has not answered within a hedge delay derived from the latency
// the upstream has shown lately, a second attempt starts beside it, and the
// first good answer wins while the other is cancelled. It also feeds the
// upstream's circuit breaker: an attempt that outlives the hedge delay is
// reported failed at that moment, so that a hung upstream opens the breaker
// within a few hedge delays rather than after several attempt timeouts, and
// once the breaker is open an attempt that has outlived its hedge delay is
// abandoned at once instead of holding its callers until its timeout.
//
// Hedging is "The Tail at Scale" (Dean and Barroso, CACM 2013): defer the
// second request until the first has been outstanding longer than a high
// percentile of the expected latency, which keeps the extra load small.
// The budget that bounds it (a share of the attempts over the last minute,
// with a small floor) is the retry budget of Finagle and of gRPC's retry
// throttling.
package hedge

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/breaker"
)

// Defaults of Config.
const (
	DefaultFloor        = 250 * time.Millisecond
	DefaultMax          = 2 * time.Second
	DefaultBudget       = 0.1
	DefaultMinPerMinute = 3
)

// Config configures a Hedger. Zero fields take their defaults.
type Config struct {
	// Floor is the least hedge delay; 0 means 250 ms. The delay is
	// max(Floor, 2 x the p99 of the last 128 answered attempts), at most
	// Max.
	Floor time.Duration
	// Max caps the hedge delay; 0 means 2 s. It bounds how long a hung
	// upstream goes unnoticed however slow it was before.
	Max time.Duration
	// Budget is the share of hedges allowed over the attempts of the last
	// minute; 0 means 0.1 (10 %). Negative disables hedging (attempts
	// still report to the breaker at the hedge delay).
	Budget float64
	// MinPerMinute hedges are always allowed per minute, so that a quiet
	// upstream can be hedged at all; 0 means 3.
	MinPerMinute int
	// Breaker, when not nil, guards the upstream: every attempt asks it
	// first and reports to it.
	Breaker *breaker.Breaker
}

// Hedger holds what the attempts to one upstream share: its recent
// latency, the hedge budget and the breaker. It is safe for concurrent use.
type Hedger struct {
	floor, max   time.Duration
	budget       float64
	minPerMinute int
	brk          *breaker.Breaker

	mu      sync.Mutex
	samples [128]time.Duration
	n       int // samples recorded, up to len(samples)
	next    int
	delay   time.Duration // cached; 0 when stale
	window  [6]bucket     // 10 s each

	attempts, hedges, hedgeWins, abandoned atomic.Int64
}

type bucket struct {
	start            int64 // unix s / 10
	attempts, hedges int
}

// New returns a Hedger.
func New(cfg Config) *Hedger {
	h := &Hedger{floor: cfg.Floor, max: cfg.Max, budget: cfg.Budget, minPerMinute: cfg.MinPerMinute, brk: cfg.Breaker}
	if h.floor <= 0 {
		h.floor = DefaultFloor
	}
	if h.max <= 0 {
		h.max = DefaultMax
	}
	h.max = max(h.max, h.floor)
	if h.budget == 0 {
		h.budget = DefaultBudget
	}
	if h.minPerMinute == 0 {
		h.minPerMinute = DefaultMinPerMinute
	}
	return h
}

// Hedging reports whether hedges may be sent at all (Budget is not
// negative).
func (h *Hedger) Hedging() bool { return h.budget >= 0 }

// Breaker returns the breaker the Hedger reports to, or nil.
func (h *Hedger) Breaker() *breaker.Breaker { return h.brk }

// Delay returns the current hedge delay.
func (h *Hedger) Delay() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.delay == 0 {
		d := h.floor
		if h.n > 0 {
			s := slices.Clone(h.samples[:h.n])
			slices.Sort(s)
			p99 := s[(len(s)*99+99)/100-1]
			d = min(max(2*p99, h.floor), h.max)
		}
		h.delay = d
	}
	return h.delay
}

// observe records the latency of an answered attempt.
func (h *Hedger) observe(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.samples[h.next] = d
	h.next = (h.next + 1) % len(h.samples)
	h.n = min(h.n+1, len(h.samples))
	h.delay = 0
}

// canHedge reports whether the budget allows one more hedge now: at most
// max(MinPerMinute, Budget x the first attempts) over the last minute.
func (h *Hedger) canHedge() bool {
	if h.budget < 0 {
		return false
	}
	now := time.Now().Unix() / 10
	h.mu.Lock()
	defer h.mu.Unlock()
	var attempts, hedges int
	for _, w := range h.window {
		if now-w.start < int64(len(h.window)) {
			attempts += w.attempts
			hedges += w.hedges
		}
	}
	return hedges+1 <= max(h.minPerMinute, int(h.budget*float64(attempts-hedges)))
}

// count records an attempt sent in the budget window.
func (h *Hedger) count(hedge bool) {
	now := time.Now().Unix() / 10
	h.mu.Lock()
	defer h.mu.Unlock()
	b := &h.window[now%int64(len(h.window))]
	if b.start != now {
		*b = bucket{start: now}
	}
	if hedge {
		b.hedges++
		h.hedges.Add(1)
	}
	b.attempts++
	h.attempts.Add(1)
}

// Stats are counters since the Hedger was made.
type Stats struct {
	// Attempts counts every attempt sent, hedges included.
	Attempts int64
	// Hedges counts the second attempts sent.
	Hedges int64
	// HedgeWins counts the hedges that answered first.
	HedgeWins int64
	// Abandoned counts runs given up because the breaker opened while
	// their attempts hung.
	Abandoned int64
}

// Stats returns the counters.
func (h *Hedger) Stats() Stats {
	return Stats{Attempts: h.attempts.Load(), Hedges: h.hedges.Load(), HedgeWins: h.hedgeWins.Load(), Abandoned: h.abandoned.Load()}
}

// Classes tells Run how to read an attempt's error.
type Classes struct {
	// Answered reports whether err is an answer of the upstream (an
	// error of its own such as a refused grant), as opposed to no answer,
	// a 5xx or a 429; nil errors are answers. It decides what the breaker
	// hears.
	Answered func(err error) bool
	// Final reports whether err ends the run even while another attempt
	// is still out: an answer that another attempt would not change.
	Final func(err error) bool
	// Open turns the breaker's refusal into the caller's error.
	Open func(*breaker.OpenError) error
}

type onceKey struct{}

// OneHedge returns a context under which all Runs together send at most
// one hedge: a fetch that retries hedges its first slow attempt only, not
// every retry.
func OneHedge(ctx context.Context) context.Context {
	return context.WithValue(ctx, onceKey{}, new(atomic.Bool))
}

type result[T any] struct {
	v     T
	err   error
	hedge bool
}

// Run calls try, hedged: if it has not returned within the hedge delay, it
// calls try again beside it (once per run, and once in all under a context
// from OneHedge, within the budget and only if the breaker lets it), with hedge set so that it can use a fresh
// connection; the first success or final error wins and the other attempt's
// context is cancelled. When every attempt fails, Run returns the last
// error. When the breaker is open before the first attempt, or opens while
// the attempts have outlived the hedge delay, Run returns c.Open's error at
// once and cancels the attempts. try must return when its context ends.
func Run[T any](ctx context.Context, h *Hedger, c Classes, try func(ctx context.Context, hedge bool) (T, error)) (T, error) {
	var zero T
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result[T], 2)
	delay := h.Delay()
	// calls[0] is the primary's breaker call, calls[1] the hedge's; each
	// is reported failed when its attempt outlives the hedge delay, by
	// this loop, so that the breaker has heard of the primary before the
	// hedge asks it.
	var calls [2]*breaker.Call
	launch := func(hedge bool) error {
		if hedge && !h.canHedge() {
			return errNoBudget
		}
		var call *breaker.Call
		if h.brk != nil {
			c, err := h.brk.Call()
			if err != nil {
				return err
			}
			call = c
		}
		h.count(hedge)
		calls[boolIndex(hedge)] = call
		go func() {
			start := time.Now()
			v, err := try(ctx, hedge)
			took := time.Since(start)
			cancelled := ctx.Err() != nil
			answered := err == nil || (!cancelled && c.Answered(err))
			if answered && !cancelled {
				h.observe(took)
			}
			if call != nil {
				switch {
				case answered:
					call.Done(true) // perhaps late, but an answer: the upstream is up
				case cancelled:
					call.Release() // given up by us or the caller: says nothing more
				default:
					call.Done(false)
				}
			}
			results <- result[T]{v, err, hedge}
		}()
		return nil
	}
	if err := launch(false); err != nil {
		var oe *breaker.OpenError
		if !errors.As(err, &oe) {
			return zero, err
		}
		return zero, c.Open(oe)
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	pending, hedged, fired := 1, false, 0
	var opened <-chan struct{}
	for {
		select {
		case r := <-results:
			pending--
			if r.err == nil || c.Final(r.err) || pending == 0 {
				if r.hedge && r.err == nil {
					h.hedgeWins.Add(1)
				}
				return r.v, r.err
			}
		case <-timer.C:
			// The primary (first time) or the hedge (second) outlived
			// the hedge delay: a hang, as far as the breaker is told.
			if call := calls[fired]; call != nil {
				call.Done(false)
			}
			fired++
			if h.brk != nil {
				opened = h.brk.Opened()
			}
			if !hedged {
				hedged = true
				spent, _ := ctx.Value(onceKey{}).(*atomic.Bool)
				if spent == nil || spent.CompareAndSwap(false, true) {
					if launch(true) == nil {
						pending++
						timer.Reset(delay)
					} else if spent != nil {
						spent.Store(false) // not sent: a later attempt may hedge
					}
				}
			}
		case <-opened:
			h.abandoned.Add(1)
			var oe *breaker.OpenError
			if !errors.As(h.brk.Check(), &oe) {
				oe = &breaker.OpenError{Until: time.Now()}
			}
			return zero, c.Open(oe)
		}
	}
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

type budgetError struct{}

func (budgetError) Error() string { return "hedge budget spent" }

var errNoBudget error = budgetError{}
