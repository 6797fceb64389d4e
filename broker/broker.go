// Package broker is the core of tokenbroker: it validates token requests,
// resolves the configured Maskinporten client, and serves system user
// access tokens from a cache, fetching each token once however many callers
// wait for it. It knows nothing of gRPC.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/pagetoken"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// TokenSource gets tokens from Maskinporten for one client and key.
// *maskinporten.Client implements it.
type TokenSource interface {
	// Token fetches a fresh token. Failures should be *maskinporten.Error.
	Token(ctx context.Context, r maskinporten.Request) (*maskinporten.Token, error)
	// KeyID is the kid of the key that signs the grants.
	KeyID() string
	// Environment is the Maskinporten environment the source talks to.
	Environment() maskinporten.Environment
}

// Client is a configured Maskinporten client.
type Client struct {
	// Name is what callers put in GetToken's client field.
	Name string
	// Scopes are the scopes callers may ask for with this client.
	Scopes []string
	// Source fetches the tokens.
	Source TokenSource
	// Exchanger, when not nil, trades Maskinporten tokens for Altinn
	// tokens (requests of KindAltinn). *altinn.Exchanger implements it.
	Exchanger Exchanger
	// SystemID is the client's system in Altinn's system register, and
	// Vendor the API the system user requests go to; both are needed for
	// CreateSystemUserRequest and GetSystemUserRequest.
	SystemID string
	Vendor   VendorAPI
}

// upstreamState is implemented by token sources and exchangers that know
// when their upstream is down (*maskinporten.Client, *altinn.Exchanger).
type upstreamState interface {
	// Unavailable returns the error a caller without a cached token gets
	// at once, or nil when a request could go out now.
	Unavailable() error
	// Recovering reports that the upstream was down and a request sent
	// now would be a probe.
	Recovering() bool
	// HedgeDelay is how long a request may go unanswered before it counts
	// as hung: a flight older than that is raced by a new one, if Hedging.
	HedgeDelay() time.Duration
	Hedging() bool
	// OnRecovery registers f to be called when requests may go out again
	// after an outage.
	OnRecovery(f func())
}

// Exchanger trades a Maskinporten token for an Altinn token.
type Exchanger interface {
	Exchange(ctx context.Context, mp *maskinporten.Token) (*maskinporten.Token, error)
}

// Config configures a Broker.
type Config struct {
	// Policy decides which caller may ask for what; nil denies everything
	// (policy.AllowAll allows everything, for dev mode and tests).
	Policy *policy.Policy
	// Clients are the Maskinporten clients; at least one, unique names.
	Clients []Client
	// DefaultMinValidity applies when a request sets no MinValidity;
	// 0 means 30 s.
	DefaultMinValidity time.Duration
	// FetchTimeout bounds one fetch from Maskinporten, independent of the
	// callers waiting for it; 0 means 30 s.
	FetchTimeout time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per fetch; nil discards. Tokens are never
	// logged.
	Logger *slog.Logger

	// RefreshMargin and RefreshFraction set when a token in use is renewed
	// in the background: when less than max(RefreshMargin,
	// RefreshFraction of its lifetime) remains (at most half the lifetime).
	// 0 means 60 s and 0.25.
	RefreshMargin   time.Duration
	RefreshFraction float64
	// IdleAfter: a key nobody asked for in this long is evicted; 0 means
	// 10 minutes. A key is refreshed only if it was asked for since its
	// token arrived.
	IdleAfter time.Duration
	// MaxEntries caps the number of cached keys; the least recently used
	// go first. 0 means 100,000.
	MaxEntries int
	// NegativeTTL is how long a permanent refusal (MP-303, invalid_scope,
	// ...) is remembered for its key; 0 means 5 s, negative disables.
	NegativeTTL time.Duration
	// SweepInterval is how often the background loop refreshes and
	// evicts; 0 means 500 ms, negative disables the loop (tests call
	// Sweep).
	SweepInterval time.Duration
	// PageTokenKey signs SystemUserService page tokens (at least 32
	// bytes); nil means a random key, so tokens work only in this process.
	// Replicas behind one address must share a key.
	PageTokenKey []byte
	// Shared, when not nil, is a cache level shared with other replicas:
	// a miss here looks there before fetching, and a fetched token goes to
	// both (SharedCache). nil keeps every token in this process.
	Shared SharedCache
}

