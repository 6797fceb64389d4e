package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// saveState stores st as client smartcloud's rotation state in kr's store.
func saveState(t *testing.T, kr *keyRotation, st rotation.State) {
	t.Helper()
	l, err := kr.store.Lease(context.Background(), "smartcloud", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Save(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	_ = l.Release(context.Background())
}

// `keys rotate` after the broker finished a rotation within the grace
// period does not start another one unless forced; a rotation under way is
// continued, and one that completed longer ago than the grace period is
// no obstacle.
func TestKeysRotateWithinGraceNeedsForce(t *testing.T) {
	reg := &stubRegistry{kids: []string{madeKID}}
	kr, _ := lostStateRotation(t, reg)
	r := &Rotation{kr: kr, cfg: &Config{Clients: []ClientConfig{{Name: "smartcloud", Rotation: &RotationConfig{}}}}}
	ctx := context.Background()
	now := time.Now()
	done := rotation.State{Active: madeKID, Keys: []rotation.ManagedKey{{KID: madeKID, URI: "file:///k/" + madeKID + ".pem"}},
		Retired: []string{"smartcloud-2026"}, LastRotation: now.Add(-rotation.DefaultGrace - 10*time.Minute), LastFinished: now.Add(-time.Minute)}
	saveState(t, kr, done)

	for _, dryRun := range []bool{false, true} {
		_, err := r.Rotate(ctx, "smartcloud", RotateOptions{DryRun: dryRun})
		if !errors.Is(err, ErrRecentRotation) {
			t.Fatalf("dry run %v: %v, want ErrRecentRotation", dryRun, err)
		}
		for _, want := range []string{"client smartcloud completed at", "within the grace period of 1h0m0s", "with " + madeKID + " active", "--force"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
	}
	if reg.reads.Load() != 0 {
		t.Fatalf("a refused rotate read the registration %d times", reg.reads.Load())
	}
	// Forced, a pass runs (and fails here at make: the maker is a stub).
	if _, err := r.Rotate(ctx, "smartcloud", RotateOptions{Force: true}); errors.Is(err, ErrRecentRotation) || reg.reads.Load() == 0 {
		t.Fatalf("forced: %v, %d registry reads", err, reg.reads.Load())
	}

	// Under way: continued (here at make, which fails in the stub).
	underWay := done
	underWay.Rotation = &rotation.InFlight{Step: rotation.StepMake, Next: "sc-1b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a90", Old: madeKID, Started: now}
	saveState(t, kr, underWay)
	if _, err := r.Rotate(ctx, "smartcloud", RotateOptions{}); errors.Is(err, ErrRecentRotation) {
		t.Fatalf("a rotation under way was not continued: %v", err)
	}
	// Completed longer ago than the grace period.
	old := done
	old.LastRotation, old.LastFinished = now.Add(-48*time.Hour), now.Add(-47*time.Hour)
	saveState(t, kr, old)
	if err := r.recent(ctx, "smartcloud", now); err != nil {
		t.Fatalf("a rotation two days ago: %v", err)
	}
	// A state saved before LastFinished was kept: the activation counts.
	legacy := done
	legacy.LastRotation, legacy.LastFinished = now.Add(-time.Minute), time.Time{}
	saveState(t, kr, legacy)
	if err := r.recent(ctx, "smartcloud", now); !errors.Is(err, ErrRecentRotation) || !strings.Contains(err.Error(), "became active at") {
		t.Fatalf("activated a minute ago: %v", err)
	}
}
