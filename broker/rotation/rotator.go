package rotation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Defaults of Config.
const (
	// DefaultEvery is how often a client's key is rotated: well inside the
	// year Maskinporten accepts a key after it was registered.
	DefaultEvery = 90 * 24 * time.Hour
	// DefaultGrace is how long the old key stays registered after the next
	// one became active, so that every replica has switched (they look at
	// the state every DefaultFollowEvery) before it is removed.
	DefaultGrace = time.Hour
	// DefaultRenewBefore is how close to its expiry a registered key that
	// is in use is renewed (the registration written back unchanged).
	DefaultRenewBefore = 30 * 24 * time.Hour
	// DefaultProveTimeout is how long a new key may take to be accepted by
	// Maskinporten (Digdir: configuration reaches it in 0-2 minutes).
	DefaultProveTimeout = 10 * time.Minute
	// DefaultProveBackoff is the first wait between two proofs; it doubles
	// up to MaxProveBackoff.
	DefaultProveBackoff = 2 * time.Second
	MaxProveBackoff     = 10 * time.Second
	// DefaultLeaseTTL is how long a rotator holds a client's lease without
	// saving; every save renews it.
	DefaultLeaseTTL = 2 * time.Minute
	// DefaultCheckEvery is how often Run looks whether a rotation or a
	// renewal is due.
	DefaultCheckEvery = 10 * time.Minute
	// DefaultFollowEvery is how often Follow reads the state.
	DefaultFollowEvery = 15 * time.Second
)

// Outcomes of a pass, as Report.Outcome and in metrics.
const (
	OutcomeRotated  = "rotated" // the old key is gone; the rotation is complete
	OutcomeWaiting  = "waiting" // the next key is active; the old one waits out the grace period
	OutcomeRenewed  = "renewed" // the registration was written back to renew it
	OutcomeNotDue   = "not_due" // nothing to do
	OutcomeHeld     = "held"    // another replica holds the lease
	OutcomeFailed   = "failed"  // an error; the state says where to go on
	OutcomeDryRun   = "dry_run" // nothing was changed
	OutcomeStarted  = "started" // a dry run found a rotation would start
	outcomeStepDone = "step_done"
)

// ErrTooManyKeys is returned when the registration already holds
// MaxRegisteredKeys keys and the next key cannot be added. Nothing is made
// or removed: someone must remove a key that is no longer used.
var ErrTooManyKeys = errors.New("rotation: the client already has the most keys Digdir keeps")

// Config configures the Rotator of one client.
type Config struct {
	// Client is the client's name in the broker, ClientID its
	// Maskinporten client_id.
	Client, ClientID string
	// ConfigKeys are the kids the config lists for the client, and
	// ConfigActive the one it makes active. The rotator never destroys
	// them (it did not make them), but removes ConfigActive from the
	// registration after a rotation, as it does any key it replaced.
	ConfigKeys   []string
	ConfigActive string

	// Every, Grace, RenewBefore, ProveTimeout, ProveBackoff, LeaseTTL:
	// zero means the defaults above.
	Every, Grace, RenewBefore  time.Duration
	ProveTimeout, ProveBackoff time.Duration
	LeaseTTL                   time.Duration
	// FollowEvery is how often the replicas read the state and ack the key
	// they sign with (DefaultFollowEvery when zero). While a live replica
	// acks another key than the active one, the retire step waits and
	// looks again after AckTTL(FollowEvery).
	FollowEvery time.Duration

	// Maker makes the next key, Registry is the client's registration,
	// Store keeps the state.
	Maker    Maker
	Registry Registry
	Store    Store
	// Open opens a key (keys.Open).
	Open func(context.Context, signer.Spec) (*signer.Key, error)
	// Prove fetches a real token signed with key; nil error means
	// Maskinporten accepts the key.
	Prove func(ctx context.Context, key *signer.Key) error
	// Apply makes this broker use st's keys (called after every step that
	// changes which keys exist or which is active). Other replicas get
	// the state through Follow.
	Apply func(ctx context.Context, st State) error

	// Now is the clock; nil means time.Now. Sleep waits between proofs;
	// nil waits on a timer.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// Logger gets one line per step (never key material); nil discards.
	Logger *slog.Logger
	// NewKID names the next key; nil means a random UUID, which is unique
	// across all of Maskinporten as kids must be.
	NewKID func() string
	// AfterStep, when set, is called after each step was saved; an error
	// stops the pass there, as a crash would (tests inject crashes).
	AfterStep func(Step) error
}