// Broker serves tokens. It is safe for concurrent use. Close stops its
// background loop.
type Broker struct {
	clients            map[string]*Client
	only               *Client
	cache              cache
	defaultMinValidity time.Duration
	fetchTimeout       time.Duration
	now                func() time.Time
	log                *slog.Logger
	refreshMargin      time.Duration
	refreshFraction    float64
	idleAfter          time.Duration
	negativeTTL        time.Duration

	policy     atomic.Pointer[policy.Policy]
	wake       chan struct{}
	stop       chan struct{}
	stopOnce   sync.Once
	loopDone   chan struct{}
	skewMu     sync.Mutex
	skewWarned map[string]bool
	pages      *pagetoken.Codec
	shared     SharedCache
}

// New checks cfg and returns a Broker.
func New(cfg Config) (*Broker, error) {
	if len(cfg.Clients) == 0 {
		return nil, errors.New("broker: no clients configured")
	}
	b := &Broker{
		clients:            make(map[string]*Client, len(cfg.Clients)),
		defaultMinValidity: cfg.DefaultMinValidity,
		fetchTimeout:       cfg.FetchTimeout,
		now:                cfg.Now,
		log:                cfg.Logger,
		refreshMargin:      cfg.RefreshMargin,
		refreshFraction:    cfg.RefreshFraction,
		idleAfter:          cfg.IdleAfter,
		negativeTTL:        cfg.NegativeTTL,
		wake:               make(chan struct{}, 1),
		stop:               make(chan struct{}),
		loopDone:           make(chan struct{}),
		skewWarned:         map[string]bool{},
		shared:             cfg.Shared,
	}
	b.cache.max = int64(cfg.MaxEntries)
	pages, err := pagetoken.New(cfg.PageTokenKey, func() time.Time { return b.now() })
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.pages = pages
	b.policy.Store(cfg.Policy)
	for i := range cfg.Clients {
		c := cfg.Clients[i]
		switch {
		case c.Name == "":
			return nil, fmt.Errorf("broker: client %d has no name", i)
		case b.clients[c.Name] != nil:
			return nil, fmt.Errorf("broker: client name %q used twice", c.Name)
		case c.Source == nil:
			return nil, fmt.Errorf("broker: client %q has no token source", c.Name)
		case len(c.Scopes) == 0:
			return nil, fmt.Errorf("broker: client %q has no scopes", c.Name)
		}
		c.Scopes = maskinporten.SortedScopes(c.Scopes)
		b.clients[c.Name] = &c
		b.only = &c
	}
	if len(b.clients) > 1 {
		b.only = nil
	}
	if err := CheckDefaultMinValidity(b.defaultMinValidity); err != nil {
		return nil, fmt.Errorf("broker: default min validity %w", err)
	}
	if b.defaultMinValidity == 0 {
		b.defaultMinValidity = DefaultMinValidity
	}
	if b.fetchTimeout == 0 {
		b.fetchTimeout = 30 * time.Second
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.refreshMargin < 0 {
		return nil, fmt.Errorf("broker: refresh margin %v: want at least 0", b.refreshMargin)
	}
	if err := CheckRefreshFraction(b.refreshFraction); err != nil {
		return nil, fmt.Errorf("broker: refresh fraction %w", err)
	}
	if b.refreshMargin == 0 {
		b.refreshMargin = 60 * time.Second
	}
	if b.refreshFraction == 0 {
		b.refreshFraction = DefaultRefreshFraction
	}
	if b.idleAfter <= 0 {
		b.idleAfter = 10 * time.Minute
	}
	if b.cache.max <= 0 {
		b.cache.max = 100_000
	}
	if b.negativeTTL == 0 {
		b.negativeTTL = 5 * time.Second
	}
	interval := cfg.SweepInterval
	if interval == 0 {
		interval = 500 * time.Millisecond
	}
	if interval > 0 {
		for _, c := range b.clients {
			for _, u := range []any{c.Source, c.Exchanger} {
				if us, ok := u.(upstreamState); ok {
					us.OnRecovery(b.Wake)
				}
			}
		}
		go b.loop(interval)
	} else {
		close(b.loopDone)
	}
	return b, nil
}

// Wake makes the background loop sweep now rather than at its next tick.
// Clients call it when their upstream recovers, so that every key in use
// is refreshed at once (and a probe goes out as soon as one is due).
func (b *Broker) Wake() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// SetPolicy replaces the policy atomically: calls that start after it
// returns are checked against p. nil denies everything.
func (b *Broker) SetPolicy(p *policy.Policy) { b.policy.Store(p) }

// Close stops the background loop. Fetches in flight finish on their own
// timeout. GetToken keeps working, without refresh-ahead.
func (b *Broker) Close() {
	b.stopOnce.Do(func() { close(b.stop) })
	<-b.loopDone
}

func (b *Broker) loop(interval time.Duration) {
	defer close(b.loopDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.Sweep()
		case <-b.wake:
			b.Sweep()
		}
	}
}

