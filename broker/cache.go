package broker

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// cacheKey covers everything that changes a token. Scopes are sorted and
// unique, joined with spaces; the org number is bare.
type cacheKey struct {
	client      string
	keyID       string
	issuer      string
	scopes      string
	resource    string
	customerOrg string
	externalRef string
	// kind is "" for the Maskinporten token, KindAltinn for the
	// exchanged one.
	kind string
}

// cache maps keys to entries. Lookups and hits take no lock; only eviction
// of the least recently used entries, when the cache is full, is serialised.
type cache struct {
	entries sync.Map // cacheKey -> *entry
	size    atomic.Int64
	max     int64
	evictMu sync.Mutex

	hits, misses, refreshes, evictions, inFlight atomic.Int64
}

// entry holds the newest token for one key, what is needed to fetch the
// next one, and the fetch in flight, if any.
//
// Memory: one entry costs about 1 KiB plus the token itself (BENCHMARKS.md
// has the measured figure).
type entry struct {
	key    cacheKey
	client *Client
	req    maskinporten.Request

	tok       atomic.Pointer[maskinporten.Token]
	refreshAt atomic.Int64 // unix ns: renew in the background from then on
	fetchedAt atomic.Int64 // unix ns of the newest token's arrival
	lifetime  atomic.Int64 // ns, of the newest token; 0 before the first
	lastUsed  atomic.Int64 // unix ns of the last GetToken for this key
	negative  atomic.Pointer[negative]

	mu     sync.Mutex // guards flight
	flight *flight
}

// negative remembers a permanent refusal for a short while.
type negative struct {
	err   error
	until time.Time
}

// flight is one fetch in progress; done closes when tok or err is set.
type flight struct {
	done    chan struct{}
	tok     *maskinporten.Token
	err     error
	latency time.Duration
	// started is when the flight began, in real time (hedge delays are
	// real time); raced is set, under the entry's mu, once a newer flight
	// has replaced it because it seemed stuck.
	started time.Time
	raced   bool
	// waiting is true once a caller waits for the flight.
	waiting atomic.Bool
}

// entry returns the entry for k, creating it with mk when there is none.
// Creating one may evict the least recently used entries when the cache is
// over its cap.
func (c *cache) entry(k cacheKey, mk func() *entry) *entry {
	if e, ok := c.entries.Load(k); ok {
		return e.(*entry)
	}
	v, loaded := c.entries.LoadOrStore(k, mk())
	if !loaded && c.size.Add(1) > c.max {
		c.evictOldest()
	}
	return v.(*entry)
}

// remove deletes e unless a fetch for it is in flight.
func (c *cache) remove(e *entry) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.flight != nil {
		return false
	}
	if c.entries.CompareAndDelete(e.key, e) {
		c.size.Add(-1)
		c.evictions.Add(1)
		return true
	}
	return false
}

// evictOldest removes the least recently used entries until the cache is
// at 90% of its cap. Only one caller evicts at a time; the others go on.
func (c *cache) evictOldest() {
	if !c.evictMu.TryLock() {
		return
	}
	defer c.evictMu.Unlock()
	if c.size.Load() <= c.max {
		return
	}
	type aged struct {
		e    *entry
		used int64
	}
	all := make([]aged, 0, c.size.Load())
	c.entries.Range(func(_, v any) bool {
		e := v.(*entry)
		all = append(all, aged{e, e.lastUsed.Load()})
		return true
	})
	slices.SortFunc(all, func(a, b aged) int { return cmp.Compare(a.used, b.used) })
	target := c.max - c.max/10
	for _, a := range all {
		if c.size.Load() <= target {
			break
		}
		c.remove(a.e)
	}
}

// touch records a use at now. Stores are skipped while the recorded time is
// fresh, so that a hot key's callers do not all write the same word.
func (e *entry) touch(now time.Time) {
	n := now.UnixNano()
	if n-e.lastUsed.Load() > int64(50*time.Millisecond) {
		e.lastUsed.Store(n)
	}
}

// store publishes a fresh token and schedules its background refresh: when
// less than max(margin, fraction of the lifetime) remains, at most half the
// lifetime, and up to 5% of the lifetime earlier at random so that keys
// fetched together do not refresh together.
func (e *entry) store(t *maskinporten.Token, now time.Time, margin time.Duration, fraction float64) {
	lifetime := t.Lifetime()
	m := max(margin, time.Duration(fraction*float64(lifetime)))
	m = min(m, lifetime/2)
	jitter := time.Duration(0)
	if j := int64(lifetime / 20); j > 0 {
		jitter = time.Duration(rand.Int64N(j))
	}
	// The token is published last: a reader that sees it sees its
	// refresh time too.
	e.lifetime.Store(int64(lifetime))
	e.fetchedAt.Store(now.UnixNano())
	e.refreshAt.Store(t.ExpiresAt.Add(-m - jitter).UnixNano())
	e.negative.Store(nil)
	e.tok.Store(t)
}