// Rotator rotates one client's keys. Its passes may run in several
// processes at once: the Store's lease lets one of them act.
type Rotator struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	// seen is the last State a pass of this Rotator loaded, or saved at
	// its end; a pass refuses a State that went back from it (Regressed).
	seen State
}

// New checks cfg and returns a Rotator.
func New(cfg Config) (*Rotator, error) {
	switch {
	case cfg.Client == "" || cfg.ClientID == "":
		return nil, errors.New("rotation: client and client_id are required")
	case cfg.Maker == nil || cfg.Registry == nil || cfg.Store == nil || cfg.Open == nil || cfg.Prove == nil:
		return nil, errors.New("rotation: maker, registry, store, open and prove are required")
	case cfg.ConfigActive == "":
		return nil, errors.New("rotation: the config's active kid is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Every, DefaultEvery)
	def(&cfg.Grace, DefaultGrace)
	def(&cfg.RenewBefore, DefaultRenewBefore)
	def(&cfg.ProveTimeout, DefaultProveTimeout)
	def(&cfg.ProveBackoff, DefaultProveBackoff)
	def(&cfg.LeaseTTL, DefaultLeaseTTL)
	def(&cfg.FollowEvery, DefaultFollowEvery)
	if cfg.Every >= 365*24*time.Hour-cfg.RenewBefore {
		return nil, fmt.Errorf("rotation: every %s is not inside the year a key is accepted (less %s to renew)", cfg.Every, cfg.RenewBefore)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	if cfg.NewKID == nil {
		cfg.NewKID = uuid.NewString
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Apply == nil {
		cfg.Apply = func(context.Context, State) error { return nil }
	}
	return &Rotator{cfg: cfg, log: cfg.Logger.With(slog.String("client", cfg.Client))}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Client returns the name of the client the rotator rotates.
func (r *Rotator) Client() string { return r.cfg.Client }

// Options change one pass.
type Options struct {
	// Force starts a rotation even when none is due.
	Force bool
	// DryRun changes nothing and reports what a pass would do.
	DryRun bool
}

// Report says what a pass did.
type Report struct {
	Outcome string
	// Step is the step a rotation under way is at after the pass.
	Step Step
	// Active, Next and Old are kids: the active key after the pass, and
	// the keys of a rotation under way.
	Active, Next, Old string
	// Registered are the kids registered before the pass, and, for a dry
	// run, Planned the kids it would register.
	Registered, Planned []string
	// Due is when the next rotation is due; WaitUntil, while the old key
	// waits out the grace period, when it will be removed, and while a
	// replica still signs with it, when the next pass looks again.
	Due, WaitUntil time.Time
	// Blocking are the live replicas that still sign with another key
	// than the active one, which kept the old key registered.
	Blocking []Blocker
	// Actions, for a dry run, says what would be done, in order.
	Actions []string
}

// ActiveKID is the active kid of st for a client whose config makes
// configActive active.
func (st State) ActiveKID(configActive string) string {
	if st.Active != "" {
		return st.Active
	}
	return configActive
}

// managed returns the key the rotator made under kid, if any.
func (st State) managed(kid string) (ManagedKey, bool) {
	i := slices.IndexFunc(st.Keys, func(k ManagedKey) bool { return k.KID == kid })
	if i < 0 {
		return ManagedKey{}, false
	}
	return st.Keys[i], true
}

// Due returns when the next rotation of st is due: Every after the last
// rotation, or after the active key was registered (a year before its
// expiry when the registration gives no creation time), and at the latest
// RenewBefore before the active key expires (a renewal that did not move
// its expiry is followed by a rotation, which registers a fresh key). A
// key that is not registered at all is due now.
func (r *Rotator) Due(st State, reg []Registered) time.Time {
	active := st.ActiveKID(r.cfg.ConfigActive)
	i := slices.IndexFunc(reg, func(k Registered) bool { return k.KID == active })
	var due time.Time
	switch {
	case !st.LastRotation.IsZero():
		due = st.LastRotation.Add(r.cfg.Every)
	case i < 0:
		return r.cfg.Now()
	default:
		since := registeredSince(reg[i])
		if !st.ActiveSince.IsZero() && (since.IsZero() || st.ActiveSince.Before(since)) {
			since = st.ActiveSince
		}
		if since.IsZero() {
			return r.cfg.Now()
		}
		due = since.Add(r.cfg.Every)
	}
	if i >= 0 && !reg[i].Expires.IsZero() {
		if last := reg[i].Expires.Add(-r.cfg.RenewBefore); last.Before(due) {
			due = last
		}
	}
	return due
}

// Run rotates the client's keys as often as Every, renews registrations
// near expiry, and finishes rotations under way, looking every
// checkEvery (DefaultCheckEvery when zero) and when a grace period ends,
// until ctx ends. Each pass's report goes to onPass (which may be nil).
func (r *Rotator) Run(ctx context.Context, checkEvery time.Duration, onPass func(Report, error)) {
	if checkEvery <= 0 {
		checkEvery = DefaultCheckEvery
	}
	for {
		rep, err := r.Pass(ctx, Options{})
		if onPass != nil {
			onPass(rep, err)
		}
		// Come back when a wait ends (a grace period, a replica's ack), but
		// a pass that failed comes back at the next check, not at once.
		wait := checkEvery
		if !rep.WaitUntil.IsZero() {
			switch d := rep.WaitUntil.Sub(r.cfg.Now()); {
			case d > 0 && d < wait:
				wait = max(d, time.Second)
			case d <= 0 && err == nil:
				wait = time.Second // the wait ended during the pass
			}
		}
		if err := r.cfg.Sleep(ctx, wait); err != nil {
			return
		}
	}
}

// Pass does what is due now: renews the registration when a key in use
// nears expiry, starts a rotation when one is due (or opts.Force), and
// takes a rotation under way as far as it can go. It returns with
// OutcomeHeld when another process holds the client's lease.
func (r *Rotator) Pass(ctx context.Context, opts Options) (Report, error) {
	if opts.DryRun {
		return r.dryRun(ctx, opts)
	}
	lease, err := r.cfg.Store.Lease(ctx, r.cfg.Client, r.cfg.LeaseTTL)
	if errors.Is(err, ErrLeaseHeld) {
		return Report{Outcome: OutcomeHeld}, nil
	}
	if err != nil {
		return Report{Outcome: OutcomeFailed}, fmt.Errorf("rotation: client %s: lease: %w", r.cfg.Client, err)
	}
	defer func() { _ = lease.Release(context.WithoutCancel(ctx)) }()
	st, err := r.cfg.Store.Load(ctx, r.cfg.Client)
	if err != nil {
		return Report{Outcome: OutcomeFailed}, fmt.Errorf("rotation: client %s: load state: %w", r.cfg.Client, err)
	}
	p := &pass{r: r, lease: lease, st: st}
	r.mu.Lock()
	seen := r.seen
	r.mu.Unlock()
	var rep Report
	if Regressed(seen, st) {
		// Going on would start over from the config's key, which the
		// registration may no longer hold, and forget the keys made.
		rep, err = p.report(OutcomeFailed), fmt.Errorf("rotation: client %s: %w", r.cfg.Client, ErrRegressed)
	} else {
		rep, err = p.run(ctx, opts)
		// What was loaded, and on success what was saved last; not
		// what a failed pass may hold unsaved.
		r.mu.Lock()
		if r.seen = st; err == nil {
			r.seen = p.st
		}
		r.mu.Unlock()
	}
	if err != nil && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, errStopped) {
		// Record the failure where status and metrics read it; the
		// rotation under way stays at its step for the next pass.
		p.st.LastOutcome, p.st.LastError, p.st.LastAttempt = OutcomeFailed, cut(err.Error()), r.cfg.Now()
		_ = p.save(context.WithoutCancel(ctx))
		rep.Outcome = OutcomeFailed
	}
	return rep, err
}

// errStopped wraps the error of AfterStep.
var errStopped = errors.New("rotation: stopped after a step")

func cut(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// pass is one pass under the lease.
type pass struct {
	r     *Rotator
	lease Lease
	st    State
	reg   []Registered
}

func (p *pass) save(ctx context.Context) error {
	p.st.Seq++
	if err := p.lease.Save(ctx, p.st); err != nil {
		return fmt.Errorf("rotation: client %s: save state: %w", p.r.cfg.Client, err)
	}
	return nil
}

// stepDone saves the state after step and gives AfterStep its say.
func (p *pass) stepDone(ctx context.Context, step Step) error {
	if err := p.save(ctx); err != nil {
		return err
	}
	p.r.log.InfoContext(ctx, "rotation step done", slog.String("step", string(step)), p.kids())
	if p.r.cfg.AfterStep != nil {
		if err := p.r.cfg.AfterStep(step); err != nil {
			return fmt.Errorf("%w: %w", errStopped, err)
		}
	}
	return nil
}

func (p *pass) kids() slog.Attr {
	if p.st.Rotation == nil {
		return slog.String("active", p.st.ActiveKID(p.r.cfg.ConfigActive))
	}
	return slog.Group("keys", slog.String("next", p.st.Rotation.Next), slog.String("old", p.st.Rotation.Old))
}

func (p *pass) report(outcome string) Report {
	rep := Report{Outcome: outcome, Active: p.st.ActiveKID(p.r.cfg.ConfigActive), Due: p.r.Due(p.st, p.reg), Blocking: p.st.Blocking}
	for _, k := range p.reg {
		rep.Registered = append(rep.Registered, k.KID)
	}
	if f := p.st.Rotation; f != nil {
		rep.Step, rep.Next, rep.Old = f.Step, f.Next, f.Old
		if f.Step == StepRetire {
			rep.WaitUntil = f.Activated.Add(p.r.cfg.Grace)
		}
	}
	return rep
}

// readRegistration reads the registration and notes it in the state.
func (p *pass) readRegistration(ctx context.Context) error {
	reg, err := p.r.cfg.Registry.Keys(ctx, p.r.cfg.ClientID)
	if err != nil {
		return fmt.Errorf("rotation: client %s: read registered keys: %w", p.r.cfg.Client, err)
	}
	p.setRegistration(reg)
	return nil
}

func (p *pass) setRegistration(reg []Registered) {
	p.reg = reg
	p.st.Registered = p.st.Registered[:0]
	active := p.st.ActiveKID(p.r.cfg.ConfigActive)
	for _, k := range reg {
		p.st.Registered = append(p.st.Registered, RegisteredInfo{KID: k.KID, Expires: k.Expires, Created: k.Created})
		if since := registeredSince(k); k.KID == active && p.st.LastRotation.IsZero() && !since.IsZero() &&
			(p.st.ActiveSince.IsZero() || since.Before(p.st.ActiveSince)) {
			p.st.ActiveSince = since
		}
	}
}

// registeredSince is when k was registered: its creation, or a year before
// its expiry; zero when the registration says neither.
func registeredSince(k Registered) time.Time {
	switch {
	case !k.Created.IsZero():
		return k.Created
	case !k.Expires.IsZero():
		return k.Expires.AddDate(-1, 0, 0)
	}
	return time.Time{}
}

func (p *pass) run(ctx context.Context, opts Options) (Report, error) {
	now := p.r.cfg.Now()
	if err := p.readRegistration(ctx); err != nil {
		return p.report(OutcomeFailed), err
	}
	if err := p.r.lostState(p.st, p.reg); err != nil {
		return p.report(OutcomeFailed), err
	}
	renewed, err := p.renew(ctx, now)
	if err != nil {
		return p.report(OutcomeFailed), err
	}
	if p.st.Rotation == nil {
		if !opts.Force && now.Before(p.r.Due(p.st, p.reg)) {
			outcome := OutcomeNotDue
			if renewed {
				outcome = OutcomeRenewed
			}
			p.st.LastOutcome, p.st.LastAttempt = outcome, now
			if outcome == OutcomeRenewed {
				p.st.LastError = ""
			}
			if err := p.save(ctx); err != nil {
				return p.report(OutcomeFailed), err
			}
			return p.report(outcome), nil
		}
		if err := p.start(ctx, now); err != nil {
			return p.report(OutcomeFailed), err
		}
	}
	for p.st.Rotation != nil {
		f := p.st.Rotation
		var err error
		switch f.Step {
		case StepMake:
			err = p.make(ctx)
		case StepRegister:
			err = p.register(ctx)
		case StepProve:
			err = p.prove(ctx)
		case StepActivate:
			err = p.activate(ctx)
		case StepRetire:
			if p.r.cfg.Now().Before(f.Activated.Add(p.r.cfg.Grace)) {
				p.st.LastOutcome, p.st.LastError, p.st.LastAttempt = OutcomeWaiting, "", p.r.cfg.Now()
				if err := p.save(ctx); err != nil {
					return p.report(OutcomeFailed), err
				}
				return p.report(OutcomeWaiting), nil
			}
			blocked, berr := p.blocking(ctx)
			if berr != nil {
				return p.report(OutcomeFailed), berr
			}
			if len(blocked) > 0 {
				return p.waitForReplicas(ctx, blocked)
			}
			err = p.retire(ctx)
		case StepDestroy:
			err = p.destroy(ctx)
		default:
			err = fmt.Errorf("rotation: client %s: unknown step %q in the state", p.r.cfg.Client, f.Step)
		}
		if err != nil {
			return p.report(OutcomeFailed), err
		}
	}
	return p.report(OutcomeRotated), nil
}

// renew writes the registration back unchanged when a registered key that
// is in use (the active key, or the next one of a rotation) expires within
// RenewBefore: Digdir renews a key that is posted again.
func (p *pass) renew(ctx context.Context, now time.Time) (bool, error) {
	inUse := []string{p.st.ActiveKID(p.r.cfg.ConfigActive)}
	if f := p.st.Rotation; f != nil {
		inUse = append(inUse, f.Next)
	}
	near := false
	for _, k := range p.reg {
		if slices.Contains(inUse, k.KID) && !k.Expires.IsZero() && k.Expires.Sub(now) < p.r.cfg.RenewBefore {
			near = true
		}
	}
	if !near {
		return false, nil
	}
	reg, err := p.r.cfg.Registry.SetKeys(ctx, p.r.cfg.ClientID, jwks(p.reg))
	if err != nil {
		return false, fmt.Errorf("rotation: client %s: renew registration: %w", p.r.cfg.Client, err)
	}
	p.setRegistration(reg)
	p.r.log.InfoContext(ctx, "registration renewed", slog.String("kids", strings.Join(kidsOf(reg), ",")))
	return true, nil
}

func jwks(reg []Registered) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(reg))
	for _, k := range reg {
		out = append(out, k.JWK)
	}
	return out
}

func kidsOf(reg []Registered) []string {
	out := make([]string, 0, len(reg))
	for _, k := range reg {
		out = append(out, k.KID)
	}
	return out
}

func (p *pass) registered(kid string) bool {
	return slices.ContainsFunc(p.reg, func(k Registered) bool { return k.KID == kid })
}

// start begins a rotation: it checks there is room for one more key before
// anything is made.
func (p *pass) start(ctx context.Context, now time.Time) error {
	if len(p.reg) >= MaxRegisteredKeys {
		return fmt.Errorf("%w: client %s has %d registered keys (%s); remove one that is not in use at Digdir, the broker removes none it did not replace",
			ErrTooManyKeys, p.r.cfg.Client, len(p.reg), strings.Join(kidsOf(p.reg), ", "))
	}
	p.st.Rotation = &InFlight{Step: StepMake, Next: p.r.cfg.NewKID(), Old: p.st.ActiveKID(p.r.cfg.ConfigActive), Started: now}
	p.st.LastAttempt = now
	// Saved before the key is made: after a crash, Make finds the key by
	// this kid instead of making a second one.
	if err := p.save(ctx); err != nil {
		return err
	}
	p.r.log.InfoContext(ctx, "rotation started", p.kids())
	return nil
}

func (p *pass) make(ctx context.Context) error {
	f := p.st.Rotation
	spec, err := p.r.cfg.Maker.Make(ctx, f.Next)
	if err != nil {
		return fmt.Errorf("rotation: client %s: make key %s: %w", p.r.cfg.Client, f.Next, err)
	}
	if _, ok := p.st.managed(f.Next); !ok {
		p.st.Keys = append(p.st.Keys, ManagedKey{KID: f.Next, URI: spec.URI, Algorithm: spec.Algorithm, Made: p.r.cfg.Now()})
	}
	f.Step = StepRegister
	return p.stepDone(ctx, StepMake)
}

// spec returns the Spec of the managed key kid.
func (p *pass) spec(kid string) (signer.Spec, error) {
	mk, ok := p.st.managed(kid)
	if !ok {
		return signer.Spec{}, fmt.Errorf("rotation: client %s: key %s is not in the state", p.r.cfg.Client, kid)
	}
	return signer.Spec{URI: mk.URI, KeyID: mk.KID, Algorithm: mk.Algorithm}, nil
}

// openNext opens the next key; the caller closes it.
func (p *pass) openNext(ctx context.Context) (*signer.Key, error) {
	spec, err := p.spec(p.st.Rotation.Next)
	if err != nil {
		return nil, err
	}
	k, err := p.r.cfg.Open(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("rotation: client %s: open key %s: %w", p.r.cfg.Client, spec.KeyID, err)
	}
	return k, nil
}

func (p *pass) register(ctx context.Context) error {
	f := p.st.Rotation
	if !p.registered(f.Next) {
		if len(p.reg) >= MaxRegisteredKeys {
			return fmt.Errorf("%w: client %s has %d registered keys (%s); remove one that is not in use at Digdir",
				ErrTooManyKeys, p.r.cfg.Client, len(p.reg), strings.Join(kidsOf(p.reg), ", "))
		}
		k, err := p.openNext(ctx)
		if err != nil {
			return err
		}
		pub, err := PublicJWK(k.KeyID, k.Algorithm, k.Signer.Public())
		_ = k.Close()
		if err != nil {
			return err
		}
		reg, err := p.r.cfg.Registry.SetKeys(ctx, p.r.cfg.ClientID, append(jwks(p.reg), pub))
		if err != nil {
			return fmt.Errorf("rotation: client %s: register key %s: %w", p.r.cfg.Client, f.Next, err)
		}
		p.setRegistration(reg)
		if !p.registered(f.Next) {
			return fmt.Errorf("rotation: client %s: key %s is not in the registration after it was written", p.r.cfg.Client, f.Next)
		}
	}
	f.Step = StepProve
	return p.stepDone(ctx, StepRegister)
}

// prove fetches tokens with the next key until Maskinporten accepts it or
// ProveTimeout passes; each failed try renews the lease.
func (p *pass) prove(ctx context.Context) error {
	k, err := p.openNext(ctx)
	if err != nil {
		return err
	}
	defer k.Close()
	deadline := p.r.cfg.Now().Add(p.r.cfg.ProveTimeout)
	wait := p.r.cfg.ProveBackoff
	for try := 1; ; try++ {
		err := p.r.cfg.Prove(ctx, k)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !p.r.cfg.Now().Add(wait).Before(deadline) {
			return fmt.Errorf("rotation: client %s: Maskinporten did not accept key %s within %s (%d tries): %w",
				p.r.cfg.Client, k.KeyID, p.r.cfg.ProveTimeout, try, err)
		}
		p.r.log.InfoContext(ctx, "next key not accepted yet; trying again", slog.String("kid", k.KeyID),
			slog.Int("try", try), slog.Duration("wait", wait), slog.String("error", cut(err.Error())))
		if err := p.r.cfg.Sleep(ctx, wait); err != nil {
			return err
		}
		if err := p.save(ctx); err != nil { // renews the lease
			return err
		}
		wait = min(2*wait, MaxProveBackoff)
	}
	p.st.Rotation.Step = StepActivate
	return p.stepDone(ctx, StepProve)
}

func (p *pass) activate(ctx context.Context) error {
	f := p.st.Rotation
	now := p.r.cfg.Now()
	p.st.Active, p.st.LastRotation, f.Activated = f.Next, now, now
	p.st.ActiveSince = time.Time{} // LastRotation says it from now on
	f.Step = StepRetire
	if err := p.save(ctx); err != nil {
		return err
	}
	if err := p.r.cfg.Apply(ctx, p.st); err != nil {
		return fmt.Errorf("rotation: client %s: use key %s: %w", p.r.cfg.Client, f.Next, err)
	}
	p.r.log.InfoContext(ctx, "rotation step done", slog.String("step", string(StepActivate)), p.kids())
	if p.r.cfg.AfterStep != nil {
		if err := p.r.cfg.AfterStep(StepActivate); err != nil {
			return fmt.Errorf("%w: %w", errStopped, err)
		}
	}
	return nil
}

// blocking returns the live replicas that still sign with another key
// than the next (now active) one, when the Store keeps acks.
func (p *pass) blocking(ctx context.Context) ([]Blocker, error) {
	acker, ok := p.r.cfg.Store.(Acker)
	if !ok {
		return nil, nil
	}
	acks, err := acker.Acks(ctx, p.r.cfg.Client)
	if err != nil {
		return nil, fmt.Errorf("rotation: client %s: read the replicas' acks before removing key %s: %w",
			p.r.cfg.Client, p.st.Rotation.Old, err)
	}
	return Blocking(acks, p.st.Rotation.Next), nil
}

// waitForReplicas keeps the old key registered while blocked replicas
// still sign with another key: it records them in the state and reports
// OutcomeWaiting, with the next look after AckTTL(FollowEvery).
func (p *pass) waitForReplicas(ctx context.Context, blocked []Blocker) (Report, error) {
	f, now := p.st.Rotation, p.r.cfg.Now()
	msg := blockMessage(blocked, f.Old, f.Next)
	p.st.Blocking = blocked
	p.st.LastOutcome, p.st.LastError, p.st.LastAttempt = OutcomeWaiting, cut(msg), now
	if err := p.save(ctx); err != nil {
		return p.report(OutcomeFailed), err
	}
	p.r.log.WarnContext(ctx, "old key kept: a replica still signs with another key", p.kids(), slog.String("reason", msg))
	rep := p.report(OutcomeWaiting)
	rep.WaitUntil = now.Add(AckTTL(p.r.cfg.FollowEvery))
	return rep, nil
}

// retire removes the old key from the registration, keeping every other
// key (keys added by hand, a key of another rotation). It refuses while the
// next key is not registered (the set was replaced by someone else).
func (p *pass) retire(ctx context.Context) error {
	f := p.st.Rotation
	// The state may be older than the registration: read it again.
	if err := p.readRegistration(ctx); err != nil {
		return err
	}
	// Someone may have replaced the set since the next key was proven.
	// Without it registered, the old key is the only one we hold that
	// Maskinporten may still accept: keep it, and say so.
	if !p.registered(f.Next) {
		return fmt.Errorf("rotation: client %s: the active key %s is no longer registered (registered: %s); not removing %s, the old key: register %s again at Digdir",
			p.r.cfg.Client, f.Next, strings.Join(kidsOf(p.reg), ", "), f.Old, f.Next)
	}
	if f.Old != f.Next && p.registered(f.Old) {
		keep := slices.DeleteFunc(slices.Clone(p.reg), func(k Registered) bool { return k.KID == f.Old })
		reg, err := p.r.cfg.Registry.SetKeys(ctx, p.r.cfg.ClientID, jwks(keep))
		if err != nil {
			return fmt.Errorf("rotation: client %s: remove key %s from the registration: %w", p.r.cfg.Client, f.Old, err)
		}
		p.setRegistration(reg)
	}
	if !slices.Contains(p.st.Retired, f.Old) {
		p.st.Retired = append(p.st.Retired, f.Old)
	}
	p.st.Blocking = nil
	f.Step = StepDestroy
	if err := p.save(ctx); err != nil {
		return err
	}
	if err := p.r.cfg.Apply(ctx, p.st); err != nil {
		return fmt.Errorf("rotation: client %s: close key %s: %w", p.r.cfg.Client, f.Old, err)
	}
	return p.stepDone(ctx, StepRetire)
}

// destroy destroys the old key when the rotator made it; a key from the
// config is left to its owner.
func (p *pass) destroy(ctx context.Context) error {
	f := p.st.Rotation
	if mk, ok := p.st.managed(f.Old); ok {
		spec := signer.Spec{URI: mk.URI, KeyID: mk.KID, Algorithm: mk.Algorithm}
		if err := p.r.cfg.Maker.Destroy(ctx, spec); err != nil {
			return fmt.Errorf("rotation: client %s: destroy key %s: %w", p.r.cfg.Client, f.Old, err)
		}
		p.st.Keys = slices.DeleteFunc(p.st.Keys, func(k ManagedKey) bool { return k.KID == f.Old })
	} else {
		p.r.log.InfoContext(ctx, "old key came from the config: it is no longer registered and the broker no longer opens it; keep it in the config and its backend (the client needs its key:, and check opens it)",
			slog.String("kid", f.Old))
	}
	p.st.Rotation = nil
	p.st.LastOutcome, p.st.LastError, p.st.LastAttempt = OutcomeRotated, "", p.r.cfg.Now()
	p.st.LastFinished = p.st.LastAttempt
	return p.stepDone(ctx, StepDestroy)
}

// dryRun reports what a pass would do now, changing nothing.
func (r *Rotator) dryRun(ctx context.Context, opts Options) (Report, error) {
	st, err := r.cfg.Store.Load(ctx, r.cfg.Client)
	if err != nil {
		return Report{Outcome: OutcomeFailed}, fmt.Errorf("rotation: client %s: load state: %w", r.cfg.Client, err)
	}
	p := &pass{r: r, st: st}
	if err := p.readRegistration(ctx); err != nil {
		return p.report(OutcomeFailed), err
	}
	if err := r.lostState(st, p.reg); err != nil {
		return p.report(OutcomeFailed), err
	}
	rep := p.report(OutcomeDryRun)
	now := r.cfg.Now()
	planned := kidsOf(p.reg)
	if st.Rotation == nil {
		if !opts.Force && now.Before(rep.Due) {
			rep.Actions = append(rep.Actions, "nothing: the next rotation is due "+rep.Due.UTC().Format(time.RFC3339))
			rep.Planned = planned
			return rep, nil
		}
		if len(p.reg) >= MaxRegisteredKeys {
			return rep, fmt.Errorf("%w: client %s has %d registered keys (%s)", ErrTooManyKeys, r.cfg.Client, len(p.reg), strings.Join(planned, ", "))
		}
		old := st.ActiveKID(r.cfg.ConfigActive)
		rep.Outcome = OutcomeStarted
		rep.Actions = append(rep.Actions,
			"make a new key (a fresh UUID kid) in the rotation's backend",
			"register it beside "+strings.Join(planned, ", "),
			"fetch a token with it until Maskinporten accepts it (at most "+r.cfg.ProveTimeout.String()+")",
			"make it active",
			"after "+r.cfg.Grace.String()+", remove "+old+" from the registration",
			destroyAction(st, old))
		rep.Planned = append(planned, "<new>")
		return rep, nil
	}
	rep.Actions = append(rep.Actions, fmt.Sprintf("go on with the rotation under way at step %s (next %s, old %s)",
		st.Rotation.Step, st.Rotation.Next, st.Rotation.Old))
	rep.Planned = planned
	return rep, nil
}

func destroyAction(st State, old string) string {
	if _, ok := st.managed(old); ok {
		return "destroy or disable " + old + " in its backend"
	}
	return "leave " + old + " in its backend (it came from the config)"
}