// Sweep does one round of background work at the broker's current time:
// it starts refreshes of tokens in use that are due, evicts keys idle for
// IdleAfter, drops expired negative entries and checks the clock skew seen
// by each client. The background loop calls it; tests may call it directly.
func (b *Broker) Sweep() {
	now := b.now()
	n := now.UnixNano()
	idleCut := now.Add(-b.idleAfter).UnixNano()
	probed := map[upstreamState]bool{}
	b.cache.entries.Range(func(_, v any) bool {
		e := v.(*entry)
		if e.lastUsed.Load() < idleCut {
			b.cache.remove(e)
			return true
		}
		if neg := e.negative.Load(); neg != nil && !now.Before(neg.until) {
			e.negative.CompareAndSwap(neg, nil)
		}
		if e.tok.Load() != nil && n >= e.refreshAt.Load() && e.lastUsed.Load() > e.fetchedAt.Load() {
			// While the upstream recovers, one refresh per sweep goes out
			// as its probe; the probe closing the breaker wakes the next
			// sweep, which refreshes the rest.
			up := e.upstream()
			if up != nil && up.Recovering() && up.Unavailable() == nil && !probed[up] {
				probed[up] = true
				b.refreshAsyncProbe(e, true)
			} else {
				b.refreshAsync(e)
			}
		}
		return true
	})
	if b.cache.size.Load() > b.cache.max {
		b.cache.evictOldest()
	}
	b.checkSkew()
}

// MaxClockSkew is the clock offset to Maskinporten above which the broker
// warns; Maskinporten refuses grants more than 10 s off.
const MaxClockSkew = 5 * time.Second

// clockSkewer is implemented by token sources that see Maskinporten's clock.
type clockSkewer interface {
	ClockSkew() (time.Duration, bool)
}

func (b *Broker) checkSkew() {
	b.skewMu.Lock()
	defer b.skewMu.Unlock()
	for name, c := range b.clients {
		cs, ok := c.Source.(clockSkewer)
		if !ok {
			continue
		}
		skew, known := cs.ClockSkew()
		bad := known && (skew > MaxClockSkew || skew < -MaxClockSkew)
		switch {
		case bad && !b.skewWarned[name]:
			b.log.Warn("local clock is off Maskinporten's; grants may be refused (fix NTP)",
				slog.String("client", name), slog.Duration("maskinporten_minus_local", skew))
		case !bad && b.skewWarned[name]:
			b.log.Info("clock skew back within bounds", slog.String("client", name), slog.Duration("maskinporten_minus_local", skew))
		}
		b.skewWarned[name] = bad
	}
}

// Health is what the broker knows about its own state, for health detail.
type Health struct {
	// Clients holds one entry per configured client, by name.
	Clients map[string]ClientHealth
	// Cache counts. InFlight is the number of fetches running now.
	Entries, Hits, Misses, Refreshes, Evictions, InFlight int64
	// Shared is the state of the shared cache level; nil without one.
	Shared *SharedHealth
}

