package rotation_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// memStore is a Store in memory, with a lease that never expires.
type memStore struct {
	mu     sync.Mutex
	states map[string]rotation.State
	holder map[string]*memLease
}

func newMemStore() *memStore {
	return &memStore{states: map[string]rotation.State{}, holder: map[string]*memLease{}}
}

func (s *memStore) Load(_ context.Context, client string) (rotation.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.Marshal(s.states[client]) // a deep copy, as a real store gives
	var st rotation.State
	err := json.Unmarshal(b, &st)
	return st, err
}

func (s *memStore) Lease(_ context.Context, client string, _ time.Duration) (rotation.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder[client] != nil {
		return nil, rotation.ErrLeaseHeld
	}
	l := &memLease{s: s, client: client}
	s.holder[client] = l
	return l, nil
}

type memLease struct {
	s      *memStore
	client string
}

func (l *memLease) Save(_ context.Context, st rotation.State) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.s.holder[l.client] != l {
		return rotation.ErrLeaseLost
	}
	b, _ := json.Marshal(st)
	var cp rotation.State
	_ = json.Unmarshal(b, &cp)
	l.s.states[l.client] = cp
	return nil
}

func (l *memLease) Release(context.Context) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.s.holder[l.client] == l {
		delete(l.s.holder, l.client)
	}
	return nil
}

// fakeRegistry keeps a registration by Digdir's rules that matter here:
// whole-set replacement, at most 5 keys, keys usable once the propagation
// count of proofs has passed.
type fakeRegistry struct {
	mu     sync.Mutex
	now    func() time.Time
	keys   []rotation.Registered
	writes int
	// noRenew keeps the expiry of a key posted again (a renewal that
	// does not renew).
	noRenew bool
}

func (f *fakeRegistry) Keys(context.Context, string) ([]rotation.Registered, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.keys), nil
}

func (f *fakeRegistry) SetKeys(_ context.Context, _ string, keys []json.RawMessage) ([]rotation.Registered, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(keys) == 0 || len(keys) > rotation.MaxRegisteredKeys {
		return nil, fmt.Errorf("fake registry: %d keys", len(keys))
	}
	var out []rotation.Registered
	for _, raw := range keys {
		var k struct {
			KID string `json:"kid"`
			Use string `json:"use"`
			D   string `json:"d"`
		}
		if err := json.Unmarshal(raw, &k); err != nil || k.KID == "" || k.Use != "sig" || k.D != "" {
			return nil, fmt.Errorf("fake registry: bad key %s", raw)
		}
		created, expires := f.now(), f.now().AddDate(1, 0, 0)
		if i := slices.IndexFunc(f.keys, func(r rotation.Registered) bool { return r.KID == k.KID }); i >= 0 {
			created = f.keys[i].Created
			if f.noRenew {
				expires = f.keys[i].Expires
			}
		}
		out = append(out, rotation.Registered{KID: k.KID, JWK: raw, Created: created, Expires: expires})
	}
	f.keys = out
	f.writes++
	return slices.Clone(out), nil
}

func (f *fakeRegistry) kids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, k := range f.keys {
		out = append(out, k.KID)
	}
	return out
}

// fakeMaker makes keys in memory.
type fakeMaker struct {
	mu        sync.Mutex
	keys      map[string]*rsa.PrivateKey
	made      int
	destroyed []string
	// dieAfterMaking makes the next Make fail after it made the key, and
	// calls die, as a process killed during Make would leave it.
	dieAfterMaking bool
	die            func()
}

func (m *fakeMaker) Make(_ context.Context, kid string) (signer.Spec, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = map[string]*rsa.PrivateKey{}
	}
	if _, ok := m.keys[kid]; !ok {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return signer.Spec{}, err
		}
		m.keys[kid] = k
		m.made++
	}
	if m.dieAfterMaking {
		m.dieAfterMaking = false
		if m.die != nil {
			m.die()
		}
		return signer.Spec{}, errors.New("killed during Make")
	}
	return signer.Spec{URI: "mem:" + kid, KeyID: kid, Algorithm: signer.RS256}, nil
}

func (m *fakeMaker) Destroy(_ context.Context, s signer.Spec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.keys, s.KeyID)
	m.destroyed = append(m.destroyed, s.KeyID)
	return nil
}

func (m *fakeMaker) open(_ context.Context, s signer.Spec) (*signer.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.keys[s.KeyID]
	if !ok {
		return nil, fmt.Errorf("no key %s", s.KeyID)
	}
	return signer.New(s.KeyID, s.Algorithm, k, "mem")
}

