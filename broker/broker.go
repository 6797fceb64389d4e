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
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
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
}

// Config configures a Broker.
type Config struct {
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
}

// Broker serves tokens. It is safe for concurrent use.
type Broker struct {
	clients            map[string]*Client
	only               *Client
	cache              cache
	defaultMinValidity time.Duration
	fetchTimeout       time.Duration
	now                func() time.Time
	log                *slog.Logger
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
	}
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
	if b.defaultMinValidity == 0 {
		b.defaultMinValidity = 30 * time.Second
	}
	if b.defaultMinValidity < 0 || b.defaultMinValidity > MaxMinValidity {
		return nil, fmt.Errorf("broker: default min validity %v: want 0 to %v", b.defaultMinValidity, MaxMinValidity)
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
	return b, nil
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
}

// GetToken returns a token for r that stays valid for at least r's
// MinValidity (or the default), from the cache when one does. Otherwise it
// fetches one; concurrent callers for the same token share one fetch.
//
// Errors: a *FieldError for an invalid field, ErrScopeNotAllowed,
// ErrMinValidityTooLong, a *maskinporten.Error from Maskinporten (test for
// maskinporten.ErrNoSystemUser), or ctx's error when ctx ends first.
func (b *Broker) GetToken(ctx context.Context, r Request) (*Token, error) {
	v, err := validate(r)
	if err != nil {
		return nil, err
	}
	c, err := b.client(v.Client)
	if err != nil {
		return nil, err
	}
	for _, s := range v.scopes {
		if _, ok := slices.BinarySearch(c.Scopes, s); !ok {
			return nil, fmt.Errorf("%w: scope %q is not configured for client %q", ErrScopeNotAllowed, s, c.Name)
		}
	}
	minValidity := v.MinValidity
	if minValidity == 0 {
		minValidity = b.defaultMinValidity
	}
	kid := c.Source.KeyID()
	key := cacheKey{
		client:      c.Name,
		keyID:       kid,
		issuer:      c.Source.Environment().Issuer,
		scopes:      strings.Join(v.scopes, " "),
		resource:    v.Resource,
		customerOrg: v.CustomerOrg,
		externalRef: v.ExternalRef,
	}
	e := b.cache.entry(key)
	out := &Token{Client: c.Name, KeyID: kid, CustomerOrg: v.CustomerOrg}
	if t := e.tok.Load(); t != nil && t.ExpiresAt.Sub(b.now()) >= minValidity {
		out.Token, out.Cached = t, true
		return out, nil
	}
	if lt := time.Duration(e.lifetime.Load()); lt > 0 && minValidity > lt {
		return nil, fmt.Errorf("%w: asked for %v, tokens for this client live %v", ErrMinValidityTooLong, minValidity, lt)
	}
	mreq := maskinporten.Request{
		Scopes:      v.scopes,
		CustomerOrg: v.CustomerOrg,
		ExternalRef: v.ExternalRef,
		Resource:    v.Resource,
	}
	t, cached, err := b.fetch(ctx, e, c, mreq, minValidity)
	if err != nil {
		return nil, err
	}
	out.Token, out.Cached = t, cached
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
// FetchTimeout, so that a caller giving up does not fail the others; each
// caller waits only as long as its own ctx allows.
func (b *Broker) fetch(ctx context.Context, e *entry, c *Client, r maskinporten.Request, minValidity time.Duration) (*maskinporten.Token, bool, error) {
	e.mu.Lock()
	if t := e.tok.Load(); t != nil && t.ExpiresAt.Sub(b.now()) >= minValidity {
		e.mu.Unlock()
		return t, true, nil
	}
	f := e.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		e.flight = f
		go b.run(e, f, c, r)
	}
	e.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	if f.err != nil {
		return nil, false, f.err
	}
	if f.tok.ExpiresAt.Sub(b.now()) < minValidity {
		return nil, false, fmt.Errorf("%w: asked for %v, a fresh token lives %v", ErrMinValidityTooLong, minValidity, f.tok.Lifetime().Round(time.Second))
	}
	return f.tok, false, nil
}

// run performs one fetch and publishes its result to the entry and to the
// callers waiting on f.
func (b *Broker) run(e *entry, f *flight, c *Client, r maskinporten.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), b.fetchTimeout)
	defer cancel()
	start := b.now()
	tok, err := b.fetchSafely(ctx, c, r)
	latency := b.now().Sub(start)
	if err != nil {
		err = fmt.Errorf("client %q, customer_org %s, external_ref %q: %w", c.Name, r.CustomerOrg, r.ExternalRef, err)
	}

	e.mu.Lock()
	if err == nil {
		e.tok.Store(tok)
		e.lifetime.Store(int64(tok.Lifetime()))
	}
	f.tok, f.err = tok, err
	e.flight = nil
	e.mu.Unlock()
	close(f.done)

	attrs := []any{
		slog.String("client", c.Name),
		slog.String("customer_org", r.CustomerOrg),
		slog.Any("scopes", r.Scopes),
		slog.Duration("latency", latency),
	}
	if err != nil {
		b.log.Warn("token fetch failed", append(attrs, slog.String("error", err.Error()))...)
		return
	}
	b.log.Info("token fetched", append(attrs, slog.String("jti", tok.JWTID), slog.Time("expires_at", tok.ExpiresAt))...)
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