// ClientHealth is the state of one client.
type ClientHealth struct {
	// ClockSkew is Maskinporten's clock minus ours, when known.
	ClockSkew      time.Duration
	ClockSkewKnown bool
	// ClockSkewTooLarge is true when |ClockSkew| > MaxClockSkew.
	ClockSkewTooLarge bool
}

// Health reports the broker's state.
func (b *Broker) Health() Health {
	h := Health{
		Clients:   map[string]ClientHealth{},
		Entries:   b.cache.size.Load(),
		Hits:      b.cache.hits.Load(),
		Misses:    b.cache.misses.Load(),
		Refreshes: b.cache.refreshes.Load(),
		Evictions: b.cache.evictions.Load(),
		InFlight:  b.cache.inFlight.Load(),
	}
	if b.shared != nil {
		sh := b.shared.Health()
		h.Shared = &sh
	}
	for name, c := range b.clients {
		var ch ClientHealth
		if cs, ok := c.Source.(clockSkewer); ok {
			ch.ClockSkew, ch.ClockSkewKnown = cs.ClockSkew()
			ch.ClockSkewTooLarge = ch.ClockSkewKnown && (ch.ClockSkew > MaxClockSkew || ch.ClockSkew < -MaxClockSkew)
		}
		h.Clients[name] = ch
	}
	return h
}

// Token is a token as GetToken returns it. It shares the fetched
// *maskinporten.Token with other callers: treat it as read-only.
type Token struct {
	*maskinporten.Token
	// Client is the name of the client used.
	Client string
	// KeyID is the kid of the key that signed the grant.
	KeyID string
	// CustomerOrg is the nine-digit organisation number.
	CustomerOrg string
	// Cached is true when the token came from the cache.
	Cached bool
	// Kind is KindMaskinporten or KindAltinn.
	Kind string
	// UpstreamLatency is how long the Maskinporten fetch this call waited
	// for took; zero for a cache hit.
	UpstreamLatency time.Duration
}