// world is one client's fakes and clock.
type world struct {
	mu       sync.Mutex
	now      time.Time
	store    *memStore
	reg      *fakeRegistry
	maker    *fakeMaker
	config   *rsa.PrivateKey
	unproven atomic.Int64 // proofs that fail before one succeeds
	proofs   atomic.Int64
	applied  []rotation.State
	slept    []time.Duration
}

func newWorld(t *testing.T) *world {
	w := &world{now: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), store: newMemStore(), maker: &fakeMaker{}}
	w.reg = &fakeRegistry{now: w.clock}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	w.config = k
	pub, _ := rotation.PublicJWK("config-kid", signer.RS256, &k.PublicKey)
	w.reg.now = func() time.Time { return w.clock().AddDate(0, -10, 0) } // registered 10 months ago
	if _, err := w.reg.SetKeys(context.Background(), "cid", []json.RawMessage{pub}); err != nil {
		t.Fatal(err)
	}
	w.reg.now = w.clock
	return w
}

func (w *world) clock() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.now
}

func (w *world) advance(d time.Duration) {
	w.mu.Lock()
	w.now = w.now.Add(d)
	w.mu.Unlock()
}

func (w *world) rotator(t *testing.T, mod func(*rotation.Config)) *rotation.Rotator {
	t.Helper()
	cfg := rotation.Config{
		Client: "smartcloud", ClientID: "cid", ConfigKeys: []string{"config-kid"}, ConfigActive: "config-kid",
		Maker: w.maker, Registry: w.reg, Store: w.store, Open: w.maker.open,
		Prove: func(_ context.Context, k *signer.Key) error {
			w.proofs.Add(1)
			if !slices.Contains(w.reg.kids(), k.KeyID) {
				return errors.New("invalid_client: unknown kid")
			}
			if w.unproven.Add(-1) >= 0 {
				return errors.New("invalid_client: unknown kid (not yet propagated)")
			}
			return nil
		},
		Apply: func(_ context.Context, st rotation.State) error {
			w.mu.Lock()
			w.applied = append(w.applied, st)
			w.mu.Unlock()
			return nil
		},
		Now: w.clock,
		Sleep: func(_ context.Context, d time.Duration) error {
			w.mu.Lock()
			w.slept = append(w.slept, d)
			w.mu.Unlock()
			w.advance(d)
			return nil
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := rotation.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRotationFullCycle(t *testing.T) {
	w := newWorld(t)
	r := w.rotator(t, nil)
	ctx := context.Background()

	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Registered 10 months ago with 90-day rotation: due.
	if rep.Outcome != rotation.OutcomeWaiting || rep.Old != "config-kid" || rep.Active != rep.Next || rep.Next == "" {
		t.Fatalf("first pass: %+v", rep)
	}
	if got := w.reg.kids(); !slices.Equal(got, []string{"config-kid", rep.Next}) {
		t.Fatalf("registered during grace: %v", got)
	}
	next := rep.Next
	// Within the grace period nothing more happens.
	w.advance(rotation.DefaultGrace - time.Second)
	if rep, err = r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("pass within grace: %+v, %v", rep, err)
	}
	w.advance(2 * time.Second)
	if rep, err = r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("pass after grace: %+v, %v", rep, err)
	}
	if got := w.reg.kids(); !slices.Equal(got, []string{next}) {
		t.Fatalf("registered after rotation: %v", got)
	}
	st, _ := w.store.Load(ctx, "smartcloud")
	if st.Active != next || st.Rotation != nil || !slices.Equal(st.Retired, []string{"config-kid"}) || len(st.Keys) != 1 {
		t.Fatalf("state: %+v", st)
	}
	// The config's key is not ours to destroy.
	if len(w.maker.destroyed) != 0 {
		t.Fatalf("destroyed %v", w.maker.destroyed)
	}
	// Apply saw the activation and the retirement.
	if len(w.applied) != 2 || w.applied[0].Active != next || len(w.applied[1].Retired) != 1 {
		t.Fatalf("applied %+v", w.applied)
	}
	// Not due again until Every has passed; then the managed key is
	// destroyed by the next rotation.
	if rep, _ = r.Pass(ctx, rotation.Options{}); rep.Outcome != rotation.OutcomeNotDue {
		t.Fatalf("right after: %+v", rep)
	}
	w.advance(rotation.DefaultEvery)
	if rep, err = r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("second rotation: %+v %v", rep, err)
	}
	w.advance(rotation.DefaultGrace)
	if rep, err = r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("second rotation end: %+v %v", rep, err)
	}
	if !slices.Equal(w.maker.destroyed, []string{next}) || w.maker.made != 2 {
		t.Fatalf("destroyed %v, made %d", w.maker.destroyed, w.maker.made)
	}
}

