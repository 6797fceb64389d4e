package audit

import (
	"bytes"
	"strings"
	"testing"
)

// TestMethodBounded (review): the method of a record is the :path a peer
// sent, unauthenticated calls included (the tap audits them with the
// method as sent, up to the 8 KiB header limit), yet it was the one
// string field not cut to maxField.
func TestMethodBounded(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := New(&buf)
	if err := l.Write(Record{Method: "/" + strings.Repeat("m", 8<<10), Decision: Unauthenticated}); err != nil {
		t.Fatal(err)
	}
	if n := buf.Len(); n > 1024 {
		t.Errorf("an audit line of %d bytes for an 8 KiB method; want it cut like every other field", n)
	}
}
