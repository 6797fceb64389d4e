package server

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeTimers records the first-request timers of a connGuard so that a
// test fires them itself.
type fakeTimers struct {
	mu  sync.Mutex
	fns []func()
}

type fakeTimer struct{}

func (fakeTimer) Stop() bool { return true }

func (f *fakeTimers) afterFunc(_ time.Duration, fn func()) stopper {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fns = append(f.fns, fn)
	return fakeTimer{}
}

func (f *fakeTimers) fire() {
	f.mu.Lock()
	fns := f.fns
	f.fns = nil
	f.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// TestConnGuard: connections over MaxConnections or over MaxPendingPerIP
// are closed at once; a connection that authenticates no longer counts as
// pending and survives its first-request timer; one that does not is
// closed when the timer fires.
func TestConnGuard(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var refusedMu sync.Mutex
	refused := map[string]int{}
	timers := &fakeTimers{}
	g := newConnGuard(lis, Limits{MaxConnections: 3, MaxPendingPerIP: 2, FirstRequestTimeout: time.Hour}, func(r string) {
		refusedMu.Lock()
		refused[r]++
		refusedMu.Unlock()
	})
	g.afterFunc = timers.afterFunc
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := g.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func(src net.IP) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
		c, err := d.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closed reports whether the server side closed c (a read sees EOF).
	closed := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil
	}
	a1, a2 := dial(net.IPv4(127, 0, 3, 1)), dial(net.IPv4(127, 0, 3, 1))
	s1, s2 := <-accepted, <-accepted
	over := dial(net.IPv4(127, 0, 3, 1)) // a third pending one from the same IP
	if !closed(over) {
		t.Fatal("a connection over max_pending_per_ip was not closed")
	}
	g.authenticated(s1.RemoteAddr())
	if all, pending := g.open(); all != 2 || pending != 1 {
		t.Fatalf("open %d, pending %d; want 2 and 1", all, pending)
	}
	b1 := dial(net.IPv4(127, 0, 3, 2)) // another IP: the third connection
	sb1 := <-accepted
	// Full: the oldest unauthenticated connection (a2) makes room for c1.
	c1 := dial(net.IPv4(127, 0, 3, 3))
	sc1 := <-accepted
	if !closed(a2) {
		t.Fatal("at max_connections the oldest unauthenticated connection was not closed to make room")
	}
	g.authenticated(sb1.RemoteAddr())
	g.authenticated(sc1.RemoteAddr())
	// Full, and every connection authenticated: the new one is refused.
	full := dial(net.IPv4(127, 0, 3, 4))
	if !closed(full) {
		t.Fatal("a connection over max_connections, all others authenticated, was not closed")
	}
	timers.fire()
	for name, c := range map[string]net.Conn{"a1": a1, "b1": b1, "c1": c1} {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == nil || !isTimeout(err) {
			t.Errorf("the authenticated connection %s was closed by its timer: %v", name, err)
		}
	}
	refusedMu.Lock()
	defer refusedMu.Unlock()
	if refused["max_pending_per_ip"] != 1 || refused["max_connections"] != 1 ||
		refused["max_connections (the oldest unauthenticated connection was closed)"] != 1 || refused["first_request_timeout"] != 0 {
		t.Errorf("refusals %v", refused)
	}
	_ = s2
}

// TestConnGuardFirstRequestTimeout: a connection that makes no
// authenticated call is closed when its timer fires.
func TestConnGuardFirstRequestTimeout(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	timers := &fakeTimers{}
	g := newConnGuard(lis, DefaultLimits, nil)
	g.afterFunc = timers.afterFunc
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := g.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-accepted
	timers.fire()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("an unauthenticated connection outlived its first-request timer: %v", err)
	}
	if all, pending := g.open(); all != 0 || pending != 0 {
		t.Errorf("open %d, pending %d after the timer; want 0 and 0", all, pending)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