func TestRotationResumesAfterCrashAtEachStep(t *testing.T) {
	steps := []rotation.Step{rotation.StepMake, rotation.StepRegister, rotation.StepProve, rotation.StepActivate,
		rotation.StepRetire, rotation.StepDestroy}
	for _, crashAt := range steps {
		t.Run(string(crashAt), func(t *testing.T) {
			w := newWorld(t)
			crash := errors.New("crash")
			r := w.rotator(t, func(c *rotation.Config) {
				c.AfterStep = func(s rotation.Step) error {
					if s == crashAt {
						return crash
					}
					return nil
				}
			})
			ctx := context.Background()
			_, err := r.Pass(ctx, rotation.Options{Force: true})
			if crashAt == rotation.StepRetire || crashAt == rotation.StepDestroy {
				// These come after the grace period.
				if err != nil {
					t.Fatal(err)
				}
				w.advance(rotation.DefaultGrace)
				_, err = r.Pass(ctx, rotation.Options{})
			}
			if !errors.Is(err, crash) {
				t.Fatalf("pass: %v, want the crash", err)
			}
			// A new process (a new rotator on the same store) finishes.
			r2 := w.rotator(t, nil)
			w.advance(rotation.DefaultGrace)
			rep, err := r2.Pass(ctx, rotation.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Outcome == rotation.OutcomeWaiting {
				w.advance(rotation.DefaultGrace)
				rep, err = r2.Pass(ctx, rotation.Options{})
			}
			want := rotation.OutcomeRotated
			if crashAt == rotation.StepDestroy {
				want = rotation.OutcomeNotDue // the rotation had finished
			}
			if err != nil || rep.Outcome != want {
				t.Fatalf("after restart: %+v, %v", rep, err)
			}
			st, _ := w.store.Load(ctx, "smartcloud")
			if w.maker.made != 1 || len(st.Keys) != 1 || st.Keys[0].KID != st.Active {
				t.Fatalf("made %d keys, state %+v", w.maker.made, st)
			}
			if got := w.reg.kids(); !slices.Equal(got, []string{st.Active}) {
				t.Fatalf("registered %v, active %s", got, st.Active)
			}
		})
	}
}

func TestRotationKeepsKeysAddedByHand(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	hand, _ := rsa.GenerateKey(rand.Reader, 2048)
	pub, _ := rotation.PublicJWK("by-hand", signer.RS256, &hand.PublicKey)
	reg, _ := w.reg.Keys(ctx, "cid")
	if _, err := w.reg.SetKeys(ctx, "cid", []json.RawMessage{reg[0].JWK, pub}); err != nil {
		t.Fatal(err)
	}
	r := w.rotator(t, nil)
	if _, err := r.Pass(ctx, rotation.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	w.advance(rotation.DefaultGrace)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeRotated {
		t.Fatalf("%+v %v", rep, err)
	}
	if got := w.reg.kids(); !slices.Equal(got, []string{"by-hand", rep.Active}) {
		t.Fatalf("registered %v", got)
	}
}

func TestRotationRefusesAtTheKeyLimit(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	reg, _ := w.reg.Keys(ctx, "cid")
	set := []json.RawMessage{reg[0].JWK}
	for i := range 4 {
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		pub, _ := rotation.PublicJWK(fmt.Sprintf("hand-%d", i), signer.RS256, &k.PublicKey)
		set = append(set, pub)
	}
	if _, err := w.reg.SetKeys(ctx, "cid", set); err != nil {
		t.Fatal(err)
	}
	writes := w.reg.writes
	r := w.rotator(t, nil)
	_, err := r.Pass(ctx, rotation.Options{Force: true})
	if !errors.Is(err, rotation.ErrTooManyKeys) {
		t.Fatalf("err = %v, want ErrTooManyKeys", err)
	}
	if w.maker.made != 0 || w.reg.writes != writes || len(w.reg.kids()) != 5 {
		t.Fatalf("made %d keys, %d writes, %d registered", w.maker.made, w.reg.writes-writes, len(w.reg.kids()))
	}
	st, _ := w.store.Load(ctx, "smartcloud")
	if st.LastOutcome != rotation.OutcomeFailed || st.LastError == "" || st.Rotation != nil {
		t.Fatalf("state %+v", st)
	}
	if _, err := r.Pass(ctx, rotation.Options{Force: true, DryRun: true}); !errors.Is(err, rotation.ErrTooManyKeys) {
		t.Fatalf("dry run: %v", err)
	}
}

func TestRotationBacksOffWhileUnproven(t *testing.T) {
	w := newWorld(t)
	w.unproven.Store(4) // slower than the first retries
	r := w.rotator(t, nil)
	rep, err := r.Pass(context.Background(), rotation.Options{Force: true})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("%+v %v", rep, err)
	}
	if w.proofs.Load() != 5 {
		t.Fatalf("%d proofs, want 5", w.proofs.Load())
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second}
	if !slices.Equal(w.slept, want) {
		t.Fatalf("waits %v, want %v", w.slept, want)
	}
}

func TestRotationGivesUpProvingAndResumes(t *testing.T) {
	w := newWorld(t)
	w.unproven.Store(1 << 30)
	r := w.rotator(t, nil)
	ctx := context.Background()
	_, err := r.Pass(ctx, rotation.Options{Force: true})
	if err == nil {
		t.Fatal("a key Maskinporten never accepts was made active")
	}
	st, _ := w.store.Load(ctx, "smartcloud")
	if st.Active != "" || st.Rotation == nil || st.Rotation.Step != rotation.StepProve || st.LastOutcome != rotation.OutcomeFailed {
		t.Fatalf("state %+v", st)
	}
	if len(w.applied) != 0 {
		t.Fatal("keys applied before the proof")
	}
	w.unproven.Store(0)
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting || w.maker.made != 1 {
		t.Fatalf("%+v %v (made %d)", rep, err, w.maker.made)
	}
}

func TestRotationRacingReplicasRotateOnce(t *testing.T) {
	w := newWorld(t)
	var wg sync.WaitGroup
	outcomes := make(chan string, 8)
	start := make(chan struct{})
	for range 8 {
		r := w.rotator(t, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			rep, err := r.Pass(context.Background(), rotation.Options{})
			if err != nil {
				t.Error(err)
			}
			outcomes <- rep.Outcome
		}()
	}
	close(start)
	wg.Wait()
	close(outcomes)
	if w.maker.made != 1 {
		t.Fatalf("%d keys made, want 1", w.maker.made)
	}
	n := 0
	for o := range outcomes {
		if o == rotation.OutcomeWaiting {
			n++
		} else if o != rotation.OutcomeHeld && o != rotation.OutcomeNotDue {
			t.Fatalf("outcome %s", o)
		}
	}
	if n < 1 {
		t.Fatal("nobody rotated")
	}
}

func TestRotationRenewsNearExpiry(t *testing.T) {
	w := newWorld(t)
	r := w.rotator(t, nil)
	ctx := context.Background()
	// Registered 10 days ago, but it expires in 40 days (say Digdir
	// shortened it): not due, not near.
	w.reg.keys[0].Created = w.clock().Add(-10 * 24 * time.Hour)
	w.reg.keys[0].Expires = w.clock().Add(40 * 24 * time.Hour)
	if rep, err := r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeNotDue {
		t.Fatalf("%+v %v", rep, err)
	}
	w.advance(20 * 24 * time.Hour) // 20 days left: renewed, not rotated
	before, _ := w.reg.Keys(ctx, "cid")
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeRenewed {
		t.Fatalf("%+v %v", rep, err)
	}
	after, _ := w.reg.Keys(ctx, "cid")
	if len(after) != 1 || after[0].KID != "config-kid" || !after[0].Expires.After(before[0].Expires) || w.maker.made != 0 {
		t.Fatalf("before %+v after %+v", before, after)
	}
}

func TestRotationDryRunChangesNothing(t *testing.T) {
	w := newWorld(t)
	r := w.rotator(t, nil)
	ctx := context.Background()
	rep, err := r.Pass(ctx, rotation.Options{DryRun: true})
	if err != nil || rep.Outcome != rotation.OutcomeStarted || len(rep.Actions) != 6 {
		t.Fatalf("%+v %v", rep, err)
	}
	st, _ := w.store.Load(ctx, "smartcloud")
	if w.maker.made != 0 || w.reg.writes != 1 || st.Rotation != nil || st.LastAttempt != (time.Time{}) {
		t.Fatalf("dry run changed something: made %d, writes %d, state %+v", w.maker.made, w.reg.writes, st)
	}
}

// TestRotationCrashDuringMake: the next kid is saved before the key is
// made, so a process that dies while making it leaves a kid the next pass
// makes again, finding the key it made: one key, not two.
func TestRotationCrashDuringMake(t *testing.T) {
	w := newWorld(t)
	w.maker.dieAfterMaking = true
	// A killed process saves nothing more: its lease is gone.
	w.maker.die = func() {
		w.store.mu.Lock()
		delete(w.store.holder, "smartcloud")
		w.store.mu.Unlock()
	}
	r := w.rotator(t, nil)
	ctx := context.Background()
	if _, err := r.Pass(ctx, rotation.Options{Force: true}); err == nil {
		t.Fatal("the pass did not fail")
	}
	rep, err := w.rotator(t, nil).Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("%+v %v", rep, err)
	}
	if w.maker.made != 1 {
		t.Fatalf("%d keys made, want 1", w.maker.made)
	}
}

