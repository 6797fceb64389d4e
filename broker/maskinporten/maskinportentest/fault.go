package maskinportentest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// FaultMode is a way for the emulator's token endpoint to fail. Faults are
// test-only knobs: they never change how a grant that gets through is
// judged.
type FaultMode int

// The fault modes.
const (
	// NoFault: the endpoint works.
	NoFault FaultMode = iota
	// Hang accepts the request, reads it and never answers, until the
	// client gives up (closes the connection) or the test ends. Ending
	// the fault does not release the requests already held: a stuck load
	// balancer does not answer them later either.
	Hang
	// Slow answers every SlowEvery-th request after Delay, the others at
	// once.
	Slow
	// Flap answers every other request with a 503 (the first, third, ...).
	Flap
	// Throttle answers every request with 429 Too Many Requests and
	// Retry-After: RetryAfter (whole seconds).
	Throttle
)

// Fault configures the fault injected into /token requests.
type Fault struct {
	Mode FaultMode
	// Delay is how long Slow holds an answer.
	Delay time.Duration
	// SlowEvery makes Slow hold only every SlowEvery-th request (the
	// first, the (SlowEvery+1)-th, ...); 0 or 1 holds all of them.
	SlowEvery int
	// RetryAfter is Throttle's Retry-After, rounded up to whole seconds;
	// 0 sends none.
	RetryAfter time.Duration
}

type faultState struct {
	fault   atomic.Pointer[Fault]
	n       atomic.Int64 // /token requests seen under the current fault
	held    atomic.Int64 // requests held now by Hang or Slow
	faulted atomic.Int64 // requests the fault answered or held
	release chan struct{}
	gone    atomic.Bool
}

// SetFault injects f into every /token request from now on; the zero
// Fault removes it. Requests already held stay held.
func (e *Emulator) SetFault(f Fault) {
	e.faults.n.Store(0)
	if f.Mode == NoFault {
		e.faults.fault.Store(nil)
		return
	}
	e.faults.fault.Store(&f)
}

// Held returns how many /token requests a Hang or Slow fault holds now.
func (e *Emulator) Held() int64 { return e.faults.held.Load() }

// Faulted returns how many /token requests a fault answered or held.
func (e *Emulator) Faulted() int64 { return e.faults.faulted.Load() }

// releaseHeld ends every held request (at the end of a test, so that the
// server can close).
func (e *Emulator) releaseHeld() {
	if e.faults.gone.CompareAndSwap(false, true) {
		close(e.faults.release)
	}
}

// serveFault applies the current fault to a /token request and reports
// whether it answered it.
func (e *Emulator) serveFault(w http.ResponseWriter, r *http.Request) bool {
	f := e.faults.fault.Load()
	if f == nil {
		return false
	}
	n := e.faults.n.Add(1)
	switch f.Mode {
	case Hang:
		e.faults.faulted.Add(1)
		// Reading the body first lets the server notice when the client
		// closes the connection.
		_, _ = io.Copy(io.Discard, r.Body)
		e.faults.held.Add(1)
		defer e.faults.held.Add(-1)
		select {
		case <-r.Context().Done():
		case <-e.faults.release:
		}
		return true
	case Slow:
		if f.SlowEvery > 1 && (n-1)%int64(f.SlowEvery) != 0 {
			return false
		}
		e.faults.faulted.Add(1)
		// Read the body now (and hand it on) so that the server notices
		// when the client gives up and closes the connection.
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		r.Body = io.NopCloser(bytes.NewReader(body))
		e.faults.held.Add(1)
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
		case <-e.faults.release:
		}
		e.faults.held.Add(-1)
		return r.Context().Err() != nil
	case Flap:
		if n%2 == 0 {
			return false
		}
		e.faults.faulted.Add(1)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "server_error", "error_description": "flapping (emulator)"})
		return true
	case Throttle:
		e.faults.faulted.Add(1)
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((f.RetryAfter+time.Second-1)/time.Second)))
		}
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "server_error", "error_description": "too many requests (emulator)"})
		return true
	}
	return false
}

// BlackHole returns the address of a TCP listener whose connections never
// complete: its accept queue (backlog 0) is already full with one
// connection nobody accepts, so Linux drops every further SYN and a dial
// waits until its timeout, as with a filtered port or a dead host. It
// needs no privileges. The listener closes when the test ends.
func BlackHole(tb testing.TB) string {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		tb.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second) // fills the queue
	if err != nil {
		tb.Fatalf("filling the black hole's accept queue: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return addr
}
