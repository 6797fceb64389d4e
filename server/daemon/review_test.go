package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/server/logtest"
)

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = logtest.Buffer

// startOperator serves a trivial handler on the operator endpoints'
// server and returns its address.
func startOperator(t *testing.T) string {
	t.Helper()
	log := &syncBuffer{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	stop, err := serveHTTP(context.Background(), "127.0.0.1:0", h, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	m := regexp.MustCompile(`"readyz":"http://([^/]+)/readyz"`).FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("no address in %s", log.String())
	}
	return m[1]
}

// TestOperatorEndpointsBoundHeaders (review): the operator endpoints
// (http_listen) need no authentication, yet took a megabyte of headers
// per request (Go's default).
func TestOperatorEndpointsBoundHeaders(t *testing.T) {
	t.Parallel()
	addr := startOperator(t)
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Filler", strings.Repeat("a", 256<<10))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("256 KiB of headers: %s, want 431", resp.Status)
		}
	}
}

// TestOperatorEndpointsCloseIdleConnections (review): a keep-alive
// connection to the operator endpoints stayed open for ever once idle
// (no IdleTimeout nor ReadTimeout), so that anyone who could reach the
// port could hold any number of them, and with them the file descriptors
// the gRPC listener needs. Not parallel: it shortens the idle timeout.
func TestOperatorEndpointsCloseIdleConnections(t *testing.T) {
	defer func(d time.Duration) { operatorIdleTimeout = d }(operatorIdleTimeout)
	operatorIdleTimeout = 50 * time.Millisecond
	addr := startOperator(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// The server closes the idle connection: the read ends. The deadline
	// only keeps a broken build from hanging the suite.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle keep-alive connection: read gave %v, want EOF (closed by the server)", err)
	}
}