// TestRunDoesNotHammerAfterAFailedRetire: a retire pass that fails after
// the grace period (here: the new key is gone from the registration) is
// tried again at the next check, not every second.
func TestRunDoesNotHammerAfterAFailedRetire(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	if _, err := w.rotator(t, nil).Pass(ctx, rotation.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	w.advance(2 * rotation.DefaultGrace)
	w.reg.mu.Lock()
	w.reg.keys = w.reg.keys[:1] // someone removed the new key
	w.reg.mu.Unlock()
	var waits []time.Duration
	passes := 0
	r := w.rotator(t, func(c *rotation.Config) {
		c.Sleep = func(_ context.Context, d time.Duration) error {
			waits = append(waits, d)
			if len(waits) == 2 {
				return context.Canceled
			}
			return nil
		}
	})
	r.Run(ctx, time.Minute, func(rep rotation.Report, err error) {
		passes++
		if err == nil {
			t.Errorf("pass %d did not fail: %+v", passes, rep)
		}
	})
	if !slices.Equal(waits, []time.Duration{time.Minute, time.Minute}) {
		t.Fatalf("waits after failed retires %v, want the check interval", waits)
	}
}

// TestFirstRotationNotPostponedByRenewal: Digdir gives a creation time per
// set, not per key, and any write of the set renews every key's expiry;
// the first rotation is still due Every after the config's key was first
// seen registered, not after the last write.
func TestFirstRotationNotPostponedByRenewal(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	// As Digdir answers: no per-key creation time; registered 80 days ago.
	w.reg.mu.Lock()
	w.reg.keys[0].Created = time.Time{}
	w.reg.keys[0].Expires = w.clock().Add(-80*24*time.Hour).AddDate(1, 0, 0)
	w.reg.mu.Unlock()
	r := w.rotator(t, nil)
	if rep, err := r.Pass(ctx, rotation.Options{}); err != nil || rep.Outcome != rotation.OutcomeNotDue {
		t.Fatalf("%+v %v", rep, err)
	}
	// Someone adds a key by hand: the write renews the config key too.
	addByHandFake(t, w, "by-hand")
	w.advance(11 * 24 * time.Hour) // 91 days after the config key was registered
	rep, err := r.Pass(ctx, rotation.Options{})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("91 days after registration: %+v %v, want a rotation", rep, err)
	}
}

