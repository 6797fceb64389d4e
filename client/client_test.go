package tokenbrokerclient

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// fakeBroker answers GetToken with tokens expiring expiresIn after now, or
// with err; it records the requests and whether they had a deadline.
type fakeBroker struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	now       func() time.Time
	expiresIn time.Duration
	err       error
	empty     bool

	mu        sync.Mutex
	reqs      []*tokenbrokerv1.GetTokenRequest
	deadlines []bool
}

func (f *fakeBroker) GetToken(ctx context.Context, r *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, r)
	_, ok := ctx.Deadline()
	f.deadlines = append(f.deadlines, ok)
	if f.err != nil {
		return nil, f.err
	}
	if f.empty {
		return &tokenbrokerv1.GetTokenResponse{}, nil
	}
	return &tokenbrokerv1.GetTokenResponse{
		AccessToken: "token-" + string(rune('0'+len(f.reqs))), TokenType: "Bearer",
		ExpiresAt: timestamppb.New(f.now().Add(f.expiresIn)),
	}, nil
}

func (f *fakeBroker) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

// dialFake serves f over an in-memory connection.
func dialFake(t *testing.T, f *fakeBroker) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(srv, f)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return conn
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestTokenSourceReusesTokenWhileItLives: the last token is handed out while
// it lives MinValidity more, and a new one is asked for after.
func TestTokenSourceReusesTokenWhileItLives(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	f := &fakeBroker{now: clk.now, expiresIn: 120 * time.Second}
	scopes := []string{"a:b", "c:d"}
	ts := NewTokenSource(dialFake(t, f), Request{Client: "smartcloud", CustomerOrg: "310904473", Scopes: scopes,
		ExternalRef: "tenant-1", Resource: "https://api.example/", MinValidity: time.Minute})
	ts.now = clk.now
	scopes[0] = "changed:after"
	first, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	clk.advance(59 * time.Second) // 61 s left
	if again, err := ts.TokenContext(context.Background()); err != nil || again.AccessToken != first.AccessToken {
		t.Fatalf("61 s left: %v, %v; want the same token", again, err)
	}
	if n := f.calls(); n != 1 {
		t.Fatalf("%d calls, want 1", n)
	}
	clk.advance(2 * time.Second) // 59 s left: less than a minute
	next, err := ts.Token()
	if err != nil || next.AccessToken == first.AccessToken || f.calls() != 2 {
		t.Fatalf("59 s left: %v, %v after %d calls; want a new token", next, err, f.calls())
	}
	if next.TokenType != "Bearer" || !next.Expiry.Equal(clk.now().Add(120*time.Second)) {
		t.Errorf("token = %+v", next)
	}
	want := &tokenbrokerv1.GetTokenRequest{Client: "smartcloud", CustomerOrg: "310904473", Scopes: []string{"a:b", "c:d"},
		ExternalRef: "tenant-1", Resource: "https://api.example/"}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.reqs {
		got := proto.Clone(r).(*tokenbrokerv1.GetTokenRequest)
		if got.GetMinValidity().AsDuration() != time.Minute {
			t.Errorf("call %d: min_validity %v, want 1m", i, got.GetMinValidity().AsDuration())
		}
		got.MinValidity = nil
		if !proto.Equal(got, want) {
			t.Errorf("call %d: %v, want %v", i, got, want)
		}
		if !f.deadlines[i] {
			t.Errorf("call %d had no deadline", i)
		}
	}
}

func TestTokenSourceDefaults(t *testing.T) {
	t.Parallel()
	ts := NewTokenSource(dialFake(t, &fakeBroker{now: time.Now, expiresIn: time.Minute}), Request{CustomerOrg: "310904473", Scopes: []string{"a:b"}})
	if ts.req.MinValidity != 30*time.Second || ts.req.Timeout != 10*time.Second {
		t.Errorf("defaults: min validity %v, timeout %v; want 30s and 10s", ts.req.MinValidity, ts.req.Timeout)
	}
}

func TestTokenSourceErrors(t *testing.T) {
	t.Parallel()
	f := &fakeBroker{now: time.Now, err: status.Error(codes.FailedPrecondition, "no approved system user")}
	ts := NewTokenSource(dialFake(t, f), Request{CustomerOrg: "310904473", Scopes: []string{"a:b"}})
	if _, err := ts.Token(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("broker error: %v, want its FailedPrecondition", err)
	}
	empty := NewTokenSource(dialFake(t, &fakeBroker{now: time.Now, empty: true}), Request{CustomerOrg: "310904473", Scopes: []string{"a:b"}})
	if tok, err := empty.Token(); err == nil {
		t.Errorf("answer without a token: %v, want an error", tok)
	}
	// A failure leaves nothing cached: the next call asks again.
	if _, err := ts.Token(); err == nil || f.calls() != 2 {
		t.Errorf("second call after a failure: %v after %d calls", err, f.calls())
	}
}

// TestDialMTLSFiles: the CA, certificate and key files are read at dial
// time; a missing or wrong one is an error naming it.
func TestDialMTLSFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	caPath := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key := ca.Issue(t, tlstest.Leaf{CN: "billing"}).WriteFiles(t, dir, "billing")
	notPEM := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(notPEM, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := DialMTLS("127.0.0.1:1", caPath, cert, key)
	if err != nil {
		t.Fatalf("good files: %v", err)
	}
	conn.Close()
	for name, files := range map[string][3]string{
		"missing_ca": {filepath.Join(dir, "absent.pem"), cert, key},
		"ca_not_pem": {notPEM, cert, key},
		"bad_cert":   {caPath, notPEM, key},
		"key_swap":   {caPath, key, cert},
	} {
		if c, err := DialMTLS("127.0.0.1:1", files[0], files[1], files[2]); err == nil {
			c.Close()
			t.Errorf("%s: dialled", name)
		} else if !strings.Contains(err.Error(), "tokenbrokerclient") {
			t.Errorf("%s: %v, want an error of this package", name, err)
		}
	}
	for _, dial := range []func() (*grpc.ClientConn, error){
		func() (*grpc.ClientConn, error) { return DialUnix(filepath.Join(dir, "tb.sock")) },
		func() (*grpc.ClientConn, error) { return DialInsecure("127.0.0.1:1") },
	} {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}
