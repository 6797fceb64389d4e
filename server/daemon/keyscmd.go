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
	kr  *keyRotation
	cfg *Config
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
	return &Rotation{kr: kr, cfg: cfg}, nil
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

// RotateOptions change a Rotate.
type RotateOptions struct {
	// DryRun changes nothing and reports what a pass would do.
	DryRun bool
	// Force starts a new rotation even within the grace period after the
	// last one (see ErrRecentRotation).
	Force bool
}

// ErrRecentRotation is returned by Rotate, without Force, when no rotation
// is under way and the last one became active or completed less than the
// client's grace period ago: a broker that finished a rotation a moment
// ago makes another one rarely what the operator meant (typically `keys
// rotate` run again after the grace period to finish a rotation the broker
// had already finished).
var ErrRecentRotation = errors.New("the last rotation is recent")

// Rotate runs one pass of client's rotation now, started even when none is
// due: the broker's own code path. A rotation under way is continued;
// without opts.Force a new one is not started within the grace period
// after the last one (ErrRecentRotation, saying when it was). While a
// replica holds the client's lease (its own pass under way) it waits for
// it, until ctx ends. With opts.DryRun it changes nothing and reports what
// it would do.
func (r *Rotation) Rotate(ctx context.Context, client string, opts RotateOptions) (rotation.Report, error) {
	rot, ok := r.kr.rotators[client]
	if !ok {
		return rotation.Report{}, fmt.Errorf("client %q has no rotation section", client)
	}
	if !opts.Force {
		if err := r.recent(ctx, client, time.Now()); err != nil {
			return rotation.Report{}, err
		}
	}
	for {
		rep, err := rot.Pass(ctx, rotation.Options{Force: true, DryRun: opts.DryRun})
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

// recent fails with ErrRecentRotation when client has no rotation under
// way and its last one became active or completed within its grace period
// before now.
func (r *Rotation) recent(ctx context.Context, client string, now time.Time) error {
	st, err := r.kr.store.Load(ctx, client)
	if err != nil {
		return fmt.Errorf("rotation state of client %s: %w", client, err)
	}
	last, what := st.LastRotation, "became active"
	if st.LastFinished.After(last) {
		last, what = st.LastFinished, "completed"
	}
	grace := r.Grace(r.cfg, client)
	if st.Rotation != nil || last.IsZero() || !now.Before(last.Add(grace)) {
		return nil
	}
	return fmt.Errorf("%w: the last rotation of client %s %s at %s (%s ago, within the grace period of %s), with %s active; not starting another: run with --force to rotate again now",
		ErrRecentRotation, client, what, last.UTC().Format(time.RFC3339), now.Sub(last).Round(time.Second), grace, st.ActiveKID(""))
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

// CheckSelfService opens the self-service client's key with its
// certificate chain, as the broker does at start, and describes it: the
// certificate's subject and expiry (the business certificate expires too,
// and rotation stops with it). It returns "" without a self_service
// section.
func CheckSelfService(cfg *Config, baseDir string) (string, error) {
	ss := cfg.SelfService
	if ss == nil {
		return "", nil
	}
	k, err := openAdminKey(context.Background(), ss, rotationEnv{cfg: cfg, baseDir: baseDir, open: keys.Open})
	if err != nil {
		return "", err
	}
	defer k.Close()
	leaf := k.Chain[0]
	left := time.Until(leaf.NotAfter)
	desc := fmt.Sprintf("self-service client %s: business certificate %q (serialNumber %s), expires %s (in %d days)",
		ss.ClientID, leaf.Subject.CommonName, leaf.Subject.SerialNumber, leaf.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))
	if left < 60*24*time.Hour {
		desc += ": renew it, key rotation stops when it expires"
	}
	return desc, nil
}

// RotationSummary describes client c's rotation section for check, or ""
// without one.
func RotationSummary(c ClientConfig) string {
	r := c.Rotation
	if r == nil {
		return ""
	}
	return fmt.Sprintf("client %s: rotation every %s (grace %s, renew %s before expiry), new keys at %s",
		c.Name, days(r.every()), r.grace(), days(r.renewBefore()), r.NewKeys)
}

func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}
