package broker_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// TestRefreshWaitsHalfTheLifetime: a short-lived token is refreshed from
// half its lifetime on, even when the refresh margin is longer than that
// (60 s margin, 60 s token): not at once after every fetch.
func TestRefreshWaitsHalfTheLifetime(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	src := &fakeSource{lifetime: 60 * time.Second, now: clk.Now}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), SweepInterval: -1, Now: clk.Now,
		Clients: []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: src}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := req("310904473")
	r.MinValidity = time.Second
	if _, err := b.GetToken(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	// Refreshes start inside GetToken, so the counter is exact.
	clk.Advance(10 * time.Second)
	if tok, err := b.GetToken(context.Background(), r); err != nil || !tok.Cached {
		t.Fatalf("10 s in: %v", err)
	}
	if n := b.Health().Refreshes; n != 0 {
		t.Errorf("%d refreshes 10 s into a 60 s token, want 0 (due from 27-30 s)", n)
	}
	clk.Advance(21 * time.Second) // 31 s in: due
	if tok, err := b.GetToken(context.Background(), r); err != nil || !tok.Cached {
		t.Fatalf("31 s in: %v", err)
	}
	if n := b.Health().Refreshes; n != 1 {
		t.Errorf("%d refreshes 31 s into a 60 s token, want 1", n)
	}
	waitFor(t, "the refresh", func() bool { return b.Health().InFlight == 0 })
}

// TestAltinnRejectsTwiceGivesUp: Altinn refusing the fresh Maskinporten
// token too ends the call; the broker does not loop on grants.
func TestAltinnRejectsTwiceGivesUp(t *testing.T) {
	t.Parallel()
	env := newEmuEnv(t, emuOptions{})
	env.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == maskinportentest.ExchangePath {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	r := req("310904473")
	r.Kind = broker.KindAltinn
	_, err := env.b.GetToken(context.Background(), r)
	if err == nil {
		t.Fatal("a token although Altinn refuses every exchange")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v", err)
	}
	if n := env.emu.Requests(); n != 2 {
		t.Errorf("%d grants, want 2 (the first token and one fresh one)", n)
	}
}
