package audit_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/audit"
)

// lines decodes the JSON lines in b.
func lines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteOneJSONLinePerRecord(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := audit.New(&buf)
	at := time.Date(2026, 11, 29, 18, 0, 0, 0, time.FixedZone("CET", 3600))
	rec := audit.Record{
		Time: at, Caller: "spiffe://example.org/billing", Method: "/tokenbroker.v1.TokenBrokerService/GetToken",
		Client: "smartcloud", KeyID: "kid-1", CustomerOrg: "310904473", Scopes: []string{"a:b"},
		ExternalRef: "tenant-1", Resource: "https://api.example/", Decision: audit.Allow, Code: "OK",
		Cached: true, UpstreamLatencyMS: 1.5, TokenJTI: "jti-1", TokenSHA256: "0123456789abcdef",
	}
	if err := l.Write(rec); err != nil {
		t.Fatal(err)
	}
	rec.Decision, rec.Code, rec.Reason = audit.Deny, "PermissionDenied", "caller may not use customer_org"
	if err := l.Write(rec); err != nil {
		t.Fatal(err)
	}
	got := lines(t, buf.Bytes())
	if len(got) != 2 {
		t.Fatalf("%d lines for 2 records:\n%s", len(got), buf.String())
	}
	want := map[string]any{
		"time": "2026-11-29T17:00:00Z", "caller": "spiffe://example.org/billing", "method": "/tokenbroker.v1.TokenBrokerService/GetToken",
		"client": "smartcloud", "kid": "kid-1", "customer_org": "310904473", "external_ref": "tenant-1",
		"resource": "https://api.example/", "decision": "allow", "code": "OK", "cache_hit": true,
		"upstream_latency_ms": 1.5, "token_jti": "jti-1", "token_sha256": "0123456789abcdef",
	}
	for k, v := range want {
		if got[0][k] != v {
			t.Errorf("%s = %v, want %v", k, got[0][k], v)
		}
	}
	if got[1]["decision"] != "deny" || got[1]["reason"] != "caller may not use customer_org" {
		t.Errorf("second record = %v", got[1])
	}
	if _, ok := got[0]["reason"]; ok {
		t.Error("an empty reason is written")
	}
}

// TestWriteFillsTimeInUTC: a record without a time gets the current one,
// in UTC like every other.
func TestWriteFillsTimeInUTC(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	before := time.Now().Truncate(time.Second)
	if err := audit.New(&buf).Write(audit.Record{Caller: "c", Method: "m", Decision: audit.Error, Code: "Internal"}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	s, _ := lines(t, buf.Bytes())[0]["time"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !strings.HasSuffix(s, "Z") {
		t.Fatalf("time %q: %v, want RFC 3339 in UTC", s, err)
	}
	if at.Before(before) || at.After(after) {
		t.Errorf("time %v, want between %v and %v", at, before, after)
	}
}

// TestWriteTruncatesLongFields: every string field, and every scope, is cut
// to 256 bytes (with "..."), and at most 32 scopes are kept, so that a huge
// bad request makes a small line.
func TestWriteTruncatesLongFields(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 10_000)
	exact := strings.Repeat("y", 256)
	scopes := make([]string, 100)
	for i := range scopes {
		scopes[i] = long
	}
	var buf bytes.Buffer
	rec := audit.Record{Caller: long, Method: "m", Client: long, KeyID: long, CustomerOrg: long, ExternalRef: long,
		Resource: exact, Reason: long, Scopes: scopes, Decision: audit.Invalid, Code: "InvalidArgument"}
	if err := audit.New(&buf).Write(rec); err != nil {
		t.Fatal(err)
	}
	if buf.Len() > 32*262+8*262+512 {
		t.Errorf("a record of huge fields made a %d-byte line", buf.Len())
	}
	got := lines(t, buf.Bytes())[0]
	cut := strings.Repeat("x", 256) + "..."
	for _, k := range []string{"caller", "client", "kid", "customer_org", "external_ref", "reason"} {
		if got[k] != cut {
			t.Errorf("%s: %d bytes, want cut to 256 and marked", k, len(got[k].(string)))
		}
	}
	if got["resource"] != exact {
		t.Error("a field of exactly 256 bytes was cut")
	}
	sc, _ := got["scopes"].([]any)
	if len(sc) != 32 {
		t.Fatalf("%d scopes written, want 32", len(sc))
	}
	for i, s := range sc {
		if s != cut {
			t.Errorf("scope %d not cut", i)
		}
	}
}

func TestNilLogDiscards(t *testing.T) {
	t.Parallel()
	var l *audit.Log
	if err := l.Write(audit.Record{Caller: "c"}); err != nil {
		t.Errorf("nil log: %v", err)
	}
}

type failingWriter struct{}

var errDiskFull = errors.New("disk full")

func (failingWriter) Write([]byte) (int, error) { return 0, errDiskFull }

func TestWriteReturnsWriterError(t *testing.T) {
	t.Parallel()
	if err := audit.New(failingWriter{}).Write(audit.Record{Caller: "c"}); !errors.Is(err, errDiskFull) {
		t.Errorf("error = %v, want the writer's", err)
	}
}

// TestConcurrentWritesKeepLinesWhole: records written at once never
// interleave.
func TestConcurrentWritesKeepLinesWhole(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := audit.New(&buf)
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := l.Write(audit.Record{Caller: strings.Repeat(string(rune('a'+w)), 200), Method: "m", Decision: audit.Allow}); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	got := lines(t, buf.Bytes())
	if len(got) != writers*each {
		t.Fatalf("%d lines, want %d", len(got), writers*each)
	}
	for _, m := range got {
		c, _ := m["caller"].(string)
		if len(c) != 200 || strings.Count(c, c[:1]) != 200 {
			t.Fatalf("interleaved record: %v", m)
		}
	}
}
