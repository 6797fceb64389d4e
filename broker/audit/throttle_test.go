package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func decode(t *testing.T, b *bytes.Buffer) []Record {
	t.Helper()
	var out []Record
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// TestThrottleBoundsOnePeer: a peer that sends 1,000 bad calls in one
// instant gets its burst written and one record counting the rest; other
// peers are not affected.
func TestThrottleBoundsOnePeer(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	th := NewThrottle(New(&buf), 5, 20)
	now := time.Unix(1_700_000_000, 0)
	th.now = func() time.Time { return now }
	for i := 0; i < 1000; i++ {
		if err := th.Write("peer 10.0.0.1", Record{Peer: "10.0.0.1:1234", Method: "/m", Decision: Unauthenticated}); err != nil {
			t.Fatal(err)
		}
	}
	if err := th.Write("peer 10.0.0.2", Record{Peer: "10.0.0.2:1", Decision: Unauthenticated}); err != nil {
		t.Fatal(err)
	}
	recs := decode(t, &buf)
	if len(recs) != 21 {
		t.Fatalf("%d records written for 1,000 calls of one peer and 1 of another, want 20 + 1", len(recs))
	}
	// A second later the peer's summary is written with the next record
	// of anyone.
	now = now.Add(time.Second)
	if err := th.Write("peer 10.0.0.3", Record{Peer: "10.0.0.3:1", Decision: Invalid}); err != nil {
		t.Fatal(err)
	}
	recs = decode(t, &buf)
	var suppressed int
	for _, r := range recs {
		if r.Decision == Suppressed {
			suppressed += r.SuppressedCount
			if r.Peer != "10.0.0.1:1234" || r.Method != "/m" {
				t.Errorf("summary %+v does not name the peer and method", r)
			}
		}
	}
	if suppressed != 980 {
		t.Errorf("summaries count %d suppressed records, want 980:\n%s", suppressed, buf.String())
	}
}

// TestThrottleFlush: what was dropped is counted at Flush even if no one
// writes again.
func TestThrottleFlush(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	th := NewThrottle(New(&buf), 1, 1)
	now := time.Unix(1_700_000_000, 0)
	th.now = func() time.Time { return now }
	for i := 0; i < 5; i++ {
		if err := th.Write("cn:x", Record{Caller: "cn:x", Decision: RateLimited}); err != nil {
			t.Fatal(err)
		}
	}
	if err := th.Flush(); err != nil {
		t.Fatal(err)
	}
	recs := decode(t, &buf)
	if len(recs) != 2 || recs[1].Decision != Suppressed || recs[1].SuppressedCount != 4 {
		t.Fatalf("records %+v, want the first and a summary of 4", recs)
	}
	var nilThrottle *Throttle
	if err := nilThrottle.Write("k", Record{}); err != nil || nilThrottle.Flush() != nil {
		t.Error("a nil Throttle must discard")
	}
}

// TestThrottleKeysBounded: many peers cannot grow the throttle without
// bound; past MaxThrottleKeys they share one bucket.
func TestThrottleKeysBounded(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	th := NewThrottle(New(&buf), 5, 20)
	now := time.Unix(1_700_000_000, 0)
	th.now = func() time.Time { return now }
	for i := 0; i < MaxThrottleKeys+1000; i++ {
		if err := th.Write(fmt.Sprintf("peer %d", i), Record{Decision: Unauthenticated}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(th.keys); n > MaxThrottleKeys+1 {
		t.Errorf("%d keys, want at most %d", n, MaxThrottleKeys+1)
	}
	if n := len(decode(t, &buf)); n != MaxThrottleKeys+20 {
		t.Errorf("%d records, want %d (one per key, then the shared bucket's burst)", n, MaxThrottleKeys+20)
	}
}
