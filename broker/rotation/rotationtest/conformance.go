// Package rotationtest holds what tests of rotation.Store implementations
// share: StoreConformance, the behaviour every Store must show, and
// FullState, a State with every field set.
package rotationtest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Harness tells StoreConformance how to make and disturb the Store under
// test.
type Harness struct {
	// New returns a new, empty Store; each subtest calls it once. Stores
	// returned by one call to New must not see each other's data.
	New func(t *testing.T) rotation.Store
	// Share, when not nil, returns another Store over the same data as s
	// (another replica, or another Store value on the same directory);
	// the suite then races leases across both.
	Share func(t *testing.T, s rotation.Store) rotation.Store
	// Lose, when not nil, makes the lease held on client lost without its
	// holder knowing, as a lease that runs out or is broken does (for
	// Redis: the lease key deleted; for files: the lock file replaced).
	Lose func(t *testing.T, s rotation.Store, client string)
	// Expires says that a lease ends by itself after its ttl; the suite
	// then takes one for a short ttl and waits (at most a bound, not a
	// wall-clock assertion) until another holder can take it over.
	Expires bool
}

// bound is how long the suite waits for something it expects to happen.
const bound = 20 * time.Second

// ttl is the lease ttl of every check but expiry: long enough never to
// run out during a test.
const ttl = time.Minute

