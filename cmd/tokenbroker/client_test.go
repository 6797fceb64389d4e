package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerclient "github.com/tokenbroker/tokenbroker/client"
)

// TestGoClient uses the Go client package against a running broker (dev
// mode): an oauth2 http.Client carries system user tokens to an API, reuses
// the token while it lives, and surfaces the broker's errors.
func TestGoClient(t *testing.T) {
	t.Parallel()
	env, _, _, stop := startDev(t)
	ctx := context.Background()
	var mu sync.Mutex
	var seen []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	defer api.Close()

	conn, err := tokenbrokerclient.DialInsecure(env.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ts := tokenbrokerclient.NewTokenSource(conn, tokenbrokerclient.Request{CustomerOrg: "310904473", Scopes: []string{devScope}, MinValidity: time.Minute})
	httpClient := oauth2.NewClient(ctx, ts)
	for i := 0; i < 3; i++ {
		resp, err := httpClient.Get(api.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || !strings.HasPrefix(seen[0], "Bearer ey") || seen[1] != seen[0] || seen[2] != seen[0] {
		t.Errorf("Authorization headers %d, want 3 equal bearer tokens", len(seen))
	}
	if n := env.Emulator.IssuedTo(env.ClientID); n != 1 {
		t.Errorf("%d tokens issued, want 1", n)
	}
	tok, err := ts.Token()
	if err != nil || time.Until(tok.Expiry) < time.Minute || tok.TokenType != "Bearer" {
		t.Errorf("Token() = %v, %v; want a bearer token valid for a minute", tok.Expiry, err)
	}
	bad := tokenbrokerclient.NewTokenSource(conn, tokenbrokerclient.Request{CustomerOrg: "889640782", Scopes: []string{devScope}})
	if _, err := bad.Token(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("org without system user: %v, want FailedPrecondition", err)
	}
	if err := stop(); err != nil {
		t.Error(err)
	}
}
