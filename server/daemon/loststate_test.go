package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/rotation/filestore"
	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// stubRegistry answers Keys with kids, or with err; it counts the reads.
type stubRegistry struct {
	kids  []string
	err   error
	reads atomic.Int64
}

func (s *stubRegistry) Keys(context.Context, string) ([]rotation.Registered, error) {
	s.reads.Add(1)
	var out []rotation.Registered
	for _, k := range s.kids {
		out = append(out, rotation.Registered{KID: k})
	}
	return out, s.err
}

func (s *stubRegistry) SetKeys(context.Context, string, []json.RawMessage) ([]rotation.Registered, error) {
	return nil, errors.New("stub registry: read only")
}

type stubMaker struct{}

func (stubMaker) Make(context.Context, string) (signer.Spec, error) {
	return signer.Spec{}, errors.New("stub")
}
func (stubMaker) Destroy(context.Context, signer.Spec) error { return errors.New("stub") }

// lostStateRotation is a keyRotation of client smartcloud (config key
// smartcloud-2026) on a state directory, with reg as its registration.
func lostStateRotation(t *testing.T, reg rotation.Registry) (*keyRotation, *bytes.Buffer) {
	t.Helper()
	store, err := filestore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	kr := &keyRotation{store: store, names: []string{"smartcloud"}, rotators: map[string]*rotation.Rotator{},
		states: map[string]rotation.State{}, errs: map[string]string{}, log: slog.New(slog.NewTextHandler(&log, nil)), close: func() {}}
	rot, err := rotation.New(rotation.Config{Client: "smartcloud", ClientID: "cid", ConfigKeys: []string{"smartcloud-2026"},
		ConfigActive: "smartcloud-2026", Maker: stubMaker{}, Registry: reg, Store: store,
		Open:  func(context.Context, signer.Spec) (*signer.Key, error) { return nil, errors.New("stub") },
		Prove: func(context.Context, *signer.Key) error { return errors.New("stub") }})
	if err != nil {
		t.Fatal(err)
	}
	kr.rotators["smartcloud"] = rot
	return kr, &log
}

const madeKID = "sc-0b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a90"

// A broker that starts on an empty rotation state while the registration
// no longer holds the config's key (a rotation replaced it; the state was
// lost) refuses to start, saying what happened and how to recover.
func TestStartRefusesALostRotationState(t *testing.T) {
	kr, _ := lostStateRotation(t, &stubRegistry{kids: []string{madeKID, "by-hand"}})
	err := kr.load(context.Background())
	if !errors.Is(err, rotation.ErrStateLost) {
		t.Fatalf("load: %v, want ErrStateLost", err)
	}
	for _, want := range []string{"rotation state of client smartcloud is empty", "config key smartcloud-2026 is no longer registered",
		"registered: " + madeKID + ", by-hand", madeKID + " is named as the rotation names its keys", "Restore the state",
		"`keys:` with `active: true`"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// An empty state whose registration holds the config's key is a client
// that never rotated: the broker starts.
func TestStartTakesAnEmptyStateOfAClientThatNeverRotated(t *testing.T) {
	kr, _ := lostStateRotation(t, &stubRegistry{kids: []string{"smartcloud-2026", madeKID}})
	if err := kr.load(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// When the registration cannot be read at start (Digdir down), the broker
// starts with what the state says and logs a warning.
func TestStartGoesOnWhenTheRegistrationCannotBeRead(t *testing.T) {
	reg := &stubRegistry{err: errors.New("self-service API answered 503")}
	kr, log := lostStateRotation(t, reg)
	if err := kr.load(context.Background()); err != nil {
		t.Fatalf("load: %v", err)
	}
	if reg.reads.Load() != 1 || !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "503") {
		t.Fatalf("%d reads; log:\n%s", reg.reads.Load(), log.String())
	}
	if _, ok := kr.snapshot()["smartcloud"]; !ok {
		t.Fatal("the state was not taken")
	}
}

// A state that holds keys needs no registry call at start.
func TestStartWithAStateReadsNoRegistration(t *testing.T) {
	reg := &stubRegistry{err: errors.New("must not be read")}
	kr, _ := lostStateRotation(t, reg)
	st := rotation.State{Active: madeKID, Keys: []rotation.ManagedKey{{KID: madeKID, URI: "file:///k/" + madeKID + ".pem"}},
		Retired: []string{"smartcloud-2026"}, LastRotation: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	l, err := kr.store.Lease(context.Background(), "smartcloud", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Save(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	_ = l.Release(context.Background())
	if err := kr.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if reg.reads.Load() != 0 || kr.snapshot()["smartcloud"].Active != madeKID {
		t.Fatalf("%d registry reads; state %+v", reg.reads.Load(), kr.snapshot()["smartcloud"])
	}
}