// addByHandFake posts kid beside what the fake registry holds.
func addByHandFake(t *testing.T, w *world, kid string) {
	t.Helper()
	ctx := context.Background()
	reg, _ := w.reg.Keys(ctx, "cid")
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := rotation.PublicJWK(kid, signer.RS256, &k.PublicKey)
	set := []json.RawMessage{pub}
	for _, r := range reg {
		set = append(set, r.JWK)
	}
	if _, err := w.reg.SetKeys(ctx, "cid", set); err != nil {
		t.Fatal(err)
	}
	w.reg.mu.Lock()
	for i := range w.reg.keys {
		w.reg.keys[i].Created = time.Time{} // per set, as Digdir
	}
	w.reg.mu.Unlock()
}

// TestRegressedBySeqNotClock: of two states, the one saved later (a higher
// Seq) is the newer, even when the machine that saved it has a clock
// behind; a lower Seq went back.
func TestRegressedBySeqNotClock(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	last := rotation.State{Active: "k1", Keys: []rotation.ManagedKey{{KID: "k1"}}, LastRotation: now, Seq: 10}
	skewed := rotation.State{Active: "k2", Keys: []rotation.ManagedKey{{KID: "k2"}}, LastRotation: now.Add(-time.Hour), Seq: 11}
	if rotation.Regressed(last, skewed) {
		t.Error("a newer state saved on a machine whose clock is behind counts as going back")
	}
	older := last
	older.Seq = 9
	if !rotation.Regressed(last, older) {
		t.Error("a state with a lower Seq does not count as going back")
	}
	// States saved before Seq was kept: by the last rotation.
	if !rotation.Regressed(rotation.State{Active: "k1", LastRotation: now}, rotation.State{Active: "k0", LastRotation: now.Add(-time.Hour)}) {
		t.Error("an older state without Seq does not count as going back")
	}
}