// StoreConformance checks that the Store made by h.New keeps the contract
// of rotation.Store and rotation.Lease:
//   - Load of an unknown client gives the zero State and no error;
//   - Save then Load round-trips every field of State (FullState),
//     including the rotation in flight and every time to the nanosecond,
//     and a later Save replaces the State whole;
//   - a second Lease while one is held fails with ErrLeaseHeld, and after
//     Release another one is taken; Release twice is not an error;
//   - Save after Release fails with ErrLeaseLost and stores nothing;
//   - a lease lost (h.Lose) or expired (h.Expires) and taken over gives
//     its old holder ErrLeaseLost from Save, and the State is unchanged;
//   - of many goroutines racing for one lease exactly one wins and the
//     others get ErrLeaseHeld;
//   - leases and States of different clients are independent;
//   - client names are safe: the empty name is refused, and names with
//     "/", "..", NUL, "{", "%", upper case, non-ASCII or great length are
//     either refused or kept apart from every other name;
//   - when the Store is a rotation.Acker, it keeps the contract of
//     AckerConformance.
func StoreConformance(t *testing.T, h Harness) {
	t.Helper()
	ctx := context.Background()

	if _, ok := h.New(t).(rotation.Acker); ok {
		t.Run("acks", func(t *testing.T) { AckerConformance(t, h) })
	}

	t.Run("load_unknown", func(t *testing.T) {
		s := h.New(t)
		st, err := s.Load(ctx, "unknown")
		if err != nil {
			t.Fatalf("Load of a client never saved: %v; want the zero State and no error", err)
		}
		if !reflect.DeepEqual(st, rotation.State{}) {
			t.Fatalf("Load of a client never saved = %+v; want the zero State", st)
		}
	})

	t.Run("round_trip", func(t *testing.T) {
		s := h.New(t)
		want := FullState()
		if z := zeroFields(reflect.ValueOf(want), "State"); len(z) > 0 {
			t.Fatalf("FullState leaves %v zero: set them, so that the round trip covers every field", z)
		}
		l := mustLease(t, s, "demo")
		if err := l.Save(ctx, want); err != nil {
			t.Fatal(err)
		}
		MustLoad(t, s, "demo", want)
		if h.Share != nil {
			MustLoad(t, h.Share(t, s), "demo", want)
		}
		// A later Save replaces the State whole: nothing of the first
		// remains, and the zero State saved is loaded as the zero State.
		next := rotation.State{Active: "kid-only", LastOutcome: "ok"}
		if err := l.Save(ctx, next); err != nil {
			t.Fatal(err)
		}
		MustLoad(t, s, "demo", next)
		if err := l.Save(ctx, rotation.State{}); err != nil {
			t.Fatal(err)
		}
		MustLoad(t, s, "demo", rotation.State{})
		mustRelease(t, l)
	})

	t.Run("lease_held", func(t *testing.T) {
		s := h.New(t)
		l := mustLease(t, s, "demo")
		stores := []rotation.Store{s}
		if h.Share != nil {
			stores = append(stores, h.Share(t, s))
		}
		for i, o := range stores {
			if l2, err := o.Lease(ctx, "demo", ttl); !errors.Is(err, rotation.ErrLeaseHeld) {
				if err == nil {
					l2.Release(ctx)
				}
				t.Fatalf("store %d: second Lease while one is held: %v; want ErrLeaseHeld", i, err)
			}
		}
		if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
			t.Fatalf("Save by the holder after a refused Lease: %v", err)
		}
		mustRelease(t, l)
		l2 := mustLease(t, stores[len(stores)-1], "demo")
		if err := l2.Save(ctx, rotation.State{Active: "kid-2"}); err != nil {
			t.Fatalf("Save by the next holder: %v", err)
		}
		MustLoad(t, s, "demo", rotation.State{Active: "kid-2"})
		mustRelease(t, l2)
	})

	t.Run("save_after_release", func(t *testing.T) {
		s := h.New(t)
		l := mustLease(t, s, "demo")
		if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
			t.Fatal(err)
		}
		mustRelease(t, l)
		if err := l.Release(ctx); err != nil {
			t.Fatalf("second Release: %v; want nil", err)
		}
		if err := l.Save(ctx, rotation.State{Active: "kid-2"}); !errors.Is(err, rotation.ErrLeaseLost) {
			t.Fatalf("Save after Release: %v; want ErrLeaseLost", err)
		}
		MustLoad(t, s, "demo", rotation.State{Active: "kid-1"})
		// And after another took the lease and released it again.
		l2 := mustLease(t, s, "demo")
		mustRelease(t, l2)
		if err := l.Save(ctx, rotation.State{Active: "kid-3"}); !errors.Is(err, rotation.ErrLeaseLost) {
			t.Fatalf("Save after Release and another's lease: %v; want ErrLeaseLost", err)
		}
		MustLoad(t, s, "demo", rotation.State{Active: "kid-1"})
	})

	if h.Lose != nil {
		t.Run("lease_lost_taken_over", func(t *testing.T) {
			s := h.New(t)
			old := mustLease(t, s, "demo")
			if err := old.Save(ctx, rotation.State{Active: "kid-old"}); err != nil {
				t.Fatal(err)
			}
			h.Lose(t, s, "demo")
			// Lost and not yet taken: the old holder still may not save.
			if err := old.Save(ctx, rotation.State{Active: "kid-stale"}); !errors.Is(err, rotation.ErrLeaseLost) {
				t.Fatalf("Save by a holder whose lease was lost: %v; want ErrLeaseLost", err)
			}
			MustLoad(t, s, "demo", rotation.State{Active: "kid-old"})
			taker := s
			if h.Share != nil {
				taker = h.Share(t, s)
			}
			next := mustLease(t, taker, "demo")
			if err := old.Save(ctx, rotation.State{Active: "kid-stale"}); !errors.Is(err, rotation.ErrLeaseLost) {
				t.Fatalf("Save by a holder whose lease was taken over: %v; want ErrLeaseLost", err)
			}
			MustLoad(t, s, "demo", rotation.State{Active: "kid-old"})
			if err := next.Save(ctx, rotation.State{Active: "kid-new"}); err != nil {
				t.Fatalf("Save by the new holder: %v", err)
			}
			// The old holder's Release must not free the new holder's lease.
			if err := old.Release(ctx); err != nil {
				t.Fatalf("Release of a lost lease: %v; want nil", err)
			}
			if l, err := s.Lease(ctx, "demo", ttl); !errors.Is(err, rotation.ErrLeaseHeld) {
				if err == nil {
					l.Release(ctx)
				}
				t.Fatalf("Lease after the old holder's Release: %v; want ErrLeaseHeld (the new holder has it)", err)
			}
			if err := next.Save(ctx, rotation.State{Active: "kid-newer"}); err != nil {
				t.Fatalf("Save by the new holder after the old one's Release: %v", err)
			}
			MustLoad(t, s, "demo", rotation.State{Active: "kid-newer"})
			mustRelease(t, next)
		})
	}

	if h.Expires {
		t.Run("lease_expired_taken_over", func(t *testing.T) {
			s := h.New(t)
			setup := mustLease(t, s, "demo")
			if err := setup.Save(ctx, rotation.State{Active: "kid-old"}); err != nil {
				t.Fatal(err)
			}
			mustRelease(t, setup)
			old, err := s.Lease(ctx, "demo", 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			taker := s
			if h.Share != nil {
				taker = h.Share(t, s)
			}
			next := waitLease(t, taker, "demo")
			if err := old.Save(ctx, rotation.State{Active: "kid-stale"}); !errors.Is(err, rotation.ErrLeaseLost) {
				t.Fatalf("Save by a holder whose lease expired and was taken over: %v; want ErrLeaseLost", err)
			}
			MustLoad(t, s, "demo", rotation.State{Active: "kid-old"})
			if err := next.Save(ctx, rotation.State{Active: "kid-new"}); err != nil {
				t.Fatalf("Save by the new holder: %v", err)
			}
			MustLoad(t, s, "demo", rotation.State{Active: "kid-new"})
			mustRelease(t, next)
		})
	}

	t.Run("race", func(t *testing.T) {
		s := h.New(t)
		stores := []rotation.Store{s}
		if h.Share != nil {
			stores = append(stores, h.Share(t, s))
		}
		const n = 32
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []rotation.Lease
			others  []error
		)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				l, err := stores[i%len(stores)].Lease(ctx, "demo", ttl)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					winners = append(winners, l)
				case !errors.Is(err, rotation.ErrLeaseHeld):
					others = append(others, err)
				}
			})
		}
		close(start)
		wg.Wait()
		for _, l := range winners {
			defer l.Release(ctx)
		}
		if len(winners) != 1 || len(others) != 0 {
			t.Fatalf("%d goroutines raced for one lease: %d won, other errors %v; want exactly 1 winner, the rest ErrLeaseHeld",
				n, len(winners), others)
		}
		if err := winners[0].Save(ctx, rotation.State{Active: "kid-winner"}); err != nil {
			t.Fatalf("Save by the winner: %v", err)
		}
		MustLoad(t, s, "demo", rotation.State{Active: "kid-winner"})
	})

	t.Run("clients_independent", func(t *testing.T) {
		s := h.New(t)
		a := mustLease(t, s, "a")
		b := mustLease(t, s, "b")
		if err := a.Save(ctx, rotation.State{Active: "kid-a"}); err != nil {
			t.Fatal(err)
		}
		if err := b.Save(ctx, rotation.State{Active: "kid-b"}); err != nil {
			t.Fatal(err)
		}
		MustLoad(t, s, "a", rotation.State{Active: "kid-a"})
		MustLoad(t, s, "b", rotation.State{Active: "kid-b"})
		MustLoad(t, s, "c", rotation.State{})
		mustRelease(t, a)
		// b's lease is still held; a's is free.
		if l, err := s.Lease(ctx, "b", ttl); !errors.Is(err, rotation.ErrLeaseHeld) {
			if err == nil {
				l.Release(ctx)
			}
			t.Fatalf("Lease of b after a's Release: %v; want ErrLeaseHeld", err)
		}
		if err := b.Save(ctx, rotation.State{Active: "kid-b2"}); err != nil {
			t.Fatalf("Save of b after a's Release: %v", err)
		}
		a2 := mustLease(t, s, "a")
		if err := a.Save(ctx, rotation.State{Active: "kid-stale"}); !errors.Is(err, rotation.ErrLeaseLost) {
			t.Fatalf("Save by a's released lease: %v; want ErrLeaseLost", err)
		}
		MustLoad(t, s, "a", rotation.State{Active: "kid-a"})
		MustLoad(t, s, "b", rotation.State{Active: "kid-b2"})
		mustRelease(t, a2)
		mustRelease(t, b)
	})

	t.Run("client_names", func(t *testing.T) {
		s := h.New(t)
		if _, err := s.Load(ctx, ""); err == nil {
			t.Fatal("Load of the empty client name: no error; want it refused")
		}
		if l, err := s.Lease(ctx, "", ttl); err == nil || errors.Is(err, rotation.ErrLeaseHeld) {
			if err == nil {
				l.Release(ctx)
			}
			t.Fatalf("Lease of the empty client name: %v; want it refused (not ErrLeaseHeld)", err)
		}
		saved := map[string]string{} // client name -> its Active
		for i, name := range OddClientNames() {
			l, err := s.Lease(ctx, name, ttl)
			if errors.Is(err, rotation.ErrLeaseHeld) {
				t.Fatalf("Lease of %q: ErrLeaseHeld; the name collides with one leased before: %v", name, keys(saved))
			}
			if err != nil {
				// Refused: Load must refuse it too, never read another's.
				if _, lerr := s.Load(ctx, name); lerr == nil {
					t.Fatalf("Lease of %q was refused (%v) but Load of it was not", name, err)
				}
				continue
			}
			active := fmt.Sprintf("kid-%d", i)
			if err := l.Save(ctx, rotation.State{Active: active}); err != nil {
				t.Fatalf("Save of %q: %v", name, err)
			}
			saved[name] = active
			// Each lease stays held until the end, so that a name that
			// maps onto another's lease shows as ErrLeaseHeld above.
			defer l.Release(ctx)
		}
		if len(saved) < 2 {
			t.Fatalf("only %d of the odd client names were taken: %v; a store should keep names like \"a.b\" and \"A\"", len(saved), keys(saved))
		}
		for name, active := range saved {
			MustLoad(t, s, name, rotation.State{Active: active})
		}
	})
}

