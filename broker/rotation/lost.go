package rotation

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
)

// ErrStateLost is the error of a client whose State is empty while its
// registration shows that a rotation went on (see CheckState).
var ErrStateLost = errors.New("rotation: the rotation state was lost")

// Empty reports whether st says nothing of the client's keys: no key made,
// none active, retired or being rotated in, and no rotation recorded. It is
// the state of a client that never rotated, and of one whose state the
// Store lost.
func Empty(st State) bool {
	return !holdsKeys(st) && st.LastRotation.IsZero()
}

// CheckState tells a client that never rotated from one whose State was
// lost (Redis restarted without persistence or flushed, the state file
// deleted): when st is Empty, it reads the registration and fails with
// ErrStateLost if the config's active key is not registered while other
// keys are. Such a client's keys are elsewhere: the first rotation removed
// the config's key from the registration, and taking st would sign with a
// key Maskinporten refuses, or start a rotation from it that makes and
// registers yet another key while the one in use stays registered with no
// owner. The error says what happened and how to recover.
//
// A st that is not Empty is not checked and costs no call. An error that
// does not wrap ErrStateLost is the registration's read error: the caller
// decides whether to go on without the check.
func (r *Rotator) CheckState(ctx context.Context, st State) error {
	if !Empty(st) {
		return nil
	}
	reg, err := r.cfg.Registry.Keys(ctx, r.cfg.ClientID)
	if err != nil {
		return fmt.Errorf("rotation: client %s: read registered keys: %w", r.cfg.Client, err)
	}
	return r.lostState(st, reg)
}

// lostState is CheckState with the registration already read.
func (r *Rotator) lostState(st State, reg []Registered) error {
	if !Empty(st) || len(reg) == 0 {
		return nil
	}
	active := r.cfg.ConfigActive
	var kids, made []string
	for _, k := range reg {
		if k.KID == active {
			return nil
		}
		kids = append(kids, k.KID)
		if MadeKID(k.KID) {
			made = append(made, k.KID)
		}
	}
	which := ""
	switch len(made) {
	case 0:
	case 1:
		which = fmt.Sprintf("; %s is named as the rotation names its keys", made[0])
	default:
		which = fmt.Sprintf("; %s are named as the rotation names its keys", strings.Join(made, ", "))
	}
	return fmt.Errorf("%w: the rotation state of client %s is empty but its config key %s is no longer registered at Digdir (registered: %s%s): "+
		"the state was lost (Redis restarted without persistence or flushed, the state file deleted, ...) after a rotation replaced %s. "+
		"Restore the state, or put the key in use into the config as `keys:` with `active: true`; until then the broker does not start and the client is not rotated",
		ErrStateLost, r.cfg.Client, active, strings.Join(kids, ", "), which, active)
}

// MadeKID reports whether kid is named as the rotation names the keys it
// makes: a kid_prefix (possibly empty) followed by a UUID.
func MadeKID(kid string) bool {
	const n = 36 // a UUID in its canonical form
	if len(kid) < n {
		return false
	}
	_, err := uuid.Parse(kid[len(kid)-n:])
	return err == nil
}
