package rotation_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// ackStore is a memStore that keeps acks, by a clock of its own (a real
// store's: neither the rotator's nor the replicas').
type ackStore struct {
	*memStore
	mu   sync.Mutex
	now  time.Time
	acks map[string]rotation.Ack
	err  error
}

func newAckStore(s *memStore) *ackStore {
	return &ackStore{memStore: s, now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), acks: map[string]rotation.Ack{}}
}

func (s *ackStore) Ack(_ context.Context, client, replica, kid string, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acks[client+"/"+replica] = rotation.Ack{KID: kid, At: s.now, Expires: s.now.Add(ttl)}
	return nil
}

func (s *ackStore) Acks(_ context.Context, client string) (map[string]rotation.Ack, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	out := map[string]rotation.Ack{}
	for k, a := range s.acks {
		if r, ok := strings.CutPrefix(k, client+"/"); ok && s.now.Before(a.Expires) {
			out[r] = a
		}
	}
	return out, nil
}

func (s *ackStore) advance(d time.Duration) {
	s.mu.Lock()
	s.now = s.now.Add(d)
	s.mu.Unlock()
}

// startRotation runs a rotation up to its grace period on a store that
// keeps acks, and returns the next kid.
func startRotation(t *testing.T) (*world, *ackStore, *rotation.Rotator, string) {
	t.Helper()
	w := newWorld(t)
	s := newAckStore(w.store)
	r := w.rotator(t, func(c *rotation.Config) { c.Store = s; c.FollowEvery = 15 * time.Second })
	rep, err := r.Pass(context.Background(), rotation.Options{Force: true})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting || rep.Next == "" {
		t.Fatalf("start: %+v %v", rep, err)
	}
	return w, s, r, rep.Next
}

// A live replica that still signs with the old key (it could not open the
// new one) keeps the old key registered after the grace period: the pass
// waits, says which replica, and comes back after AckTTL(FollowEvery).
// Once that replica's ack expires (it stopped), the old key is removed.
func TestRotationRetireWaitsForALiveReplicaOnTheOldKey(t *testing.T) {
	ctx := context.Background()
	w, s, r, next := startRotation(t)
	ttl := rotation.AckTTL(15 * time.Second)
	_ = s.Ack(ctx, "smartcloud", "pod-a", next, ttl)
	_ = s.Ack(ctx, "smartcloud", "pod-b", "config-kid", ttl)
	_ = s.Ack(ctx, "other-client", "pod-c", "other-kid", ttl) // another client's: not ours to wait for
	w.advance(rotation.DefaultGrace + time.Minute)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("pass after grace with pod-b on the old key: %+v %v; want waiting", rep, err)
	}
	if got := w.reg.kids(); !slices.Contains(got, "config-kid") {
		t.Fatalf("registered %v: the old key was removed while pod-b signs with it", got)
	}
	want := []rotation.Blocker{{Replica: "pod-b", KID: "config-kid", Expires: s.now.Add(ttl)}}
	if !slices.Equal(rep.Blocking, want) {
		t.Fatalf("report blocking %+v; want %+v", rep.Blocking, want)
	}
	if d := rep.WaitUntil.Sub(w.clock()); d != ttl {
		t.Fatalf("next look in %v; want AckTTL(follow_every) = %v", d, ttl)
	}
	st, _ := s.Load(ctx, "smartcloud")
	if !slices.Equal(st.Blocking, want) || st.LastOutcome != rotation.OutcomeWaiting ||
		!strings.Contains(st.LastError, "replica pod-b still signs with config-kid") || st.Rotation.Step != rotation.StepRetire {
		t.Fatalf("state %+v; want pod-b blocking, at retire", st)
	}
	if len(w.maker.destroyed) != 0 || len(w.applied) != 1 {
		t.Fatalf("destroyed %v, applied %d states; want nothing after activation", w.maker.destroyed, len(w.applied))
	}
	// pod-b stops: pod-a acks on, pod-b's ack runs out by the store's
	// clock. The old key goes.
	s.advance(ttl / 2)
	_ = s.Ack(ctx, "smartcloud", "pod-a", next, ttl)
	s.advance(ttl/2 + time.Millisecond)
	w.advance(ttl)
	rep, err = r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("pass after pod-b's ack expired: %+v %v; want rotated", rep, err)
	}
	if got := w.reg.kids(); !slices.Equal(got, []string{next}) {
		t.Fatalf("registered %v; want %s alone", got, next)
	}
	if st, _ := s.Load(ctx, "smartcloud"); len(st.Blocking) != 0 || st.Rotation != nil || st.LastError != "" {
		t.Fatalf("state after the rotation %+v; want no blocking, no error", st)
	}
}

