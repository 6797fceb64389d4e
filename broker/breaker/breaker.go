// Package breaker is a circuit breaker for one upstream: after a run of
// consecutive failures it fails calls at once for a while, then lets a
// single probe through, and closes again when the probe succeeds. A dead
// upstream then costs callers microseconds instead of timeouts.
//
// A hang is a failure too: the caller reports an attempt that outlives its
// hedge delay as failed at that moment (done(false)), without waiting for
// its timeout, so that a hung upstream opens the circuit within a few hedge
// delays, and a hung probe does not keep the circuit half-open. If such an
// attempt is answered after all, its late done(true) closes the circuit.
package breaker

import (
	"fmt"
	"sync"
	"time"
)

// Config configures a Breaker.
type Config struct {
	// Failures is how many consecutive failures open the circuit;
	// 0 means 5.
	Failures int
	// OpenFor is how long the circuit stays open before a probe;
	// 0 means 250 ms. With a hung upstream a probe costs one grant per
	// OpenFor plus a hedge delay; once the upstream answers again the
	// next probe closes the circuit within that time.
	OpenFor time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// OnChange, when not nil, is called (on its own goroutine) when the
	// circuit opens, when a probe becomes due after OpenFor, and when the
	// circuit closes, so that the owner can start work (probes, refreshes)
	// at once instead of on its next tick.
	OnChange func(State)
}

// State is the state of the circuit.
type State int

// The states.
const (
	Closed   State = iota // calls go through
	Open                  // calls fail at once
	ProbeDue              // open, but the next call is let through as a probe
)

func (s State) String() string {
	return [...]string{"closed", "open", "probe due"}[s]
}

// OpenError is returned by Allow while the circuit is open.
type OpenError struct {
	// Until is when the next probe will be let through.
	Until time.Time
	// Failures is the run of failures that opened the circuit.
	Failures int
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("circuit open after %d consecutive failures, next try at %s", e.Failures, e.Until.UTC().Format(time.RFC3339Nano))
}

// Breaker is safe for concurrent use. The zero value is not usable; call New.
type Breaker struct {
	threshold int
	openFor   time.Duration
	now       func() time.Time

	mu        sync.Mutex
	listeners []func(State)
	failures  int
	openUntil time.Time // zero while closed
	probing   bool
	opened    chan struct{} // closed while the circuit is open
	timer     *time.Timer   // fires OnChange(ProbeDue)
}

// New returns a closed Breaker.
func New(cfg Config) *Breaker {
	b := &Breaker{threshold: cfg.Failures, openFor: cfg.OpenFor, now: cfg.Now, opened: make(chan struct{})}
	if cfg.OnChange != nil {
		b.listeners = append(b.listeners, cfg.OnChange)
	}
	if b.threshold <= 0 {
		b.threshold = 5
	}
	if b.openFor <= 0 {
		b.openFor = 250 * time.Millisecond
	}
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// Allow asks to make a call. When it returns a nil error, the caller must
// make the call and report its outcome with done: true when the upstream
// answered (even with an error of its own), false when it failed or did
// not answer in time. The first report counts; a later done(true) (a slow
// attempt answered after it was reported failed) still closes the circuit,
// since the upstream answers. Otherwise the circuit is open and err is an
// *OpenError.
func (b *Breaker) Allow() (done func(ok bool), err error) {
	c, err := b.Call()
	if err != nil {
		return nil, err
	}
	return c.Done, nil
}

// Call is one call let through by the breaker.
type Call struct {
	b     *Breaker
	probe bool

	mu       sync.Mutex
	reported bool
}

// Call is Allow returning the call itself, which can also be released
// without a verdict.
func (b *Breaker) Call() (*Call, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return &Call{b: b}, nil
	}
	if err := b.openErrorLocked(); err != nil {
		return nil, err
	}
	b.probing = true
	return &Call{b: b, probe: true}, nil
}

// Release ends a call that says nothing about the upstream (its caller
// gave up first) unless it was reported already: a probe's place is freed
// and nothing else changes.
func (c *Call) Release() {
	c.mu.Lock()
	first := !c.reported
	c.reported = true
	c.mu.Unlock()
	if first && c.probe {
		c.b.mu.Lock()
		c.b.probing = false
		c.b.mu.Unlock()
	}
}

// Done reports the call's outcome, as the done func of Allow.
func (c *Call) Done(ok bool) {
	c.mu.Lock()
	first := !c.reported
	c.reported = true
	c.mu.Unlock()
	if first || ok {
		c.b.report(c.probe, first, ok)
	}
}

// Check returns the *OpenError that Allow would return now, without taking
// a probe's place: nil when a call would be let through.
func (b *Breaker) Check() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return nil
	}
	return b.openErrorLocked()
}

func (b *Breaker) openErrorLocked() error {
	if now := b.now(); now.Before(b.openUntil) || b.probing {
		until := b.openUntil
		if b.probing && !now.Before(until) {
			until = now.Add(b.openFor)
		}
		return &OpenError{Until: until, Failures: b.failures}
	}
	return nil
}

// Opened returns a channel that is closed while the circuit is open (or
// half-open), and closes when it next opens otherwise. An attempt that has
// outlived its hedge delay waits on it to give up as soon as the upstream
// is known to be down.
func (b *Breaker) Opened() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.opened
}

func (b *Breaker) report(probe, first, ok bool) {
	b.mu.Lock()
	if first && probe {
		b.probing = false
	}
	if ok {
		b.failures = 0
		wasOpen := !b.openUntil.IsZero()
		b.openUntil = time.Time{}
		if wasOpen {
			b.opened = make(chan struct{})
			if b.timer != nil {
				b.timer.Stop()
			}
		}
		b.mu.Unlock()
		if wasOpen {
			b.notify(Closed)
		}
		return
	}
	b.failures++
	opens := false
	if probe || b.failures >= b.threshold {
		opens = b.openUntil.IsZero()
		if opens {
			close(b.opened)
		}
		b.openUntil = b.now().Add(b.openFor)
		if len(b.listeners) > 0 {
			if b.timer != nil {
				b.timer.Stop()
			}
			b.timer = time.AfterFunc(b.openFor, func() { b.notify(ProbeDue) })
		}
	}
	b.mu.Unlock()
	if opens {
		b.notify(Open)
	}
}

func (b *Breaker) notify(s State) {
	b.mu.Lock()
	ls := b.listeners
	b.mu.Unlock()
	for _, f := range ls {
		go f(s)
	}
}

// Notify adds f to the functions called (each on its own goroutine) when
// the circuit opens, when a probe becomes due, and when it closes, as
// Config.OnChange.
func (b *Breaker) Notify(f func(State)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.listeners = append(b.listeners[:len(b.listeners):len(b.listeners)], f)
}

// Open reports whether the circuit is open now.
func (b *Breaker) Open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.openUntil.IsZero()
}
