package broker

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// SharedCache is a second cache level that several replicas share (package
// sharedcache keeps it in Redis). The broker consults it inside its own
// single flight, so one replica asks it once per key however many callers
// wait, and the shared level makes one fetch per key across replicas.
type SharedCache interface {
	// Fetch returns the token stored for key when fresh accepts it, or the
	// refusal stored for key (a *maskinporten.Error that is not
	// Retryable). Otherwise it runs fetch, at most once at a time across
	// the replicas sharing the level, and stores its token (or its
	// permanent refusal, briefly) for the others. When the shared level
	// fails it runs fetch itself: a failing shared level is never an
	// outage. key holds the customer org: the implementation must not
	// store or show it in clear.
	Fetch(ctx context.Context, key string, fresh func(*maskinporten.Token) bool,
		fetch func(context.Context) (*maskinporten.Token, error)) (*maskinporten.Token, error)
	// Health reports the state of the shared level.
	Health() SharedHealth
}

// SharedPeeker is implemented by shared levels that can be read without
// fetching. While the upstream is known to be down, a miss here that would
// fail at once is served a token another replica stored, when it lives
// long enough.
type SharedPeeker interface {
	// Peek returns the token stored for key, or nil when there is none,
	// it is expired, or the level fails.
	Peek(ctx context.Context, key string) *maskinporten.Token
}

// peekShared returns a token for e from the shared level that lives
// minValidity, and keeps it in e, or nil.
func (b *Broker) peekShared(ctx context.Context, e *entry, minValidity time.Duration) *maskinporten.Token {
	p, ok := b.shared.(SharedPeeker)
	if !ok {
		return nil
	}
	t := p.Peek(ctx, e.key.sharedKey())
	now := b.now()
	if t == nil || t.ExpiresAt.Sub(now) < minValidity {
		return nil
	}
	e.mu.Lock()
	if old := e.tok.Load(); old == nil || old.ExpiresAt.Before(t.ExpiresAt) {
		e.store(t, now, b.refreshMargin, b.refreshFraction)
	}
	e.mu.Unlock()
	return t
}

// SharedHealth is the state of the shared cache level.
type SharedHealth struct {
	// Up is false while the shared level fails and each replica falls back
	// to its own cache and single flight.
	Up bool
	// Hits counts tokens served from the shared level instead of a fetch;
	// Fetches the fetches this replica made under the shared lock or on
	// a fallback; Waits the fetches it waited for on another replica.
	Hits, Fetches, Waits int64
	// Fallbacks counts fetches made without the shared level because it
	// failed; Outages and Returns count the transitions down and up.
	Fallbacks, Outages, Returns int64
}

// sharedKey is the cache key as the shared level sees it: every field of
// k, each length-prefixed so that no two keys give the same string.
func (k cacheKey) sharedKey() string {
	var s strings.Builder
	s.WriteString("tokenbroker/v1")
	for _, f := range []string{k.client, k.keyID, k.issuer, k.scopes, k.resource, k.customerOrg, k.externalRef, k.kind} {
		s.WriteByte('|')
		s.WriteString(strconv.Itoa(len(f)))
		s.WriteByte(':')
		s.WriteString(f)
	}
	return s.String()
}

// refreshMarginFor is how long before expiry a token of this lifetime is
// due for renewal, before jitter (see entry.store).
func (b *Broker) refreshMarginFor(lifetime time.Duration) time.Duration {
	m := max(b.refreshMargin, time.Duration(b.refreshFraction*float64(lifetime)))
	return min(m, lifetime/2)
}

// fetchShared is fetchFor through the shared level, when there is one. A
// token another replica stored serves this one when it is not yet due for
// renewal here (margin plus the largest jitter, so that it is not renewed
// at once) and lives at least need.
func (b *Broker) fetchShared(ctx context.Context, e *entry, need time.Duration) (tok *maskinporten.Token, shared bool, err error) {
	if b.shared == nil {
		tok, err = b.fetchFor(ctx, e)
		return tok, false, err
	}
	fetched := false
	fresh := func(t *maskinporten.Token) bool {
		lt := t.Lifetime()
		return t.ExpiresAt.Sub(b.now()) > max(need, b.refreshMarginFor(lt)+lt/20)
	}
	tok, err = b.shared.Fetch(ctx, e.key.sharedKey(), fresh, func(ctx context.Context) (*maskinporten.Token, error) {
		fetched = true
		return b.fetchFor(ctx, e)
	})
	return tok, !fetched && err == nil, err
}
