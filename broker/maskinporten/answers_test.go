package maskinporten_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// TestNoSystemUserByEitherCode: MP-303 alone, or the error code alone,
// means the customer has no approved system user.
func TestNoSystemUserByEitherCode(t *testing.T) {
	t.Parallel()
	for _, e := range []*maskinporten.Error{
		{StatusCode: 400, MPCode: "MP-303"},
		{StatusCode: 400, Code: "invalid_altinn_customer_configuration"},
	} {
		if !e.NoSystemUser() || !errors.Is(e, maskinporten.ErrNoSystemUser) {
			t.Errorf("%v: not a missing system user", e)
		}
	}
	if e := (&maskinporten.Error{StatusCode: 400, Code: "invalid_scope", MPCode: "MP-200"}); e.NoSystemUser() {
		t.Errorf("%v: taken for a missing system user", e)
	}
}

// TestRefusalIsNotBreakerFailure: Maskinporten refusing a grant (400) is
// an answer: the circuit stays closed.
func TestRefusalIsNotBreakerFailure(t *testing.T) {
	t.Parallel()
	br := breaker.New(breaker.Config{Failures: 1, OpenFor: time.Hour})
	c := newHooked(t, time.Now(), br, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		fmt.Fprint(w, `{"error":"invalid_grant","error_description":"MP-110: invalid audience"}`)
	})
	if _, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}}); err == nil {
		t.Fatal("a refused grant gave a token")
	}
	if br.Open() {
		t.Error("a refusal opened the breaker")
	}
}

// TestOpenCircuitIsNotRetried: with the circuit open, Token fails at once,
// after one attempt, without retries.
func TestOpenCircuitIsNotRetried(t *testing.T) {
	t.Parallel()
	br := breaker.New(breaker.Config{Failures: 1, OpenFor: time.Hour})
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, "down", http.StatusServiceUnavailable)
		return true
	})
	var attempts atomic.Int64
	c, err := maskinporten.New(maskinporten.Config{
		ClientID:    testClientID,
		Key:         signertest.Key(t, signertest.KeyA, "kid-a"),
		Environment: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"},
		Retry:       maskinporten.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
		Breaker:     br,
		OnAttempt:   func(time.Duration, error) { attempts.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}}); err == nil || !br.Open() {
		t.Fatalf("503: %v, breaker open %v; want an error and an open circuit", err, br.Open())
	}
	attempts.Store(0)
	_, err = c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}})
	var me *maskinporten.Error
	if !errors.As(err, &me) || !me.CircuitOpen {
		t.Fatalf("with the circuit open: %v, want CircuitOpen", err)
	}
	if n := attempts.Load(); n > 1 {
		t.Errorf("%d attempts with the circuit open, want at most 1 (no retries)", n)
	}
	if n := emu.Requests(); n != 1 {
		t.Errorf("%d grants reached Maskinporten, want 1 (the one that opened the circuit)", n)
	}
}

// TestTokenAnswerNeedsPositiveExpiresIn: an answer without a lifetime is
// not a token.
func TestTokenAnswerNeedsPositiveExpiresIn(t *testing.T) {
	t.Parallel()
	for _, expiresIn := range []string{"0", "-5"} {
		c := newHooked(t, time.Now(), nil, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"access_token":"opaque","token_type":"Bearer","expires_in":%s}`, expiresIn)
		})
		if tok, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}}); err == nil {
			t.Errorf("expires_in %s: token %v, want an error", expiresIn, tok)
		}
	}
}

// TestHugeAnswerRefused: an answer larger than the client reads is refused
// as such, not parsed cut short.
func TestHugeAnswerRefused(t *testing.T) {
	t.Parallel()
	c := newHooked(t, time.Now(), nil, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"opaque","token_type":"Bearer","expires_in":120,"pad":"%s"}`, strings.Repeat("x", 300<<10))
	})
	_, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}})
	var me *maskinporten.Error
	if !errors.As(err, &me) || !strings.Contains(me.Description, "too large") {
		t.Errorf("300 KiB answer: %v, want refused as too large", err)
	}
}

// TestAttemptTimeoutEndsHangingAttempt: an upstream that never answers
// costs one attempt timeout, not the caller's patience. The HTTP client
// has no timeout of its own here, so only the attempt timeout can end it.
func TestAttemptTimeoutEndsHangingAttempt(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return true
	})
	c, err := maskinporten.New(maskinporten.Config{
		ClientID:       testClientID,
		Key:            signertest.Key(t, signertest.KeyA, "kid-a"),
		Environment:    maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"},
		HTTPClient:     &http.Client{},
		AttemptTimeout: 50 * time.Millisecond,
		Retry:          maskinporten.RetryPolicy{MaxAttempts: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}})
		errc <- err
	}()
	select {
	case err := <-errc:
		var me *maskinporten.Error
		if !errors.As(err, &me) || !me.Retryable {
			t.Errorf("hanging upstream: %v, want a retryable error", err)
		}
	case <-time.After(time.Minute): // 1,200 attempt timeouts: not a margin
		t.Fatal("a 50 ms attempt timeout did not end a hanging attempt within a minute")
	}
}
