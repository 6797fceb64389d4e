package maskinporten_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// newHooked returns a client whose token endpoint is the emulator with
// hook answering every request, at the fixed time now.
func newHooked(t *testing.T, now time.Time, br *breaker.Breaker, hook func(w http.ResponseWriter, r *http.Request)) *maskinporten.Client {
	t.Helper()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool { hook(w, r); return true })
	c, err := maskinporten.New(maskinporten.Config{
		ClientID:    testClientID,
		Key:         signertest.Key(t, signertest.KeyA, "kid-a"),
		Environment: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"},
		Now:         func() time.Time { return now },
		Retry:       maskinporten.RetryPolicy{MaxAttempts: 1},
		Breaker:     br,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTokenExpLaterThanExpiresInNotTrusted: the token's own exp only ever
// shortens what expires_in says; a later exp is not believed.
func TestTokenExpLaterThanExpiresInNotTrusted(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name string
		exp  time.Duration
		want time.Duration
	}{
		{"exp_later", time.Hour, 60 * time.Second},
		{"exp_earlier", 30 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			payload := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"exp":%d,"iat":%d,"jti":"j1"}`, now.Add(tc.exp).Unix(), now.Unix())))
			c := newHooked(t, now, nil, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"access_token":"eyJhbGciOiJSUzI1NiJ9.%s.c2ln","token_type":"Bearer","expires_in":60}`, payload)
			})
			tok, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg})
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.ExpiresAt.Sub(now); got != tc.want {
				t.Errorf("token expires %v after issue, want %v (expires_in 60 s, exp %v)", got, tc.want, tc.exp)
			}
		})
	}
}

// TestCallerGivingUpIsNotBreakerFailure: a caller that cancels while
// Maskinporten is still answering does not count against Maskinporten; an
// unanswered call (503) does.
func TestCallerGivingUpIsNotBreakerFailure(t *testing.T) {
	t.Parallel()
	br := breaker.New(breaker.Config{Failures: 1, OpenFor: time.Hour})
	arrived := make(chan struct{}, 1)
	fail := make(chan bool, 1)
	c := newHooked(t, time.Now(), br, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if <-fail {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	fail <- false
	go func() {
		_, err := c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg})
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("cancelled call returned a token")
	}
	if br.Open() {
		t.Fatal("a caller giving up opened the breaker")
	}
	// The control: one real failure opens it (Failures: 1).
	fail <- true
	if _, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg}); err == nil {
		t.Fatal("503 gave a token")
	}
	if !br.Open() {
		t.Error("a 503 did not open the breaker: the test cannot tell")
	}
}
