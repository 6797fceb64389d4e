package daemon

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// lostStateTimeout bounds the registration read that checks an empty
// rotation state at start.
const lostStateTimeout = 20 * time.Second

// checkLost checks, at start, a client's rotation state st against its
// registration at Digdir (rotation.Rotator.CheckState), which is read only
// when st is empty (a client that never rotated, or a lost state).
//
// When the state was lost (its config key is no longer registered, other
// keys are), it returns the error that says so and how to recover: the
// broker does not start. It would otherwise sign every grant of the client
// with a key Maskinporten refuses, and its rotation would start over from
// that key; a broker that refuses to start keeps serving from the replicas
// still running with the right key, and the operator learns at once.
//
// When the registration cannot be read (Digdir or Maskinporten down, the
// self-service client refused), it logs a warning and returns nil: the
// broker starts with what the state says, as it did before the check, so
// that an outage at Digdir never keeps a broker from starting. Its
// rotation passes make the same check with the registration they read,
// and fail (the alert fires) instead of starting over.
func (kr *keyRotation) checkLost(ctx context.Context, client string, st rotation.State) error {
	if !rotation.Empty(st) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, lostStateTimeout)
	defer cancel()
	err := kr.rotators[client].CheckState(ctx, st)
	if err == nil || errors.Is(err, rotation.ErrStateLost) {
		return err
	}
	kr.log.WarnContext(ctx, "the rotation state is empty and the registration cannot be read to check that it was not lost; starting with the config's key",
		slog.String("client", client), slog.String("error", err.Error()))
	return nil
}
