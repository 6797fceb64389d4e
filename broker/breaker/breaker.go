// Package breaker is a circuit breaker for one upstream: after a run of
// consecutive failures it fails calls at once for a while, then lets a
// single probe through, and closes again when the probe succeeds. A dead
// upstream then costs callers microseconds instead of timeouts.
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
	// 0 means 500 ms.
	OpenFor time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
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
	failures  int
	openUntil time.Time // zero while closed
	probing   bool
}

// New returns a closed Breaker.
func New(cfg Config) *Breaker {
	b := &Breaker{threshold: cfg.Failures, openFor: cfg.OpenFor, now: cfg.Now}
	if b.threshold <= 0 {
		b.threshold = 5
	}
	if b.openFor <= 0 {
		b.openFor = 500 * time.Millisecond
	}
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// Allow asks to make a call. When it returns a nil error, the caller must
// make the call and report its outcome with done: true when the upstream
// answered (even with an error of its own), false when it failed or did
// not answer. Otherwise the circuit is open and err is an *OpenError.
func (b *Breaker) Allow() (done func(ok bool), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return b.report(false), nil
	}
	if now := b.now(); now.Before(b.openUntil) || b.probing {
		until := b.openUntil
		if b.probing && !now.Before(until) {
			until = now.Add(b.openFor)
		}
		return nil, &OpenError{Until: until, Failures: b.failures}
	}
	b.probing = true
	return b.report(true), nil
}

func (b *Breaker) report(probe bool) func(bool) {
	var once sync.Once
	return func(ok bool) {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if probe {
				b.probing = false
			}
			if ok {
				b.failures = 0
				b.openUntil = time.Time{}
				return
			}
			b.failures++
			if probe || b.failures >= b.threshold {
				b.openUntil = b.now().Add(b.openFor)
			}
		})
	}
}

// Open reports whether the circuit is open now.
func (b *Breaker) Open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.openUntil.IsZero()
}
