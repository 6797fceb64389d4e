// Package sharedcache is the token cache level that broker replicas share,
// kept in Redis: values sealed with AES-256-GCM (the cache key as
// associated data, a key id in each value for rotation), Redis key names
// made of a keyed hash so that no org number is in clear, a lock with a
// fencing value so that one replica fetches each key while the others wait,
// and a fallback to the replica's own cache whenever Redis fails.
//
// Redis never holds a token, a grant or a key in clear.
package sharedcache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// Config configures a Cache.
type Config struct {
	// Client is the Redis client (Dial makes one); required.
	Client redis.UniversalClient
	// Keys are the secrets values are sealed with; at least one.
	Keys []Key
	// EncryptKey is the id of the key that seals new values; "" means
	// Keys[0]. The others only open values, so that the encryption key
	// can be rotated without dropping the cache.
	EncryptKey string
	// NameKey is the id of the key the Redis key names are derived from;
	// "" means EncryptKey. Keep it when rotating the encryption key: a
	// new name key empties the shared cache once.
	NameKey string
	// Prefix starts every Redis key name; "" means "tokenbroker:".
	Prefix string
	// Timeout bounds each Redis command; 0 means 250 ms. Past it Redis
	// counts as failing and the replica falls back to its own cache.
	Timeout time.Duration
	// LockTTL is how long a replica may hold a key's fetch lock; 0 means
	// 10 s. Keep it below the broker's fetch timeout, so that waiters take
	// over from a replica that died while fetching.
	LockTTL time.Duration
	// Poll is how often a replica waiting for another's fetch looks for
	// its result; 0 means 20 ms.
	Poll time.Duration
	// NegativeTTL is how long a permanent refusal (MP-303, ...) is shared;
	// 0 means 5 s, negative shares none.
	NegativeTTL time.Duration
	// RetryEvery is how often a failing Redis is probed; 0 means 1 s.
	RetryEvery time.Duration
	// Logger gets one line when Redis fails and one when it returns; nil
	// discards.
	Logger *slog.Logger
	// Now is the clock of token lifetimes; nil means time.Now.
	Now func() time.Time
}

// Cache is the shared level. It implements broker.SharedCache and is safe
// for concurrent use. Close stops its probe.
type Cache struct {
	rdb     redis.UniversalClient
	seal    *sealer
	prefix  string
	timeout time.Duration
	lockTTL time.Duration
	poll    time.Duration
	negTTL  time.Duration
	retry   time.Duration
	log     *slog.Logger
	now     func() time.Time

	up                                      atomic.Bool
	hits, fetches, waits, fallbacks, broken atomic.Int64
	outages, returns                        atomic.Int64
	probing                                 atomic.Bool
	stop                                    chan struct{}
	stopOnce                                sync.Once
}

var (
	_ broker.SharedCache  = (*Cache)(nil)
	_ broker.SharedPeeker = (*Cache)(nil)
)

