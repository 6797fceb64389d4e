package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// memShared is an in-memory SharedCache: what the broker asks of the
// second level, without Redis (broker/sharedcache tests the real one).
type memShared struct {
	mu    sync.Mutex
	toks  map[string]*maskinporten.Token
	calls atomic.Int64
	keys  []string
}

var _ broker.SharedCache = (*memShared)(nil)

func (s *memShared) Fetch(ctx context.Context, key string, fresh func(*maskinporten.Token) bool,
	fetch func(context.Context) (*maskinporten.Token, error)) (*maskinporten.Token, error) {
	s.calls.Add(1)
	s.mu.Lock()
	s.keys = append(s.keys, key)
	t := s.toks[key]
	s.mu.Unlock()
	if t != nil && fresh(t) {
		return t, nil
	}
	tok, err := fetch(ctx)
	if err == nil {
		s.mu.Lock()
		s.toks[key] = tok
		s.mu.Unlock()
	}
	return tok, err
}

func (s *memShared) Health() broker.SharedHealth { return broker.SharedHealth{Up: true} }

// Two brokers on one second level: the second serves the first's token
// (cached), asking the level once however many callers miss; a token due
// for renewal is not taken from the level but fetched; the level's key
// covers the whole cache key.
func TestSharedLevel(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	src := &fakeSource{lifetime: 120 * time.Second, now: clk.Now}
	shared := &memShared{toks: map[string]*maskinporten.Token{}}
	mk := func() *broker.Broker {
		b, err := broker.New(broker.Config{Policy: policy.AllowAll(), Now: clk.Now, SweepInterval: -1, Shared: shared,
			Clients: []broker.Client{{Name: "demo", Scopes: []string{scope, "other:scope"}, Source: src}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	a, b := mk(), mk()
	first, err := a.GetToken(context.Background(), req("310904473"))
	if err != nil || first.Cached {
		t.Fatalf("first: %v, %v", first, err)
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := b.GetToken(context.Background(), req("310904473"))
			if err != nil || !tok.Cached || tok.AccessToken != first.AccessToken {
				t.Errorf("second broker: %v, %v; want the first one's token, cached", tok, err)
			}
		}()
	}
	wg.Wait()
	if src.calls.Load() != 1 || shared.calls.Load() != 2 {
		t.Fatalf("%d fetches, %d asks of the shared level; want 1 and 2 (one per broker)", src.calls.Load(), shared.calls.Load())
	}
	if k := shared.keys[0]; !strings.Contains(k, "310904473") || !strings.Contains(k, "demo") || !strings.Contains(k, scope) {
		t.Errorf("shared key %q does not cover the cache key", k)
	}
	// In the refresh window a token from the level would be renewed at
	// once: a new one is fetched.
	clk.Advance(10 * time.Second)
	if _, err := b.GetToken(context.Background(), req("310904473")); err != nil { // in use since it arrived
		t.Fatal(err)
	}
	clk.Advance(90 * time.Second)
	b.Sweep()
	waitFor(t, "the refresh", func() bool { return b.Health().InFlight == 0 && src.calls.Load() == 2 })
	tok, err := a.GetToken(context.Background(), broker.Request{CustomerOrg: "310904473", Scopes: []string{scope}, MinValidity: 60 * time.Second})
	if err != nil || src.calls.Load() != 2 || tok.ExpiresAt.Sub(clk.Now()) < 60*time.Second {
		t.Fatalf("after b's refresh, a: %v, %v, %d fetches; want b's new token from the level", tok, err, src.calls.Load())
	}
}

// A permanent refusal the level returns is remembered in process for the
// negative TTL like one from Maskinporten.
func TestSharedLevelRefusal(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	src := &fakeSource{lifetime: 120 * time.Second, now: clk.Now,
		err: &maskinporten.Error{StatusCode: 400, Code: "invalid_grant", MPCode: "MP-303", Description: "MP-303"}}
	shared := &memShared{toks: map[string]*maskinporten.Token{}}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), Now: clk.Now, SweepInterval: -1, Shared: shared,
		Clients: []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: src}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	for range 3 {
		if _, err := b.GetToken(context.Background(), req("310904473")); !errors.Is(err, maskinporten.ErrNoSystemUser) {
			t.Fatalf("%v; want ErrNoSystemUser", err)
		}
	}
	if shared.calls.Load() != 1 {
		t.Fatalf("%d asks of the shared level; want 1, then the local negative entry", shared.calls.Load())
	}
}
