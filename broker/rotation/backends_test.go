package rotation_test

// End-to-end rotations against the Maskinporten emulator and its Digdir
// self-service API, with every key backend that runs here (key files,
// SoftHSM2 over PKCS#11, a local AWS KMS), the real stores (files with
// flock, Redis) and the broker's own self-service client.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/rotation/filestore"
	"github.com/tokenbroker/tokenbroker/broker/rotation/redisstore"
	"github.com/tokenbroker/tokenbroker/broker/selfservice"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const (
	e2eVendor   = "991825827"
	e2eAdminID  = "selfservice-admin"
	e2eClientID = "rotating-client"
	e2eScope    = "altinn:systembruker.demo"
	e2eConfig   = "config-kid"
)

// e2e is one rotating client against the emulator.
type e2e struct {
	emu      *maskinportentest.Emulator
	env      maskinporten.Environment
	http     *http.Client
	registry *selfservice.Client
	store    rotation.Store
	maker    rotation.Maker
	// offset is added to the rotator's clock (to pass grace periods).
	offset atomic.Int64
	proofs atomic.Int64
}

func newE2E(t *testing.T, location string) *e2e {
	t.Helper()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	admin, pool := signertest.EnterpriseKey(t, e2eVendor)
	pub, err := signertest.Key(t, signertest.KeyA, e2eConfig).PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []maskinportentest.Client{
		{ID: e2eAdminID, Org: e2eVendor, Scopes: []string{selfservice.ScopeRead, selfservice.ScopeWrite}, CertificateCAs: pool},
		{ID: e2eClientID, Org: e2eVendor, Scopes: []string{e2eScope}, Keys: []jwk.Key{pub}},
	} {
		if err := emu.AddClient(c); err != nil {
			t.Fatal(err)
		}
	}
	e := &e2e{emu: emu, http: srv.Client(),
		env: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"}}
	mp, err := maskinporten.New(maskinporten.Config{ClientID: e2eAdminID, Key: admin, Environment: e.env, HTTPClient: e.http})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := selfservice.NewTokenSource(mp)
	if err != nil {
		t.Fatal(err)
	}
	if e.registry, err = selfservice.New(selfservice.Config{Environment: "test", BaseURL: srv.URL, Tokens: ts, HTTPClient: e.http}); err != nil {
		t.Fatal(err)
	}
	if e.store, err = filestore.New(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if e.maker, err = keymaker.NewMaker(keymaker.MakerConfig{Location: location}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *e2e) now() time.Time { return time.Now().Add(time.Duration(e.offset.Load())) }

// prove is what the broker does: a plain token for the client's scope,
// signed with key, in one attempt.
func (e *e2e) prove(ctx context.Context, k *signer.Key) error {
	e.proofs.Add(1)
	mp, err := maskinporten.New(maskinporten.Config{ClientID: e2eClientID, Key: k, Environment: e.env, HTTPClient: e.http,
		Retry: maskinporten.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		return err
	}
	_, err = mp.Token(ctx, maskinporten.Request{Scopes: []string{e2eScope}})
	return err
}

func (e *e2e) rotator(t *testing.T, afterStep func(rotation.Step) error) *rotation.Rotator {
	t.Helper()
	r, err := rotation.New(rotation.Config{
		Client: "smartcloud", ClientID: e2eClientID, ConfigKeys: []string{e2eConfig}, ConfigActive: e2eConfig,
		Maker: e.maker, Registry: e.registry, Store: e.store, Open: keys.Open, Prove: e.prove,
		Now: e.now, AfterStep: afterStep,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (e *e2e) registered() []string {
	var out []string
	for _, k := range e.emu.RegisteredKeys(e2eClientID) {
		out = append(out, k.KID)
	}
	return out
}

// rotate runs a whole rotation (passing the grace period on the rotator's
// clock), crashing after crashAt when it is not empty and finishing with
// a new rotator, as a restarted broker would. It returns the new active kid.
func (e *e2e) rotate(t *testing.T, crashAt rotation.Step) string {
	t.Helper()
	ctx := context.Background()
	crash := errors.New("injected crash")
	r := e.rotator(t, func(s rotation.Step) error {
		if s == crashAt {
			return crash
		}
		return nil
	})
	rep, err := r.Pass(ctx, rotation.Options{Force: true})
	if rep.Outcome == rotation.OutcomeWaiting {
		e.offset.Add(int64(rotation.DefaultGrace))
		rep, err = r.Pass(ctx, rotation.Options{})
	}
	if crashAt != "" {
		if !errors.Is(err, crash) {
			t.Fatalf("crash after %s: pass gave %+v, %v", crashAt, rep, err)
		}
		r = e.rotator(t, nil) // the restart
		e.offset.Add(int64(rotation.DefaultGrace))
		rep, err = r.Pass(ctx, rotation.Options{})
		if rep.Outcome == rotation.OutcomeWaiting {
			e.offset.Add(int64(rotation.DefaultGrace))
			rep, err = r.Pass(ctx, rotation.Options{})
		}
	}
	want := rotation.OutcomeRotated
	if crashAt == rotation.StepDestroy {
		want = rotation.OutcomeNotDue // it had finished before the crash
	}
	if err != nil || rep.Outcome != want {
		t.Fatalf("rotation (crash after %q): %+v, %v", crashAt, rep, err)
	}
	st, err := e.store.Load(ctx, "smartcloud")
	if err != nil {
		t.Fatal(err)
	}
	return st.Active
}

// checkOnlyKey checks that active is the one registered key, that it gets
// tokens, and that the state holds it as the one key the rotation made.
func (e *e2e) checkOnlyKey(t *testing.T, active string, destroyed []signer.Spec) {
	t.Helper()
	ctx := context.Background()
	if got := e.registered(); !slices.Equal(got, []string{active}) {
		t.Fatalf("registered %v, want only the active %s", got, active)
	}
	st, _ := e.store.Load(ctx, "smartcloud")
	if st.Rotation != nil || len(st.Keys) != 1 || st.Keys[0].KID != active {
		t.Fatalf("state %+v", st)
	}
	k, err := keys.Open(ctx, signer.Spec{URI: st.Keys[0].URI, KeyID: active, Algorithm: st.Keys[0].Algorithm})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if err := e.prove(ctx, k); err != nil {
		t.Fatalf("the active key gets no token: %v", err)
	}
	for _, s := range destroyed {
		if k, err := keys.Open(ctx, s); err == nil {
			k.Close()
			t.Errorf("old key %s still opens after its rotation", s.KeyID)
		}
	}
}

// TestRotationBackends rotates with each backend that runs here, crashing
// after each step in turn: every rotation ends with exactly the new key
// registered and held, and the old one gone from the backend.
func TestRotationBackends(t *testing.T) {
	backends := map[string]func(t *testing.T) string{
		"file":   func(t *testing.T) string { return "file:" + t.TempDir() + "/" },
		"pkcs11": func(t *testing.T) string { return signertest.SoftHSMToken(t, "rotation") },
		"awskms": func(t *testing.T) string {
			_, query, _ := strings.Cut(signertest.LocalKMS(t), "?")
			return "awskms:?" + query
		},
	}
	for name, location := range backends {
		t.Run(name, func(t *testing.T) {
			e := newE2E(t, location(t))
			ctx := context.Background()
			var previous []signer.Spec
			for _, crashAt := range []rotation.Step{"", rotation.StepMake, rotation.StepRegister, rotation.StepProve,
				rotation.StepActivate, rotation.StepRetire, rotation.StepDestroy} {
				before, _ := e.store.Load(ctx, "smartcloud")
				active := e.rotate(t, crashAt)
				if active == before.ActiveKID(e2eConfig) {
					t.Fatalf("crash after %q: the active key did not change", crashAt)
				}
				for _, k := range before.Keys {
					previous = append(previous, signer.Spec{URI: k.URI, KeyID: k.KID, Algorithm: k.Algorithm})
				}
				e.checkOnlyKey(t, active, previous)
			}
		})
	}
}

func TestRotationKeepsAKeyAddedByHand(t *testing.T) {
	e := newE2E(t, "file:"+t.TempDir()+"/")
	addByHand(t, e, "by-hand")
	active := e.rotate(t, "")
	if got := e.registered(); !slices.Equal(got, []string{"by-hand", active}) {
		t.Fatalf("registered %v", got)
	}
}

// addByHand posts kid (another test key) beside what is registered, as
// someone in the collaboration portal would.
func addByHand(t *testing.T, e *e2e, kids ...string) {
	t.Helper()
	ctx := context.Background()
	reg, err := e.registry.Keys(ctx, e2eClientID)
	if err != nil {
		t.Fatal(err)
	}
	var set []json.RawMessage
	for _, k := range reg {
		set = append(set, k.JWK)
	}
	for _, kid := range kids {
		k := signertest.Key(t, signertest.KeyB, kid)
		pub, err := rotation.PublicJWK(kid, signer.RS256, k.Signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		set = append(set, pub)
	}
	if _, err := e.registry.SetKeys(ctx, e2eClientID, set); err != nil {
		t.Fatal(err)
	}
}

func TestRotationStopsAtTheFiveKeyLimit(t *testing.T) {
	dir := t.TempDir()
	e := newE2E(t, "file:"+dir+"/")
	addByHand(t, e, "hand-1", "hand-2", "hand-3", "hand-4")
	before := e.registered()
	writes := e.emu.JWKSWrites()
	_, err := e.rotator(t, nil).Pass(context.Background(), rotation.Options{Force: true})
	if !errors.Is(err, rotation.ErrTooManyKeys) || !strings.Contains(err.Error(), "5 registered keys") {
		t.Fatalf("err = %v, want ErrTooManyKeys naming the count", err)
	}
	if got := e.registered(); !slices.Equal(got, before) || e.emu.JWKSWrites() != writes {
		t.Fatalf("registration changed: %v → %v", before, got)
	}
	if files, _ := os.ReadDir(dir); len(files) != 0 {
		t.Fatalf("a key was made: %v", files)
	}
}

// TestRotationWaitsForPropagation: Maskinporten takes longer to accept the
// new key than the first retries; the key becomes active only once it
// gets a token.
func TestRotationWaitsForPropagation(t *testing.T) {
	e := newE2E(t, "file:"+t.TempDir()+"/")
	e.emu.SetPropagationDelay(5 * time.Second) // the first retries come after 2 s and 6 s
	var activatedAt time.Time
	r := e.rotator(t, func(s rotation.Step) error {
		if s == rotation.StepActivate {
			activatedAt = time.Now()
		}
		return nil
	})
	rep, err := r.Pass(context.Background(), rotation.Options{Force: true})
	if err != nil || rep.Outcome != rotation.OutcomeWaiting {
		t.Fatalf("%+v %v", rep, err)
	}
	if e.proofs.Load() < 2 {
		t.Fatalf("%d proofs: the first one cannot have been accepted", e.proofs.Load())
	}
	var usable time.Time
	for _, k := range e.emu.RegisteredKeys(e2eClientID) {
		if k.KID == rep.Active {
			usable = k.UsableFrom
		}
	}
	if usable.IsZero() || activatedAt.Before(usable) {
		t.Fatalf("activated at %v, before Maskinporten accepts the key (%v)", activatedAt, usable)
	}
}

// TestRotationRacingReplicas: two replicas share Redis and race for the
// same due rotation; exactly one rotation happens.
func TestRotationRacingReplicas(t *testing.T) {
	srv := sharedcachetest.Start(t)
	e := newE2E(t, "file:"+t.TempDir()+"/")
	key := []byte("0123456789abcdef0123456789abcdef")
	var rotators []*rotation.Rotator
	for range 2 {
		client, err := sharedcache.Dial(sharedcache.RedisConfig{Addrs: []string{srv.Addr()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		store, err := redisstore.New(redisstore.Config{Client: client, IntegrityKey: key})
		if err != nil {
			t.Fatal(err)
		}
		e.store = store
		rotators = append(rotators, e.rotator(t, nil))
	}
	writes := e.emu.JWKSWrites()
	var wg sync.WaitGroup
	outcomes := make([]string, len(rotators))
	for i, r := range rotators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := r.Pass(context.Background(), rotation.Options{Force: true})
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
			}
			outcomes[i] = rep.Outcome
		}()
	}
	wg.Wait()
	slices.Sort(outcomes)
	// One rotated as far as the grace period; the other found the lease
	// held, or (when it came second) the rotation under way waiting.
	if outcomes[1] != rotation.OutcomeWaiting || (outcomes[0] != rotation.OutcomeHeld && outcomes[0] != rotation.OutcomeWaiting) {
		t.Fatalf("outcomes %v", outcomes)
	}
	if got := e.registered(); len(got) != 2 || e.emu.JWKSWrites()-writes != 1 {
		t.Fatalf("registered %v after %d writes: want the config key and exactly one new key in one write", got, e.emu.JWKSWrites()-writes)
	}
}