// New checks cfg and returns a Cache. It does not contact Redis: a Redis
// that is down at start is a fallback, not a failure to start.
func New(cfg Config) (*Cache, error) {
	if cfg.Client == nil {
		return nil, errors.New("sharedcache: no Redis client")
	}
	s, err := newSealer(cfg.Keys, cfg.EncryptKey, cfg.NameKey)
	if err != nil {
		return nil, fmt.Errorf("sharedcache: %w", err)
	}
	c := &Cache{rdb: cfg.Client, seal: s, prefix: cfg.Prefix, timeout: cfg.Timeout, lockTTL: cfg.LockTTL,
		poll: cfg.Poll, negTTL: cfg.NegativeTTL, retry: cfg.RetryEvery, log: cfg.Logger, now: cfg.Now,
		stop: make(chan struct{})}
	if c.prefix == "" {
		c.prefix = "tokenbroker:"
	}
	def := func(d *time.Duration, v time.Duration, field string) error {
		if *d == 0 {
			*d = v
		}
		if *d < 0 {
			return fmt.Errorf("sharedcache: %s %v: want > 0", field, *d)
		}
		return nil
	}
	for _, x := range []struct {
		d     *time.Duration
		v     time.Duration
		field string
	}{{&c.timeout, 250 * time.Millisecond, "timeout"}, {&c.lockTTL, 10 * time.Second, "lock_ttl"},
		{&c.poll, 20 * time.Millisecond, "poll"}, {&c.retry, time.Second, "retry_every"}} {
		if err := def(x.d, x.v, x.field); err != nil {
			return nil, err
		}
	}
	if c.negTTL == 0 {
		c.negTTL = 5 * time.Second
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.up.Store(true)
	return c, nil
}

// Close stops the probe of a failing Redis. It does not close the client.
func (c *Cache) Close() { c.stopOnce.Do(func() { close(c.stop) }) }

// Client is the Redis client the cache was made with.
func (c *Cache) Client() redis.UniversalClient { return c.rdb }

// Health reports whether Redis is in use and the counts of what happened.
func (c *Cache) Health() broker.SharedHealth {
	return broker.SharedHealth{Up: c.up.Load(), Hits: c.hits.Load(), Fetches: c.fetches.Load(), Waits: c.waits.Load(),
		Fallbacks: c.fallbacks.Load(), Outages: c.outages.Load(), Returns: c.returns.Load()}
}

// Broken counts values that did not decrypt or parse (and were treated as
// misses).
func (c *Cache) Broken() int64 { return c.broken.Load() }

// record is what a value holds, sealed: a token or a refusal.
type record struct {
	Token   *tokenRecord   `json:"t,omitempty"`
	Refusal *refusalRecord `json:"r,omitempty"`
}

type tokenRecord struct {
	AccessToken  string    `json:"a"`
	TokenType    string    `json:"ty"`
	Scopes       []string  `json:"s"`
	IssuedAt     time.Time `json:"i"`
	ExpiresAt    time.Time `json:"e"`
	SystemUserID string    `json:"su,omitempty"`
	SystemID     string    `json:"sy,omitempty"`
	JWTID        string    `json:"j,omitempty"`
	Fingerprint  string    `json:"f,omitempty"`
}

type refusalRecord struct {
	StatusCode  int    `json:"st"`
	Code        string `json:"c"`
	MPCode      string `json:"m"`
	Description string `json:"d"`
}

func (c *Cache) names(key string) (data, lock string) {
	h := c.seal.name(key)
	// One hash tag for both, so that they share a slot in a Cluster.
	return c.prefix + "{" + h + "}:v", c.prefix + "{" + h + "}:l"
}

// errDown says Fetch should fall back: Redis failed.
type errDown struct{ err error }

func (e errDown) Error() string { return "shared cache: " + e.err.Error() }

// Fetch implements broker.SharedCache.
func (c *Cache) Fetch(ctx context.Context, key string, fresh func(*maskinporten.Token) bool,
	fetch func(context.Context) (*maskinporten.Token, error)) (*maskinporten.Token, error) {
	if !c.up.Load() {
		c.fallbacks.Add(1)
		return fetch(ctx)
	}
	tok, done, err := c.shared(ctx, key, fresh, fetch)
	if done {
		return tok, err
	}
	// Redis failed before fetch ran: fetch here, as without the level.
	var d errDown
	if errors.As(err, &d) {
		c.fail(d.err)
	}
	c.fallbacks.Add(1)
	return fetch(ctx)
}

// shared runs Fetch through Redis. done is false when Redis failed (err is
// an errDown) or the cache was closed before fetch ran.
func (c *Cache) shared(ctx context.Context, key string, fresh func(*maskinporten.Token) bool,
	fetch func(context.Context) (*maskinporten.Token, error)) (tok *maskinporten.Token, done bool, err error) {
	data, lock := c.names(key)
	waited := false
	for {
		rec, err := c.get(ctx, data, key)
		if err != nil {
			return nil, false, err
		}
		if t, ok, refusal := c.usable(rec, fresh); ok {
			c.hits.Add(1)
			return t, true, refusal
		}
		fence, err := c.lock(ctx, lock)
		if err != nil {
			return nil, false, err
		}
		if fence != "" {
			return c.fetchLocked(ctx, key, data, lock, fence, fresh, fetch)
		}
		if !waited {
			waited = true
			c.waits.Add(1)
		}
		t := time.NewTimer(c.poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, true, ctx.Err()
		case <-c.stop:
			t.Stop()
			return nil, false, nil
		}
	}
}

// Peek implements broker.SharedPeeker: the unexpired token stored for key,
// or nil (also when Redis fails, which switches to the fallback).
func (c *Cache) Peek(ctx context.Context, key string) *maskinporten.Token {
	if !c.up.Load() {
		return nil
	}
	data, _ := c.names(key)
	rec, err := c.get(ctx, data, key)
	var d errDown
	if errors.As(err, &d) {
		c.fail(d.err)
		return nil
	}
	if rec == nil || rec.Token == nil {
		return nil
	}
	t := rec.Token.token()
	if !t.ExpiresAt.After(c.now()) {
		return nil
	}
	c.hits.Add(1)
	return t
}

// usable returns what rec serves: a token fresh accepts, or a refusal.
func (c *Cache) usable(rec *record, fresh func(*maskinporten.Token) bool) (*maskinporten.Token, bool, error) {
	switch {
	case rec == nil:
	case rec.Token != nil:
		t := rec.Token.token()
		if t.ExpiresAt.After(c.now()) && fresh(t) {
			return t, true, nil
		}
	case rec.Refusal != nil:
		return nil, true, rec.Refusal.err()
	}
	return nil, false, nil
}

// fetchLocked runs fetch while holding the lock (fence is its value) and
// stores the result; a result stored between the first look and the lock
// is taken instead.
func (c *Cache) fetchLocked(ctx context.Context, key, data, lock, fence string, fresh func(*maskinporten.Token) bool,
	fetch func(context.Context) (*maskinporten.Token, error)) (*maskinporten.Token, bool, error) {
	defer c.unlock(lock, fence)
	rec, err := c.get(ctx, data, key)
	if err != nil {
		return nil, false, err
	}
	if t, ok, refusal := c.usable(rec, fresh); ok {
		c.hits.Add(1)
		return t, true, refusal
	}
	c.fetches.Add(1)
	tok, ferr := fetch(ctx)
	var me *maskinporten.Error
	switch {
	case ferr == nil:
		if ttl := tok.ExpiresAt.Sub(c.now()); ttl > 0 {
			c.put(data, key, &record{Token: newTokenRecord(tok)}, ttl)
		}
	case errors.As(ferr, &me) && !me.Retryable && c.negTTL > 0:
		c.put(data, key, &record{Refusal: &refusalRecord{StatusCode: me.StatusCode, Code: me.Code, MPCode: me.MPCode,
			Description: me.Description}}, c.negTTL)
	}
	return tok, true, ferr
}

func (c *Cache) get(ctx context.Context, data, key string) (*record, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	v, err := c.rdb.Get(ctx, data).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, errDown{err}
	}
	plain, err := c.seal.open(key, v)
	var rec record
	if err == nil {
		err = json.Unmarshal(plain, &rec)
	}
	if err != nil || (rec.Token == nil) == (rec.Refusal == nil) {
		// A broken value is a miss; the next fetch overwrites it.
		c.broken.Add(1)
		return nil, nil
	}
	return &rec, nil
}

