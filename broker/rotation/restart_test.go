package rotation_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// countingRegistry counts reads of the registration.
type countingRegistry struct {
	*fakeRegistry
	reads atomic.Int64
}

func (c *countingRegistry) Keys(ctx context.Context, id string) ([]rotation.Registered, error) {
	c.reads.Add(1)
	return c.fakeRegistry.Keys(ctx, id)
}

// A store that lost a client's state after a rotation must not make a
// rotator that starts afresh (a restarted broker, `keys rotate`) start over
// from the config's key, which the rotation removed from the registration:
// it would make and register yet another key while the one in use stays
// registered with no owner. CheckState, the pass, the dry run and the
// status all say the state was lost and how to recover; nothing is made or
// registered.
func TestRestartRefusesALostState(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	reg := &countingRegistry{fakeRegistry: w.reg}
	r := w.rotator(t, func(c *rotation.Config) { c.Registry = reg })
	if _, err := r.Pass(ctx, rotation.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	w.advance(rotation.DefaultGrace)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("%+v %v", rep, err)
	}
	inUse := rep.Active
	st, _ := w.store.Load(ctx, "smartcloud")
	if st.LastFinished.IsZero() || !st.LastFinished.Equal(w.clock()) {
		t.Errorf("the finished rotation is not dated: %+v", st)
	}

	// A state that holds keys is not checked against the registration.
	before := reg.reads.Load()
	if err := r.CheckState(ctx, st); err != nil || reg.reads.Load() != before {
		t.Fatalf("CheckState of a full state: %v, %d reads", err, reg.reads.Load()-before)
	}

	w.store.mu.Lock()
	delete(w.store.states, "smartcloud")
	w.store.mu.Unlock()
	registered := w.reg.kids()
	fresh := w.rotator(t, func(c *rotation.Config) { c.Registry = reg })

	err = fresh.CheckState(ctx, rotation.State{})
	if !errors.Is(err, rotation.ErrStateLost) {
		t.Fatalf("CheckState: %v, want ErrStateLost", err)
	}
	for _, want := range []string{"client smartcloud is empty", "config key config-kid is no longer registered",
		"registered: " + inUse, inUse + " is named as the rotation names its keys", "restore the state", "`keys:` with `active: true`"} {
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			t.Errorf("CheckState's error lacks %q: %v", want, err)
		}
	}
	for name, opts := range map[string]rotation.Options{"forced": {Force: true}, "due": {}, "dry run": {DryRun: true, Force: true}} {
		if _, err := fresh.Pass(ctx, opts); !errors.Is(err, rotation.ErrStateLost) {
			t.Errorf("%s pass on a lost state: %v", name, err)
		}
	}
	if w.maker.made != 1 || !slices.Equal(w.reg.kids(), registered) {
		t.Fatalf("made %d keys, registered %v (was %v)", w.maker.made, w.reg.kids(), registered)
	}
	status, err := fresh.Status(ctx)
	if err != nil || !strings.Contains(status.StateLost, "config key config-kid is no longer registered") {
		t.Fatalf("status %+v, %v", status, err)
	}
}

// A client that never rotated has an empty state and its config key
// registered: nothing is lost, and its first rotation goes on.
func TestFirstRotationIsNotALostState(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	r := w.rotator(t, nil)
	if err := r.CheckState(ctx, rotation.State{}); err != nil {
		t.Fatal(err)
	}
	status, err := r.Status(ctx)
	if err != nil || status.StateLost != "" {
		t.Fatalf("status %+v, %v", status, err)
	}
	if rep, err := r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("first rotation: %+v %v", rep, err)
	}
}

func TestMadeKID(t *testing.T) {
	for kid, want := range map[string]bool{
		"0b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a90":    true,
		"sc-0b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a90": true,
		"smartcloud-2026":                         false,
		"":                                        false,
		"sc-0b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a9x": false,
	} {
		if got := rotation.MadeKID(kid); got != want {
			t.Errorf("MadeKID(%q) = %v", kid, got)
		}
	}
}