// OddClientNames are client names that a careless store would let escape
// its directory or key space, or collide with each other.
func OddClientNames() []string {
	return []string{
		"a", "A", "a.b", "a-b", "a_b", "a/b", "a%2Fb", "a%2fb", "a:b", "a b", "a\\b",
		"..", ".", "../a", "a/../a", "./a", "/a", "/etc/passwd", ".a", "a.",
		"a.rotation", "a.rotation.json", "a.rotation.lock", "a\x00b", "a\nb",
		"{a}", "a}{", "rotation:state:a", "ø", "æøå", "\xff", strings.Repeat("x", 300),
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// FullState returns a State with every field set, times with nanoseconds
// in a zone other than UTC; the caller owns it.
func FullState() rotation.State {
	cet := time.FixedZone("CET", 3600)
	at := func(s int) time.Time { return time.Date(2026, 11, 29, 20, 19, s, 123456789, cet) }
	return rotation.State{
		Active: "kid-old",
		Keys: []rotation.ManagedKey{
			{KID: "kid-old", URI: "file:keys/old.pem", Algorithm: signer.RS256, Made: at(1)},
			{KID: "kid-next", URI: "pkcs11:token=tb;object=kid-next?module-path=/usr/lib/softhsm/libsofthsm2.so", Algorithm: signer.RS384, Made: at(2)},
		},
		Retired: []string{"kid-retired-1", "kid-retired-2"},
		Rotation: &rotation.InFlight{
			Step: rotation.StepProve, Next: "kid-next", Old: "kid-old",
			Started: at(3), Activated: at(4),
		},
		LastRotation: at(5),
		ActiveSince:  at(11),
		Seq:          42,
		LastFinished: at(11),
		LastOutcome:  "failed",
		LastError:    `register: self-service API answered 503 "unavailable"`,
		LastAttempt:  at(6),
		Registered: []rotation.RegisteredInfo{
			{KID: "kid-old", Expires: at(7), Created: at(9)},
			{KID: "kid-next", Expires: at(8), Created: at(10)},
		},
		Blocking: []rotation.Blocker{{Replica: "pod-7f9c-a1b2c3", KID: "kid-old", Expires: at(11)}},
	}
}

// MustLoad loads client's State from s and fails t unless it equals want:
// the same fields, and the same instants (in any zone).
func MustLoad(t testing.TB, s rotation.Store, client string, want rotation.State) {
	t.Helper()
	got, err := s.Load(context.Background(), client)
	if err != nil {
		t.Fatalf("Load %q: %v", client, err)
	}
	if !Equal(got, want) {
		t.Fatalf("Load %q:\n got %+v\nwant %+v", client, got, want)
	}
}

// Equal reports whether a and b hold the same fields, comparing times as
// instants (their zone and monotonic reading aside).
func Equal(a, b rotation.State) bool {
	return reflect.DeepEqual(normalize(reflect.ValueOf(a)).Interface(), normalize(reflect.ValueOf(b)).Interface())
}

var timeType = reflect.TypeFor[time.Time]()

// normalize returns a copy of v with every time in UTC without a
// monotonic reading.
func normalize(v reflect.Value) reflect.Value {
	if v.Type() == timeType {
		return reflect.ValueOf(v.Interface().(time.Time).UTC().Round(0))
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(normalize(v.Elem()))
		return p
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		s := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			s.Index(i).Set(normalize(v.Index(i)))
		}
		return s
	case reflect.Struct:
		s := reflect.New(v.Type()).Elem()
		for i := range v.NumField() {
			s.Field(i).Set(normalize(v.Field(i)))
		}
		return s
	default:
		return v
	}
}

// zeroFields names the fields of v (recursively) that are zero.
func zeroFields(v reflect.Value, path string) []string {
	if v.Type() == timeType || v.Kind() != reflect.Struct && v.Kind() != reflect.Pointer && v.Kind() != reflect.Slice {
		if v.IsZero() {
			return []string{path}
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return []string{path}
		}
		return zeroFields(v.Elem(), path)
	case reflect.Slice:
		if v.Len() == 0 {
			return []string{path}
		}
		var z []string
		for i := range v.Len() {
			z = append(z, zeroFields(v.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return z
	default:
		var z []string
		for i := range v.NumField() {
			z = append(z, zeroFields(v.Field(i), path+"."+v.Type().Field(i).Name)...)
		}
		return z
	}
}

func mustLease(t *testing.T, s rotation.Store, client string) rotation.Lease {
	t.Helper()
	l, err := s.Lease(context.Background(), client, ttl)
	if err != nil {
		t.Fatalf("Lease %q: %v", client, err)
	}
	return l
}

func mustRelease(t *testing.T, l rotation.Lease) {
	t.Helper()
	if err := l.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// waitLease takes client's lease from s, retrying while it is held, for at
// most bound.
func waitLease(t *testing.T, s rotation.Store, client string) rotation.Lease {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		l, err := s.Lease(context.Background(), client, ttl)
		if err == nil {
			return l
		}
		if !errors.Is(err, rotation.ErrLeaseHeld) {
			t.Fatalf("Lease %q: %v", client, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Lease %q still held after %v; its ttl was 50ms", client, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
