package rotation_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// A store that lost a client's state (Redis restarted without persistence,
// an eviction, FLUSHALL, a deleted state file) must not make a running
// rotator start over from the config's key: that key was removed from the
// registration by the first rotation, and starting over would make and
// register yet another key while the one in use is forgotten.
func TestRotationRefusesAStateThatWentBack(t *testing.T) {
	w := newWorld(t)
	r := w.rotator(t, nil)
	ctx := context.Background()
	if _, err := r.Pass(ctx, rotation.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	w.advance(rotation.DefaultGrace)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("%+v %v", rep, err)
	}
	before := w.reg.kids()
	w.store.mu.Lock()
	delete(w.store.states, "smartcloud")
	w.store.mu.Unlock()
	w.advance(time.Minute)
	if _, err := r.Pass(ctx, rotation.Options{}); err == nil {
		t.Fatal("a pass went on from a lost state")
	}
	if w.maker.made != 1 || !slices.Equal(w.reg.kids(), before) {
		t.Fatalf("made %d keys, registered %v (was %v)", w.maker.made, w.reg.kids(), before)
	}
	st, _ := w.store.Load(ctx, "smartcloud")
	if st.LastOutcome != rotation.OutcomeFailed || st.LastError == "" {
		t.Fatalf("the failure is not in the state for the alert: %+v", st)
	}
}

// A follower never applies a state that went back from the one it applied:
// it would switch every replica to a key Maskinporten no longer accepts.
func TestFollowRefusesAStateThatWentBack(t *testing.T) {
	store := newMemStore()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	last := rotation.State{Active: "k1", Keys: []rotation.ManagedKey{{KID: "k1", URI: "mem:k1"}}, Retired: []string{"config-kid"},
		LastRotation: now}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reads := make(chan error)
	var applied atomic.Int64
	go rotation.Follow(ctx, store, "smartcloud", time.Millisecond, last,
		func(context.Context, rotation.State) error { applied.Add(1); return nil },
		func(_ rotation.State, err error) {
			select {
			case reads <- err:
			case <-ctx.Done():
			}
		})
	// The state is gone.
	if err := <-reads; err == nil {
		t.Fatal("a lost state read without error")
	}
	// An older state put back.
	l, _ := store.Lease(ctx, "smartcloud", time.Minute)
	_ = l.Save(ctx, rotation.State{Active: "k0", Keys: []rotation.ManagedKey{{KID: "k0", URI: "mem:k0"}}, LastRotation: now.Add(-90 * 24 * time.Hour)})
	for range 2 {
		<-reads
	}
	if err := <-reads; err == nil {
		t.Fatal("an older state read without error")
	}
	cancel()
	if applied.Load() != 0 {
		t.Fatalf("applied %d states that went back", applied.Load())
	}
}
