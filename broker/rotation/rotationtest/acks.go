package rotationtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// AckerConformance checks that the Stores made by h.New, which must be
// rotation.Ackers, keep the contract of rotation.Acker:
//   - a client nobody acked has no acks and no error;
//   - each replica's ack is kept apart and read back (by h.Share's Store
//     too) with its kid and an expiry ttl after its time; a later ack of
//     the same replica replaces it;
//   - an ack whose ttl runs out is no longer returned (the suite waits at
//     most a bound for it), while a longer one stays;
//   - acks are per client and do not touch the State;
//   - odd replica ids ("a.b", "A", "a/b", "rotation", ...) are refused or
//     kept apart; an empty id, an empty client, an empty kid and a ttl
//     under a millisecond are refused.
func AckerConformance(t *testing.T, h Harness) {
	t.Helper()
	ctx := context.Background()
	newAcker := func(t *testing.T) (rotation.Store, rotation.Acker) {
		s := h.New(t)
		a, ok := s.(rotation.Acker)
		if !ok {
			t.Fatalf("%T is not a rotation.Acker", s)
		}
		return s, a
	}

	t.Run("none", func(t *testing.T) {
		_, a := newAcker(t)
		mustAcks(t, a, "demo", map[string]string{})
	})

	t.Run("round_trip", func(t *testing.T) {
		s, a := newAcker(t)
		mustAck(t, a, "demo", "r1", "kid-old", ttl)
		mustAck(t, a, "demo", "r2", "kid-new", ttl)
		got := mustAcks(t, a, "demo", map[string]string{"r1": "kid-old", "r2": "kid-new"})
		for r, ack := range got {
			if ack.At.IsZero() || ack.Expires.Sub(ack.At) != ttl {
				t.Fatalf("ack of %s: at %v, expires %v; want expires = at + %v", r, ack.At, ack.Expires, ttl)
			}
		}
		mustAck(t, a, "demo", "r1", "kid-new", ttl)
		mustAcks(t, a, "demo", map[string]string{"r1": "kid-new", "r2": "kid-new"})
		if h.Share != nil {
			other, ok := h.Share(t, s).(rotation.Acker)
			if !ok {
				t.Fatal("the shared Store is not a rotation.Acker")
			}
			mustAcks(t, other, "demo", map[string]string{"r1": "kid-new", "r2": "kid-new"})
		}
		mustAcks(t, a, "other", map[string]string{})
		MustLoad(t, s, "demo", rotation.State{})
	})

	t.Run("expiry", func(t *testing.T) {
		_, a := newAcker(t)
		mustAck(t, a, "demo", "live", "kid-new", ttl)
		mustAck(t, a, "demo", "gone", "kid-old", 50*time.Millisecond)
		deadline := time.Now().Add(bound)
		for {
			acks, err := a.Acks(ctx, "demo")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := acks["gone"]; !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("an ack with a 50ms ttl is still live after %v", bound)
			}
			time.Sleep(5 * time.Millisecond)
		}
		mustAcks(t, a, "demo", map[string]string{"live": "kid-new"})
		// An expired replica that acks again is live again.
		mustAck(t, a, "demo", "gone", "kid-new", ttl)
		mustAcks(t, a, "demo", map[string]string{"live": "kid-new", "gone": "kid-new"})
	})

	t.Run("refused", func(t *testing.T) {
		_, a := newAcker(t)
		for _, c := range []struct{ client, replica, kid string }{
			{"", "r1", "kid"}, {"demo", "", "kid"}, {"demo", "r 1", "kid"}, {"demo", "r1", ""},
		} {
			if err := a.Ack(ctx, c.client, c.replica, c.kid, ttl); err == nil {
				t.Fatalf("Ack(%q, %q, %q): no error; want it refused", c.client, c.replica, c.kid)
			}
		}
		if err := a.Ack(ctx, "demo", "r1", "kid", 0); err == nil {
			t.Fatal("Ack with ttl 0: no error; want it refused")
		}
		if _, err := a.Acks(ctx, ""); err == nil {
			t.Fatal("Acks of the empty client: no error; want it refused")
		}
		mustAcks(t, a, "demo", map[string]string{})
	})

	t.Run("odd_names", func(t *testing.T) {
		s, a := newAcker(t)
		replicas := map[string]string{}
		for i, r := range []string{"a", "A", "a.b", "a-b", "a_b", "a/b", "a%2Fb", "..", "rotation", "json", "a.rotation.json", "{a}"} {
			kid := fmt.Sprintf("kid-%d", i)
			if err := a.Ack(ctx, "demo", r, kid, ttl); err == nil {
				replicas[r] = kid
			}
		}
		if len(replicas) < 6 {
			t.Fatalf("only %d odd replica ids were taken: %v", len(replicas), replicas)
		}
		mustAcks(t, a, "demo", replicas)
		// Clients whose names start like another's acks keep their own.
		clients := map[string]string{}
		for i, c := range OddClientNames() {
			kid := fmt.Sprintf("kid-c%d", i)
			if err := a.Ack(ctx, c, "r", kid, ttl); err == nil {
				clients[c] = kid
			}
		}
		for _, c := range []string{"demo.rotation.ack-r", "demo.rotation", "demo.rotation.ack-a"} {
			if err := a.Ack(ctx, c, "r", "kid-"+c, ttl); err != nil {
				t.Fatal(err)
			}
			clients[c] = "kid-" + c
		}
		for c, kid := range clients {
			mustAcks(t, a, c, map[string]string{"r": kid})
		}
		mustAcks(t, a, "demo", replicas)
		for c := range clients {
			MustLoad(t, s, c, rotation.State{})
		}
	})
}

func mustAck(t *testing.T, a rotation.Acker, client, replica, kid string, ttl time.Duration) {
	t.Helper()
	if err := a.Ack(context.Background(), client, replica, kid, ttl); err != nil {
		t.Fatalf("Ack(%q, %q, %q): %v", client, replica, kid, err)
	}
}

// mustAcks reads client's acks and fails t unless they are want (replica
// id -> kid); it returns them.
func mustAcks(t *testing.T, a rotation.Acker, client string, want map[string]string) map[string]rotation.Ack {
	t.Helper()
	got, err := a.Acks(context.Background(), client)
	if err != nil {
		t.Fatalf("Acks %q: %v", client, err)
	}
	kids := map[string]string{}
	for r, ack := range got {
		kids[r] = ack.KID
	}
	if fmt.Sprint(kids) != fmt.Sprint(want) {
		t.Fatalf("Acks %q = %v; want %v", client, kids, want)
	}
	return got
}