// GetToken returns a token for r that stays valid for at least r's
// MinValidity (or the default), from the cache when one does. Otherwise it
// fetches one; concurrent callers for the same token share one fetch.
//
// Errors: a *FieldError for an invalid field, ErrPermissionDenied (wrapping
// a *policy.DeniedError) when the policy refuses the caller, ErrScopeNotAllowed,
// ErrMinValidityTooLong, a *maskinporten.Error from Maskinporten (test for
// maskinporten.ErrNoSystemUser), or ctx's error when ctx ends first.
func (b *Broker) GetToken(ctx context.Context, r Request) (*Token, error) {
	v, err := validate(r)
	if err != nil {
		return nil, err
	}
	name := v.Client
	if name == "" && b.only != nil {
		name = b.only.Name
	}
	minValidity := v.MinValidity
	if minValidity == 0 {
		minValidity = b.defaultMinValidity
	}
	// Policy first: a caller learns nothing about clients it may not use.
	if err := b.policy.Load().Check(v.Caller, policy.Request{
		Client: name, Scopes: v.scopes, CustomerOrg: v.CustomerOrg, ExternalRef: v.ExternalRef, MinValidity: minValidity,
	}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	c, err := b.client(name)
	if err != nil {
		return nil, err
	}
	for _, s := range v.scopes {
		if _, ok := slices.BinarySearch(c.Scopes, s); !ok {
			return nil, fmt.Errorf("%w: scope %q is not configured for client %q", ErrScopeNotAllowed, s, c.Name)
		}
	}
	kid := c.Source.KeyID()
	kind := ""
	if v.Kind == KindAltinn {
		if c.Exchanger == nil {
			return nil, fieldError("kind", "client %q has no Altinn exchange configured", c.Name)
		}
		kind = KindAltinn
	}
	key := cacheKey{
		kind:        kind,
		client:      c.Name,
		keyID:       kid,
		issuer:      c.Source.Environment().Issuer,
		scopes:      strings.Join(v.scopes, " "),
		resource:    v.Resource,
		customerOrg: v.CustomerOrg,
		externalRef: v.ExternalRef,
	}
	mreq := maskinporten.Request{
		Scopes:      v.scopes,
		CustomerOrg: v.CustomerOrg,
		ExternalRef: v.ExternalRef,
		Resource:    v.Resource,
	}
	now := b.now()
	e := b.cache.entry(key, func() *entry {
		e := &entry{key: key, client: c, req: mreq}
		e.lastUsed.Store(now.UnixNano())
		return e
	})
	e.touch(now)
	out := &Token{Client: c.Name, KeyID: kid, CustomerOrg: v.CustomerOrg, Kind: KindMaskinporten}
	if kind == KindAltinn {
		out.Kind = KindAltinn
	}
	if t := e.tok.Load(); t != nil && t.ExpiresAt.Sub(now) >= minValidity {
		if now.UnixNano() >= e.refreshAt.Load() {
			b.refreshAsync(e)
		}
		b.cache.hits.Add(1)
		out.Token, out.Cached = t, true
		return out, nil
	}
	b.cache.misses.Add(1)
	if neg := e.negative.Load(); neg != nil && now.Before(neg.until) {
		return nil, neg.err
	}
	if lt := time.Duration(e.lifetime.Load()); lt > 0 && minValidity > lt {
		return nil, fmt.Errorf("%w: asked for %v, tokens for this client live %v", ErrMinValidityTooLong, minValidity, lt)
	}
	t, cached, latency, err := b.fetch(ctx, e, minValidity)
	if err != nil {
		return nil, err
	}
	out.Token, out.Cached, out.UpstreamLatency = t, cached, latency
	return out, nil
}

func (b *Broker) client(name string) (*Client, error) {
	if name == "" {
		if b.only == nil {
			return nil, fieldError("client", "required when several clients are configured")
		}
		return b.only, nil
	}
	c := b.clients[name]
	if c == nil {
		return nil, fieldError("client", "no client named %q is configured", name)
	}
	return c, nil
}

// fetch returns a token for e valid for minValidity, joining a fetch in
// flight or starting one. The fetch runs on its own context, bounded by
// FetchTimeout, so that a caller giving up does not fail the others. A
// caller with a deadline waits until just before it and then gets
// ErrUpstreamSlow, so that it can tell a slow Maskinporten from its own
// deadline.
//
// When the upstream is known to be down (its breaker is open, or it asked
// for a pause with a 429), the caller gets that error at once instead of
// waiting. While it recovers (a probe is due or out), the caller starts
// the fetch, which then is the probe or fails at once, but does not wait
// for it: a probe may hang for a hedge delay; a token it brings serves the
// next call. A flight older than the upstream's hedge delay is stuck: a
// new caller starts a new flight beside it (once per flight) rather than
// joining it, so that a flight caught on a hung connection does not hold
// the callers that come after it. Like a hedge, this happens only where
// hedging is on; each such flight's attempts count for the breaker, which
// bounds the extra grants.
func (b *Broker) fetch(ctx context.Context, e *entry, minValidity time.Duration) (*maskinporten.Token, bool, time.Duration, error) {
	sharedRetry := false
again:
	e.mu.Lock()
	if t := e.tok.Load(); t != nil && t.ExpiresAt.Sub(b.now()) >= minValidity {
		e.mu.Unlock()
		return t, true, 0, nil
	}
	up := e.upstream()
	recovering := false
	if up != nil {
		if err := up.Unavailable(); err != nil {
			e.mu.Unlock()
			if t := b.peekShared(ctx, e, minValidity); t != nil {
				return t, true, 0, nil
			}
			return nil, false, 0, fmt.Errorf("client %q, customer_org %s: %w", e.client.Name, e.req.CustomerOrg, err)
		}
		recovering = up.Recovering()
		if f := e.flight; f != nil && !f.raced && up.Hedging() && time.Since(f.started) > up.HedgeDelay() {
			f.raced = true
			e.flight = nil
		}
	}
	f := b.startLocked(e, true, minValidity)
	e.mu.Unlock()
	if recovering {
		return nil, false, 0, fmt.Errorf("client %q, customer_org %s: %w", e.client.Name, e.req.CustomerOrg, &maskinporten.Error{
			Description: "upstream recovering after an outage: a probe is on its way", Retryable: true, CircuitOpen: true, RetryAfter: up.HedgeDelay()})
	}

	var slow <-chan time.Time
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		t := time.NewTimer(left - min(100*time.Millisecond, left/10))
		defer t.Stop()
		slow = t.C
	}
	select {
	case <-f.done:
	case <-slow:
		return nil, false, 0, fmt.Errorf("%w (client %q, customer_org %s)", ErrUpstreamSlow, e.client.Name, e.req.CustomerOrg)
	case <-ctx.Done():
		return nil, false, 0, ctx.Err()
	}
	if f.err != nil {
		return nil, false, 0, f.err
	}
	if f.shared && f.tok.ExpiresAt.Sub(b.now()) < minValidity && f.tok.Lifetime() >= minValidity && !sharedRetry {
		// A joiner asking for more than the flight's starter: a token of
		// another replica was good enough for that one, not for this.
		sharedRetry = true
		goto again
	}
	if f.tok.ExpiresAt.Sub(b.now()) < minValidity {
		return nil, false, 0, fmt.Errorf("%w: asked for %v, a fresh token lives %v", ErrMinValidityTooLong, minValidity, f.tok.Lifetime().Round(time.Second))
	}
	return f.tok, f.shared, f.latency, nil
}

