package audit

import (
	"bytes"
	"testing"
	"time"
)

// TestThrottleSummaryPrecedesTheNextRecord: when a throttled key may write
// again, the record counting what it dropped is written first, with its
// next record, not only at the next sweep or at Flush: the audit log
// reads in order, and a process that dies before the sweep does not lose
// the count.
func TestThrottleSummaryPrecedesTheNextRecord(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	th := NewThrottle(New(&buf), 5, 1)
	now := time.Unix(1_700_000_000, 0)
	th.now = func() time.Time { return now }
	for range 4 { // one written, three dropped
		if err := th.Write("peer 10.0.0.1", Record{Peer: "10.0.0.1:1", Decision: Unauthenticated}); err != nil {
			t.Fatal(err)
		}
	}
	// 200 ms later the bucket has a token again, and the sweep (once a
	// second) is not due.
	now = now.Add(200 * time.Millisecond)
	if err := th.Write("peer 10.0.0.1", Record{Peer: "10.0.0.1:2", Decision: Invalid}); err != nil {
		t.Fatal(err)
	}
	recs := decode(t, &buf)
	if len(recs) != 3 || recs[1].Decision != Suppressed || recs[1].SuppressedCount != 3 || recs[2].Decision != Invalid {
		t.Fatalf("records %+v, want the first, a summary of 3, then the new one", recs)
	}
}
