package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// TestEmptyCallerDoesNotSkipPolicy: a call without a caller identity is
// checked like any other, and refused before anything reaches Maskinporten.
func TestEmptyCallerDoesNotSkipPolicy(t *testing.T) {
	t.Parallel()
	pol, err := policy.New([]policy.Rule{{Callers: []string{"unix:billing"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{lifetime: time.Minute, now: time.Now}
	b, err := broker.New(broker.Config{Policy: pol, SweepInterval: -1,
		Clients: []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: src}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := req("310904473")
	if _, err := b.GetToken(context.Background(), r); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("empty caller: %v, want ErrPermissionDenied", err)
	}
	r.Caller = "unix:billing"
	if _, err := b.GetToken(context.Background(), r); err != nil {
		t.Fatalf("named caller: %v", err)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("%d upstream calls, want 1 (the named caller's)", n)
	}
}

// TestCacheKeyIncludesClientName: two clients whose sources share key id
// and environment, asked for the same org and scopes, get each its own
// token.
func TestCacheKeyIncludesClientName(t *testing.T) {
	t.Parallel()
	now := func() time.Time { return time.Unix(1_800_000_000, 0) }
	a := &fakeSource{lifetime: 2 * time.Minute, now: now}
	bsrc := &fakeSource{lifetime: 2 * time.Minute, now: now}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), SweepInterval: -1, Now: now, Clients: []broker.Client{
		{Name: "a", Scopes: []string{scope}, Source: a},
		{Name: "b", Scopes: []string{scope}, Source: bsrc},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		r := req("310904473")
		r.Client = name
		tok, err := b.GetToken(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if tok.Cached || tok.Client != name {
			t.Errorf("client %s: cached %v from client %q, want a fresh token of its own", name, tok.Cached, tok.Client)
		}
	}
	if a.calls.Load() != 1 || bsrc.calls.Load() != 1 {
		t.Errorf("fetches: a %d, b %d, want 1 each", a.calls.Load(), bsrc.calls.Load())
	}
}

// TestCreateSystemUserRequestExternalRefRuleRefusesNoExternalRef: a caller
// whose rule lists external_refs may not create a request without one.
func TestCreateSystemUserRequestExternalRefRuleRefusesNoExternalRef(t *testing.T) {
	t.Parallel()
	pol, err := policy.New([]policy.Rule{{Callers: []string{"unix:billing"}, Clients: []string{"*"}, Scopes: []string{"*"},
		CustomerOrgs: []string{"*"}, ExternalRefs: []string{"tenant-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	v := &recordingVendor{}
	src := &fakeSource{lifetime: 10 * time.Minute, now: time.Now}
	b, err := broker.New(broker.Config{Policy: pol, SweepInterval: -1, Clients: []broker.Client{{
		Name: "demo", Scopes: []string{scope}, Source: src, Exchanger: passExchanger{}, SystemID: "991825827_demo", Vendor: v,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	p := broker.SystemUserRequestParams{Caller: "unix:billing", CustomerOrg: "310904473", Rights: []string{"r"}}
	if _, err := b.CreateSystemUserRequest(ctx, p); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("no external_ref: %v, want ErrPermissionDenied", err)
	}
	if src.calls.Load() != 0 || v.calls != 0 {
		t.Errorf("a refused request reached upstream: %d token fetches, %d vendor calls", src.calls.Load(), v.calls)
	}
	p.ExternalRef = "tenant-1"
	if _, err := b.CreateSystemUserRequest(ctx, p); err != nil {
		t.Errorf("external_ref tenant-1: %v", err)
	}
}

// TestRevokedSystemUserDropsCachedToken: when the refresh of a cached token
// gets MP-303 (the customer revoked the system user), the cached token is
// dropped: the next call gets the refusal, not the old token.
func TestRevokedSystemUserDropsCachedToken(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	src := &fakeSource{lifetime: 120 * time.Second, now: clk.Now}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), SweepInterval: -1, Now: clk.Now,
		Clients: []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: src}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if _, err := b.GetToken(ctx, req("310904473")); err != nil {
		t.Fatal(err)
	}
	// Revoked; the token is due for refresh (60 s margin) but still valid
	// for longer than the default min_validity.
	src.err = &maskinporten.Error{StatusCode: 400, Code: "invalid_altinn_customer_configuration", MPCode: "MP-303"}
	clk.Advance(70 * time.Second)
	tok, err := b.GetToken(ctx, req("310904473"))
	if err != nil || !tok.Cached {
		t.Fatalf("call that starts the refresh: %v, %v; want the cached token", tok, err)
	}
	waitFor(t, "the refresh", func() bool { return src.calls.Load() == 2 && b.Health().InFlight == 0 })
	tok, err = b.GetToken(ctx, req("310904473"))
	if !errors.Is(err, maskinporten.ErrNoSystemUser) {
		t.Fatalf("after revocation: %v, %v; want ErrNoSystemUser", tok, err)
	}
}
