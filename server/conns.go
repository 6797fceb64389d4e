package server

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Limits bound what a peer can hold before it has proved who it is. Zero
// fields take the defaults of DefaultLimits.
type Limits struct {
	// MaxHeaderBytes bounds the header list of one call (HTTP/2
	// SETTINGS_MAX_HEADER_LIST_SIZE). A GetToken call sends a few hundred
	// bytes of headers; grpcurl and tracing headers stay well under 1 KiB.
	MaxHeaderBytes uint32
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface of a
	// new connection.
	HandshakeTimeout time.Duration
	// FirstRequestTimeout closes a TCP connection that has not made an
	// authenticated call this long after it was accepted.
	FirstRequestTimeout time.Duration
	// IdleTimeout closes a connection without calls for this long.
	IdleTimeout time.Duration
	// KeepaliveMinTime is the shortest interval between pings a client may
	// send; a client that pings more often is disconnected.
	KeepaliveMinTime time.Duration
	// MaxConnections bounds the open TCP connections; past it, the oldest
	// connection that has not made an authenticated call is closed to make
	// room, and when all have, the new one is closed at once.
	MaxConnections int
	// MaxPendingPerIP bounds the TCP connections of one IP address that
	// have not yet made an authenticated call.
	MaxPendingPerIP int
	// MaxConcurrentStreams bounds the calls in progress per connection.
	MaxConcurrentStreams uint32
}

// DefaultLimits are the limits a server has unless configured otherwise.
// The figures behind them are in BENCHMARKS.md ("Hostile peers").
var DefaultLimits = Limits{
	MaxHeaderBytes:       8 << 10,
	HandshakeTimeout:     5 * time.Second,
	FirstRequestTimeout:  10 * time.Second,
	IdleTimeout:          5 * time.Minute,
	KeepaliveMinTime:     10 * time.Second,
	MaxConnections:       1024,
	MaxPendingPerIP:      32,
	MaxConcurrentStreams: 128,
}

// Check reports a limit that would lock out every caller or undo the
// protection, naming it as the config file does (max_header_bytes, ...).
// Zero fields are fine: they take DefaultLimits.
func (l Limits) Check() error {
	switch {
	case l.MaxHeaderBytes != 0 && (l.MaxHeaderBytes < 1<<10 || l.MaxHeaderBytes > 1<<20):
		return fmt.Errorf("max_header_bytes: %d, want 1024 to 1048576 (default %d)", l.MaxHeaderBytes, DefaultLimits.MaxHeaderBytes)
	case l.HandshakeTimeout < 0 || l.FirstRequestTimeout < 0 || l.IdleTimeout < 0 || l.KeepaliveMinTime < 0:
		return errors.New("handshake_timeout, first_request_timeout, idle_timeout and keepalive_min_time must not be negative")
	case l.MaxConnections < 0 || l.MaxPendingPerIP < 0:
		return errors.New("max_connections and max_pending_per_ip must not be negative")
	case l.MaxConcurrentStreams > 10000:
		return fmt.Errorf("max_concurrent_streams: %d, want at most 10000 (default %d)", l.MaxConcurrentStreams, DefaultLimits.MaxConcurrentStreams)
	}
	return nil
}

// withDefaults fills the zero fields of l from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	return Limits{
		MaxHeaderBytes:       or(l.MaxHeaderBytes, d.MaxHeaderBytes),
		HandshakeTimeout:     or(l.HandshakeTimeout, d.HandshakeTimeout),
		FirstRequestTimeout:  or(l.FirstRequestTimeout, d.FirstRequestTimeout),
		IdleTimeout:          or(l.IdleTimeout, d.IdleTimeout),
		KeepaliveMinTime:     or(l.KeepaliveMinTime, d.KeepaliveMinTime),
		MaxConnections:       or(l.MaxConnections, d.MaxConnections),
		MaxPendingPerIP:      or(l.MaxPendingPerIP, d.MaxPendingPerIP),
		MaxConcurrentStreams: or(l.MaxConcurrentStreams, d.MaxConcurrentStreams),
	}
}

// or returns v, or d when v is the zero value.
func or[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// connGuard wraps a TCP listener: it closes new connections past
// MaxConnections or past MaxPendingPerIP unauthenticated ones from one IP,
// and closes a connection that has made no authenticated call within
// FirstRequestTimeout. Connections are known by their remote address,
// which is unique per TCP connection of one listener.
type connGuard struct {
	net.Listener
	limits Limits
	// afterFunc is time.AfterFunc; tests replace it.
	afterFunc func(time.Duration, func()) stopper
	// refused is called (outside the lock) for each connection closed by
	// a limit, with the reason.
	refused func(reason string)

	mu      sync.Mutex
	conns   map[string]*guardedConn // by remote address
	pending map[string]int          // unauthenticated connections by IP
	seq     uint64                  // admissions so far
}

type stopper interface{ Stop() bool }

func newConnGuard(lis net.Listener, l Limits, refused func(string)) *connGuard {
	return &connGuard{
		Listener: lis, limits: l, refused: refused,
		afterFunc: func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) },
		conns:     map[string]*guardedConn{}, pending: map[string]int{},
	}
}

