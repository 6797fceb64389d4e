package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/audit"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// lockedBuffer is a bytes.Buffer safe for the audit log's writer.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// decisions counts the audit records of buf by decision, and the
// suppressed records their summaries account for.
func (l *lockedBuffer) decisions(t *testing.T) (map[string]int, int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	n, suppressed := map[string]int{}, 0
	dec := json.NewDecoder(bytes.NewReader(l.b.Bytes()))
	for dec.More() {
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		n[r.Decision]++
		suppressed += r.SuppressedCount
	}
	return n, suppressed
}

func auditServer(t *testing.T) (*Server, *lockedBuffer) {
	t.Helper()
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), Clients: []broker.Client{{Name: "c", Scopes: []string{"s"}, Source: nullSource{}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	buf := &lockedBuffer{}
	s, err := New(Config{Broker: b, Authenticate: Fixed(identity.MustParse("local:test")), Audit: audit.New(buf)})
	if err != nil {
		t.Fatal(err)
	}
	return s, buf
}

// TestAuditThrottleKeyedByPeerIP: refusals of calls without a caller are
// throttled per peer IP, not per connection: a peer that opens a new
// connection (a new source port) for every call still has one budget.
// The throttle's own clock runs (5 records a second after a burst of 20),
// so the bound grows with the time the loop took; written one per port,
// all 100 would be.
func TestAuditThrottleKeyedByPeerIP(t *testing.T) {
	t.Parallel()
	s, buf := auditServer(t)
	const calls = 100
	start := time.Now()
	for i := range calls {
		rec := &audit.Record{Peer: fmt.Sprintf("192.0.2.7:%d", 40000+i), Method: "/tokenbroker.v1.TokenBrokerService/GetToken"}
		s.writeAudit(rec, audit.Unauthenticated, status.Error(codes.Unauthenticated, "no certificate"))
	}
	elapsed := time.Since(start)
	n, _ := buf.decisions(t)
	bound := 20 + int(math.Ceil(5*elapsed.Seconds())) + 1
	if bound >= calls {
		t.Skipf("the loop took %v; the throttle refilled too much to tell", elapsed)
	}
	if n[audit.Unauthenticated] > bound {
		t.Errorf("%d unauthenticated records of one IP from %d ports in %v, want at most %d: the throttle is keyed by IP", n[audit.Unauthenticated], calls, elapsed, bound)
	}
	if err := s.throttle.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, suppressed := buf.decisions(t); n[audit.Unauthenticated]+suppressed != calls {
		t.Errorf("%d written and %d suppressed, want %d in all", n[audit.Unauthenticated], suppressed, calls)
	}
}

// TestAuditDenialsNotThrottled: a policy refusal of an authenticated
// caller is always written, however many there are: only unauthenticated,
// invalid and rate-limited calls go through the throttle.
func TestAuditDenialsNotThrottled(t *testing.T) {
	t.Parallel()
	s, buf := auditServer(t)
	const calls = 60
	for range calls {
		rec := &audit.Record{Caller: "spiffe://example.org/billing", Peer: "192.0.2.8:40000", Method: "/tokenbroker.v1.TokenBrokerService/GetToken"}
		s.writeAudit(rec, audit.Deny, status.Error(codes.PermissionDenied, "denied by policy"))
	}
	if n, _ := buf.decisions(t); n[audit.Deny] != calls || n[audit.Suppressed] != 0 {
		t.Errorf("records %v, want %d %q and none suppressed", n, calls, audit.Deny)
	}
}