// Replicas that all sign with the new key, or that never acked (a version
// without acks), or that switched after a wait, do not hold the retire step.
func TestRotationRetireProceedsWhenEveryLiveReplicaSwitched(t *testing.T) {
	ctx := context.Background()
	ttl := rotation.AckTTL(15 * time.Second)
	for name, acks := range map[string]func(s *ackStore, next string){
		"all_on_new": func(s *ackStore, next string) {
			_ = s.Ack(ctx, "smartcloud", "pod-a", next, ttl)
			_ = s.Ack(ctx, "smartcloud", "pod-b", next, ttl)
		},
		"none": func(*ackStore, string) {},
		"switched": func(s *ackStore, next string) {
			_ = s.Ack(ctx, "smartcloud", "pod-b", "config-kid", ttl)
			s.advance(time.Second)
			_ = s.Ack(ctx, "smartcloud", "pod-b", next, ttl)
		},
	} {
		t.Run(name, func(t *testing.T) {
			w, s, r, next := startRotation(t)
			acks(s, next)
			w.advance(rotation.DefaultGrace)
			rep, err := r.Pass(ctx, rotation.Options{})
			if err != nil || rep.Outcome != rotation.OutcomeRotated {
				t.Fatalf("%+v %v; want rotated", rep, err)
			}
			if got := w.reg.kids(); !slices.Equal(got, []string{next}) {
				t.Fatalf("registered %v; want %s alone", got, next)
			}
		})
	}
}

// Acks that cannot be read fail the pass and keep the old key: not knowing
// which key the replicas use is no reason to remove it.
func TestRotationRetireKeepsOldWhenAcksFail(t *testing.T) {
	ctx := context.Background()
	w, s, r, _ := startRotation(t)
	s.err = errors.New("redis: connection refused")
	w.advance(rotation.DefaultGrace)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err == nil || rep.Outcome != rotation.OutcomeFailed || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("%+v %v; want failed with the store's error", rep, err)
	}
	if got := w.reg.kids(); !slices.Contains(got, "config-kid") {
		t.Fatalf("registered %v: the old key was removed", got)
	}
}

// Run looks again after AckTTL(FollowEvery) while a replica blocks the
// retire step: not every second (the grace period is over), not only at
// the next check_every.
func TestRotationRunLooksAgainSoonWhileBlocked(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, s, _, _ := startRotation(t)
	_ = s.Ack(ctx, "smartcloud", "pod-b", "config-kid", time.Hour)
	w.advance(rotation.DefaultGrace)
	var waits []time.Duration
	r := w.rotator(t, func(c *rotation.Config) {
		c.Store, c.FollowEvery = s, 15*time.Second
		c.Sleep = func(_ context.Context, d time.Duration) error {
			waits = append(waits, d)
			return errors.New("stop")
		}
	})
	r.Run(ctx, 10*time.Minute, nil)
	if want := []time.Duration{rotation.AckTTL(15 * time.Second)}; !slices.Equal(waits, want) {
		t.Fatalf("Run waited %v; want %v", waits, want)
	}
}