// Accept returns the next connection within the limits; connections over
// a limit are closed and not returned.
func (g *connGuard) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		gc, evicted, reason := g.admit(c)
		if evicted != nil {
			evicted.Close()
			if g.refused != nil {
				g.refused("max_connections (the oldest unauthenticated connection was closed)")
			}
		}
		if gc != nil {
			return gc, nil
		}
		c.Close()
		if g.refused != nil {
			g.refused(reason)
		}
	}
}

// admit decides on a new connection. At MaxConnections it makes room by
// evicting the oldest connection that has not yet made an authenticated
// call, which the caller must close (so that peers without an identity,
// reconnecting as fast as they are closed, cannot keep out a caller that
// has one); only when every connection is authenticated is the new one
// refused.
func (g *connGuard) admit(c net.Conn) (admitted, evicted *guardedConn, reason string) {
	addr, ip := c.RemoteAddr().String(), ipOf(c.RemoteAddr())
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending[ip] >= g.limits.MaxPendingPerIP {
		return nil, nil, "max_pending_per_ip"
	}
	if len(g.conns) >= g.limits.MaxConnections {
		for _, o := range g.conns {
			if !o.authed && (evicted == nil || o.seq < evicted.seq) {
				evicted = o
			}
		}
		if evicted == nil {
			return nil, nil, "max_connections"
		}
		delete(g.conns, evicted.addr)
		evicted.authed = true // counted out here, not again in Close
		evicted.timer.Stop()
		g.unpend(evicted.ip)
	}
	g.seq++
	gc := &guardedConn{Conn: c, g: g, addr: addr, ip: ip, seq: g.seq}
	g.conns[addr] = gc
	g.pending[ip]++
	gc.timer = g.afterFunc(g.limits.FirstRequestTimeout, func() {
		g.mu.Lock()
		late := !gc.authed
		g.mu.Unlock()
		if late {
			gc.Close()
			if g.refused != nil {
				g.refused("first_request_timeout")
			}
		}
	})
	return gc, evicted, ""
}

// authenticated records that the connection from addr made an
// authenticated call: it no longer counts as pending, and its first
// request timer stops.
func (g *connGuard) authenticated(addr net.Addr) {
	if addr == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gc, ok := g.conns[addr.String()]
	if !ok || gc.authed {
		return
	}
	gc.authed = true
	gc.timer.Stop()
	g.unpend(gc.ip)
}

// unpend decrements the pending count of ip; g.mu is held.
func (g *connGuard) unpend(ip string) {
	if g.pending[ip]--; g.pending[ip] <= 0 {
		delete(g.pending, ip)
	}
}

// MaxPendingPublicCalls bounds the calls that need no identity (health)
// in progress on a connection that has not made an authenticated call:
// each holds a stream, its headers and a goroutine until it ends, and a
// peer that never sends their message would otherwise hold
// MaxConcurrentStreams of them per connection.
const MaxPendingPublicCalls = 8

// startPublic records a call that needs no identity on the connection from
// addr and reports whether it may proceed: always on an authenticated
// connection (or one the guard does not know), at most
// MaxPendingPublicCalls at a time on one that is not. endPublic must
// follow when the call ends.
func (g *connGuard) startPublic(addr net.Addr) bool {
	if addr == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gc, ok := g.conns[addr.String()]
	if !ok {
		return true
	}
	if !gc.authed && gc.public >= MaxPendingPublicCalls {
		return false
	}
	gc.public++
	return true
}

// endPublic records the end of a call startPublic let through.
func (g *connGuard) endPublic(addr net.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gc, ok := g.conns[addr.String()]; ok && gc.public > 0 {
		gc.public--
	}
}

// open returns the number of open connections and of those not yet
// authenticated.
func (g *connGuard) open() (all, pending int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, n := range g.pending {
		pending += n
	}
	return len(g.conns), pending
}

type guardedConn struct {
	net.Conn
	g        *connGuard
	addr, ip string
	seq      uint64 // order of admission
	timer    stopper
	authed   bool // under g.mu
	public   int  // calls without identity in progress, under g.mu
	once     sync.Once
}

func (c *guardedConn) Close() error {
	c.once.Do(func() {
		g := c.g
		g.mu.Lock()
		if g.conns[c.addr] == c {
			delete(g.conns, c.addr)
		}
		if !c.authed {
			c.authed = true // counted out once
			c.timer.Stop()
			g.unpend(c.ip)
		}
		g.mu.Unlock()
	})
	return c.Conn.Close()
}

func ipOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
