package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
)

// Rotation is the key rotation of a config, for the keys commands: the same
// rotators the broker runs, on the same state, without a broker. A running
// broker picks up what they change by following the state.
type Rotation struct {
	kr *keyRotation
}

// OpenRotation builds the rotation of cfg's clients. It fails when no
// client has a rotation section. Close it.
func OpenRotation(ctx context.Context, cfg *Config, baseDir string, log *slog.Logger) (*Rotation, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	env, err := cfg.Environment()
	if err != nil {
		return nil, fmt.Errorf("maskinporten: %w", err)
	}
	httpClient, _ := newHTTPClients(ctx, cfg.Maskinporten, telemetry{})
	kr, err := newKeyRotation(ctx, rotationEnv{cfg: cfg, baseDir: baseDir, log: log, http: httpClient, env: env,
		open: keys.Open, lookup: os.LookupEnv})
	if err != nil {
		return nil, err
	}
	if kr == nil {
		return nil, errors.New("no client has a rotation section")
	}
	return &Rotation{kr: kr}, nil
}

// Close closes what the rotation holds (the self-service key, Redis).
func (r *Rotation) Close() { r.kr.close() }

// Clients are the names of the clients that rotate, in config order.
func (r *Rotation) Clients() []string { return r.kr.names }

// Status reads the state and the registration of client.
func (r *Rotation) Status(ctx context.Context, client string) (rotation.Status, error) {
	rot, ok := r.kr.rotators[client]
	if !ok {
		return rotation.Status{}, fmt.Errorf("client %q has no rotation section", client)
	}
	return rot.Status(ctx)
}

// Rotate runs one pass of client's rotation now, started even when none is
// due: the broker's own code path. While a replica holds the client's
// lease (its own pass under way) it waits for it, until ctx ends. With
// dryRun it changes nothing and reports what it would do.
func (r *Rotation) Rotate(ctx context.Context, client string, dryRun bool) (rotation.Report, error) {
	rot, ok := r.kr.rotators[client]
	if !ok {
		return rotation.Report{}, fmt.Errorf("client %q has no rotation section", client)
	}
	for {
		rep, err := rot.Pass(ctx, rotation.Options{Force: true, DryRun: dryRun})
		if err != nil || rep.Outcome != rotation.OutcomeHeld {
			return rep, err
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("another replica kept the lease of client %s: %w", client, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Grace is how long client's old key stays registered after a rotation.
func (r *Rotation) Grace(cfg *Config, client string) time.Duration {
	for _, c := range cfg.Clients {
		if c.Name == client && c.Rotation != nil {
			return c.Rotation.grace()
		}
	}
	return 0
}
