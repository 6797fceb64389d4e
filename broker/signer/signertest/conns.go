package signertest

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Listener counts the connections it accepted that are still open, so that
// a test can see from the server side whether clients release theirs.
type Listener struct {
	net.Listener

	mu      sync.Mutex
	open    int
	changed chan struct{} // closed and replaced at every change
}

// CountConns wraps l.
func CountConns(l net.Listener) *Listener {
	return &Listener{Listener: l, changed: make(chan struct{})}
}

// Accept accepts a connection and counts it until it is closed.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.add(1)
	return &countedConn{Conn: c, l: l}, nil
}

func (l *Listener) add(n int) {
	l.mu.Lock()
	l.open += n
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// Open returns the number of accepted connections not yet closed.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// WaitOpen waits until exactly n connections are open: the server closes
// its end when it sees the client close, which takes a moment. It fails
// the test when the count does not get there within a minute.
func (l *Listener) WaitOpen(tb testing.TB, n int) {
	tb.Helper()
	limit := time.NewTimer(time.Minute)
	defer limit.Stop()
	for {
		l.mu.Lock()
		open, changed := l.open, l.changed
		l.mu.Unlock()
		if open == n {
			return
		}
		select {
		case <-changed:
		case <-limit.C:
			tb.Fatalf("signertest: %d connections open, want %d", open, n)
		}
	}
}

type countedConn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.add(-1) })
	return err
}