func (c *Cache) put(data, key string, rec *record, ttl time.Duration) {
	plain, err := json.Marshal(rec)
	if err != nil {
		return
	}
	v, err := c.seal.seal(key, plain)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := c.rdb.Set(ctx, data, v, ttl).Err(); err != nil {
		c.fail(err)
	}
}

// lock takes the fetch lock of a key: SET NX PX with a random fencing
// value, returned; "" when another replica holds it.
func (c *Cache) lock(ctx context.Context, lock string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", errDown{err}
	}
	fence := hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ok, err := c.rdb.SetNX(ctx, lock, fence, c.lockTTL).Result()
	if err != nil {
		return "", errDown{err}
	}
	if !ok {
		return "", nil
	}
	return fence, nil
}

// unlockScript deletes the lock only if it still holds this replica's
// fencing value: a lock that expired and was taken by another replica
// stays with it.
var unlockScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

func (c *Cache) unlock(lock, fence string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := unlockScript.Run(ctx, c.rdb, []string{lock}, fence).Err(); err != nil && !errors.Is(err, redis.Nil) {
		c.fail(err)
	}
}

// fail switches to the fallback once, logs it, and starts the probe that
// switches back.
func (c *Cache) fail(err error) {
	if !c.up.CompareAndSwap(true, false) {
		return
	}
	c.outages.Add(1)
	c.log.Warn("shared cache (Redis) failing: each replica uses its own cache and single flight until it returns",
		slog.String("error", err.Error()))
	if c.probing.CompareAndSwap(false, true) {
		go c.probe()
	}
}

func (c *Cache) probe() {
	defer c.probing.Store(false)
	t := time.NewTicker(c.retry)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		err := c.rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			c.returns.Add(1)
			c.up.Store(true)
			c.log.Info("shared cache (Redis) back: tokens are shared again")
			return
		}
	}
}

func newTokenRecord(t *maskinporten.Token) *tokenRecord {
	return &tokenRecord{AccessToken: t.AccessToken, TokenType: t.TokenType, Scopes: t.Scopes, IssuedAt: t.IssuedAt,
		ExpiresAt: t.ExpiresAt, SystemUserID: t.SystemUserID, SystemID: t.SystemID, JWTID: t.JWTID, Fingerprint: t.Fingerprint}
}

func (r *tokenRecord) token() *maskinporten.Token {
	return &maskinporten.Token{AccessToken: r.AccessToken, TokenType: r.TokenType, Scopes: r.Scopes, IssuedAt: r.IssuedAt,
		ExpiresAt: r.ExpiresAt, SystemUserID: r.SystemUserID, SystemID: r.SystemID, JWTID: r.JWTID, Fingerprint: r.Fingerprint}
}

func (r *refusalRecord) err() error {
	return &maskinporten.Error{StatusCode: r.StatusCode, Code: r.Code, MPCode: r.MPCode, Description: r.Description}
}
