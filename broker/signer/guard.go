package signer

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// ErrTimeout is returned by a guarded signer whose backend did not answer
// in time.
var ErrTimeout = errors.New("signer did not answer in time")

// ErrRetired is returned by a guarded signer after Retire.
var ErrRetired = errors.New("signer was retired (its key was replaced)")

// Guarded wraps a crypto.Signer: every Sign gets a timeout, and the outcome
// of the last Sign is kept so that readiness can follow the backend.
type Guarded struct {
	crypto.Signer
	timeout  time.Duration
	healthy  atomic.Bool
	onChange func(healthy bool)

	// mu is held for reading by each Sign, for writing by Retire.
	mu      sync.RWMutex
	retired bool
}

// Retire waits for the signatures under way (each at most the timeout)
// and makes every later Sign fail with ErrRetired, without changing
// Healthy: the backend can then be closed safely.
func (g *Guarded) Retire() {
	g.mu.Lock()
	g.retired = true
	g.mu.Unlock()
}

// Guard returns s with a per-signature timeout (0 means DefaultCallTimeout). onChange, when
// not nil, is called whenever the signer turns healthy or unhealthy.
func Guard(s crypto.Signer, timeout time.Duration, onChange func(healthy bool)) *Guarded {
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	g := &Guarded{Signer: s, timeout: timeout, onChange: onChange}
	g.healthy.Store(true)
	return g
}

// Sign signs with the backend, giving up after the timeout. A backend that
// cannot be interrupted finishes in the background; its result is dropped.
func (g *Guarded) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.retired {
		return nil, ErrRetired
	}
	type result struct {
		sig []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		sig, err := g.Signer.Sign(rand, digest, opts)
		done <- result{sig, err}
	}()
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	var r result
	select {
	case r = <-done:
	case <-t.C:
		r.err = fmt.Errorf("%w (%v)", ErrTimeout, g.timeout)
	}
	g.set(r.err == nil)
	return r.sig, r.err
}

// Healthy reports whether the last signature succeeded.
func (g *Guarded) Healthy() bool { return g.healthy.Load() }

// Probe signs a throwaway digest to check the backend.
func (g *Guarded) Probe(hash crypto.Hash) error {
	d := make([]byte, hash.Size())
	_, err := g.Sign(nil, d, hash)
	return err
}

func (g *Guarded) set(ok bool) {
	if g.healthy.Swap(ok) != ok && g.onChange != nil {
		g.onChange(ok)
	}
}