// upstream returns what knows the state of the upstream e's fetch goes to
// first: the token source (an Altinn token needs a Maskinporten token
// first, and that fetch checks the exchanger's state itself).
func (e *entry) upstream() upstreamState {
	if e.key.kind == KindAltinn {
		if us, ok := e.client.Exchanger.(upstreamState); ok {
			return us
		}
		return nil
	}
	us, _ := e.client.Source.(upstreamState)
	return us
}

// refreshAsync starts a background fetch for e unless one is in flight,
// the refresh is no longer due (another one just finished), or the
// upstream is down or recovering: a refresh then would fail at once (and
// log that), or wait on a probe that Sweep sends.
func (b *Broker) refreshAsync(e *entry) { b.refreshAsyncProbe(e, false) }

// refreshAsyncProbe is refreshAsync; probe lets the refresh go out while
// the upstream recovers, as its probe.
func (b *Broker) refreshAsyncProbe(e *entry, probe bool) {
	if up := e.upstream(); up != nil && (up.Unavailable() != nil || (up.Recovering() && !probe)) {
		return
	}
	e.mu.Lock()
	if e.flight == nil && b.now().UnixNano() >= e.refreshAt.Load() {
		b.cache.refreshes.Add(1)
		b.startLocked(e, false, 0)
	}
	e.mu.Unlock()
}

// startLocked returns the flight of e, starting one if there is none;
// waited says that a caller waits for it, need how long a token from the
// shared level must still live for it. e.mu must be held.
func (b *Broker) startLocked(e *entry, waited bool, need time.Duration) *flight {
	if e.flight == nil {
		e.flight = &flight{done: make(chan struct{}), started: time.Now(), need: need}
		b.cache.inFlight.Add(1)
		go b.run(e, e.flight)
	}
	if waited {
		e.flight.waiting.Store(true)
	}
	return e.flight
}

// run performs one fetch and publishes its result to the entry and to the
// callers waiting on f. A token that is still valid survives a failed
// refresh caused by an outage; a permanent refusal drops it and is
// remembered for NegativeTTL. A fetch no caller waits for yields to those
// that have callers when the client's grant rate is reached.
func (b *Broker) run(e *entry, f *flight) {
	ctx, cancel := context.WithTimeout(context.Background(), b.fetchTimeout)
	defer cancel()
	ctx = maskinporten.WithWaiters(ctx, &f.waiting)
	c, r := e.client, e.req
	start := b.now()
	tok, shared, err := b.fetchShared(ctx, e, f.need)
	now := b.now()
	latency := now.Sub(start)
	var me *maskinporten.Error
	permanent := err != nil && errors.As(err, &me) && !me.Retryable
	if err != nil {
		err = fmt.Errorf("client %q, customer_org %s, external_ref %q: %w", c.Name, r.CustomerOrg, r.ExternalRef, err)
	}

	e.mu.Lock()
	switch {
	case err == nil:
		if old := e.tok.Load(); old == nil || !tok.ExpiresAt.Before(old.ExpiresAt) {
			e.store(tok, now, b.refreshMargin, b.refreshFraction)
		}
	case permanent:
		e.tok.Store(nil)
		if b.negativeTTL > 0 {
			e.negative.Store(&negative{err: err, until: now.Add(b.negativeTTL)})
		}
	}
	f.tok, f.err, f.latency, f.shared = tok, err, latency, shared
	if e.flight == f {
		e.flight = nil
	}
	e.mu.Unlock()
	close(f.done)
	b.cache.inFlight.Add(-1)

	attrs := []any{
		slog.String("client", c.Name),
		slog.String("customer_org", r.CustomerOrg),
		slog.Any("scopes", r.Scopes),
		slog.Duration("latency", latency),
	}
	if err != nil {
		b.log.Warn("token fetch failed", append(attrs, slog.String("error", err.Error()), slog.Bool("permanent", permanent))...)
		return
	}
	if shared {
		b.log.Debug("token from the shared cache", append(attrs, slog.String("jti", tok.JWTID), slog.Time("expires_at", tok.ExpiresAt))...)
		return
	}
	b.log.Info("token fetched", append(attrs, slog.String("jti", tok.JWTID), slog.Time("expires_at", tok.ExpiresAt))...)
}

// exchangeMinValidity is how long the Maskinporten token must still live
// when it is exchanged for an Altinn token.
const exchangeMinValidity = 15 * time.Second

// fetchFor gets a fresh token for e: from the source for a Maskinporten
// token; for an Altinn token, by exchanging the (cached, single-flighted)
// Maskinporten token of the same key, refetched once if Altinn rejects it.
func (b *Broker) fetchFor(ctx context.Context, e *entry) (*maskinporten.Token, error) {
	if e.key.kind != KindAltinn {
		return b.fetchSafely(ctx, e.client, e.req)
	}
	mpKey := e.key
	mpKey.kind = ""
	for attempt := 0; ; attempt++ {
		mpe := b.cache.entry(mpKey, func() *entry {
			n := &entry{key: mpKey, client: e.client, req: e.req}
			n.lastUsed.Store(b.now().UnixNano())
			return n
		})
		mp, _, _, err := b.fetch(ctx, mpe, exchangeMinValidity)
		if err != nil {
			return nil, err
		}
		tok, err := e.client.Exchanger.Exchange(ctx, mp)
		if errors.Is(err, altinn.ErrRejected) && attempt == 0 {
			mpe.tok.CompareAndSwap(mp, nil)
			continue
		}
		return tok, err
	}
}

// fetchSafely calls the source and turns a panic into an error, so that a
// faulty source cannot take the broker down.
func (b *Broker) fetchSafely(ctx context.Context, c *Client, r maskinporten.Request) (tok *maskinporten.Token, err error) {
	defer func() {
		if p := recover(); p != nil {
			tok, err = nil, fmt.Errorf("broker: token source of client %q panicked", c.Name)
		}
	}()
	tok, err = c.Source.Token(ctx, r)
	if err == nil && tok == nil {
		err = fmt.Errorf("broker: token source of client %q returned no token", c.Name)
	}
	return tok, err
}

// Defaults of Config.
const (
	DefaultMinValidity     = 30 * time.Second
	DefaultRefreshFraction = 0.25
)

// CheckDefaultMinValidity reports whether d is a Config.DefaultMinValidity
// New accepts: 0 (DefaultMinValidity) to MaxMinValidity.
func CheckDefaultMinValidity(d time.Duration) error {
	if d < 0 || d > MaxMinValidity {
		return fmt.Errorf("%v: want 0 to %v (default %v)", d, MaxMinValidity, DefaultMinValidity)
	}
	return nil
}

// CheckRefreshFraction reports whether f is a Config.RefreshFraction New
// accepts: 0 (DefaultRefreshFraction) to 0.5.
func CheckRefreshFraction(f float64) error {
	if f < 0 || f > 0.5 {
		return fmt.Errorf("%v: want 0 to 0.5 (default %v)", f, DefaultRefreshFraction)
	}
	return nil
}
