// Package redisstore keeps the rotation State of each client in Redis, for
// broker replicas that share it (the broker's cache.shared): one replica
// rotates a client at a time, under a lease, and every replica reads the
// State to pick up the new active key.
//
// The client named c has three keys, where h is the hex SHA-256 of c (a hash
// tag, so that all its keys are in one slot of a Cluster, and no client name
// can reach another's keys):
//
//	<prefix>rotation:state:{h}  the State, as JSON with an HMAC-SHA256 under
//	                            Config.IntegrityKey that covers c and the
//	                            State; no ttl
//	<prefix>rotation:lease:{h}  the lease: a random fencing value, set with
//	                            NX and a ttl of the lease's ttl
//	<prefix>rotation:acks:{h}   the replicas' acks (rotation.Acker): a hash,
//	                            field = replica id, value = "<expires ms>
//	                            <at ms> <kid>" by Redis's own clock (TIME),
//	                            so replicas' clocks need not agree; Acks
//	                            deletes expired fields, and the hash expires
//	                            once no replica acks. Acks are not MACed:
//	                            whoever may write to Redis can hold the
//	                            retire step up (as by deleting the State),
//	                            but not point the broker at a key
//
// A State whose MAC does not verify is an error, never a zero State: whoever
// may write to Redis but does not hold the IntegrityKey cannot point the
// broker at another key. They can still delete the State or put back an
// older one of the same client (which names only keys the broker made);
// the IntegrityKey does not guard against that.
//
// The State holds no secret (kids, key URIs, times, outcomes); Save refuses
// a key URI that carries one (a PKCS#11 pin-value, a password, ...), since
// everyone who can read Redis would read it.
//
// Save is one Lua script that writes the State and renews the lease only
// while the lease key still holds this lease's fencing value, so a replica
// whose lease expired (and perhaps passed to another) can never overwrite
// the State. The Store does not log.
package redisstore

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// MinIntegrityKey is the shortest IntegrityKey New takes, in bytes.
const MinIntegrityKey = 32

// Config configures a Store.
type Config struct {
	// Client is the Redis client (sharedcache.Dial makes one: a single
	// server, Sentinel or Cluster); required. The Store does not close it.
	Client redis.UniversalClient
	// Prefix starts every Redis key name; "" means "tokenbroker:".
	Prefix string
	// IntegrityKey is the secret that MACs each State; at least
	// MinIntegrityKey bytes, the same on every replica, and never stored
	// in Redis. Changing it makes every stored State an error until it is
	// saved again.
	IntegrityKey []byte
	// Timeout bounds each Redis command; 0 means 1 s.
	Timeout time.Duration
	// Now is the clock of the leases' own deadlines; nil means time.Now.
	// A lease whose ttl has run out by this clock fails Save with
	// rotation.ErrLeaseLost without asking Redis.
	Now func() time.Time
}

// Store keeps rotation States in Redis. It is safe for concurrent use.
type Store struct {
	rdb     redis.UniversalClient
	prefix  string
	key     []byte
	timeout time.Duration
	now     func() time.Time
}

var _ rotation.Store = (*Store)(nil)

// New checks cfg and returns a Store. It does not contact Redis.
func New(cfg Config) (*Store, error) {
	if cfg.Client == nil {
		return nil, errors.New("redisstore: no Redis client")
	}
	if len(cfg.IntegrityKey) < MinIntegrityKey {
		return nil, fmt.Errorf("redisstore: integrity key: %d bytes; want at least %d", len(cfg.IntegrityKey), MinIntegrityKey)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("redisstore: timeout %v: want > 0", cfg.Timeout)
	}
	s := &Store{rdb: cfg.Client, prefix: cfg.Prefix, key: append([]byte(nil), cfg.IntegrityKey...),
		timeout: cfg.Timeout, now: cfg.Now}
	if s.prefix == "" {
		s.prefix = "tokenbroker:"
	}
	if s.timeout == 0 {
		s.timeout = time.Second
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Keys returns the Redis key names of client's State and lease.
func (s *Store) Keys(client string) (state, lease string) {
	sum := sha256.Sum256([]byte(client))
	tag := "{" + hex.EncodeToString(sum[:]) + "}"
	return s.prefix + "rotation:state:" + tag, s.prefix + "rotation:lease:" + tag
}

func checkClient(client string) error {
	if client == "" {
		return errors.New("redisstore: empty client name")
	}
	if !utf8.ValidString(client) {
		return fmt.Errorf("redisstore: client name %q is not valid UTF-8", client)
	}
	return nil
}

// record is a State as stored: the client it belongs to, the State's JSON
// and its MAC.
type record struct {
	Version int             `json:"v"`
	Client  string          `json:"client"`
	State   json.RawMessage `json:"state"`
	MAC     string          `json:"mac"`
}

const recordVersion = 1

// mac is the HMAC-SHA256 of the client name and the State's JSON, each
// length-prefixed, under a label of this use.
func (s *Store) mac(client string, state []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("tokenbroker rotation state v1\x00"))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(client)))
	m.Write(n[:])
	m.Write([]byte(client))
	binary.BigEndian.PutUint64(n[:], uint64(len(state)))
	m.Write(n[:])
	m.Write(state)
	return m.Sum(nil)
}

// Load implements rotation.Store: the zero State when the client has none;
// an error when Redis fails or the stored State does not verify (changed
// outside the broker, written under another IntegrityKey, or another
// client's).
func (s *Store) Load(ctx context.Context, client string) (rotation.State, error) {
	if err := checkClient(client); err != nil {
		return rotation.State{}, err
	}
	stateKey, _ := s.Keys(client)
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, stateKey).Bytes()
	if errors.Is(err, redis.Nil) {
		return rotation.State{}, nil
	}
	if err != nil {
		return rotation.State{}, fmt.Errorf("redisstore: client %q: load state: redis: %w", client, err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return rotation.State{}, fmt.Errorf("redisstore: client %q: load state: %s is not a stored State: %w", client, stateKey, err)
	}
	if rec.Version != recordVersion {
		return rotation.State{}, fmt.Errorf("redisstore: client %q: load state: %s has version %d; want %d", client, stateKey, rec.Version, recordVersion)
	}
	if rec.Client != client {
		return rotation.State{}, fmt.Errorf("redisstore: client %q: load state: %s holds the state of client %q", client, stateKey, rec.Client)
	}
	sum, err := base64.RawURLEncoding.DecodeString(rec.MAC)
	if err != nil || !hmac.Equal(sum, s.mac(client, rec.State)) {
		return rotation.State{}, fmt.Errorf("redisstore: client %q: load state: %s does not verify: changed outside the broker, or written under another integrity key", client, stateKey)
	}
	var st rotation.State
	if err := json.Unmarshal(rec.State, &st); err != nil {
		return rotation.State{}, fmt.Errorf("redisstore: client %q: load state: %w", client, err)
	}
	return st, nil
}

// Lease implements rotation.Store: SET <lease key> <random fencing value>
// NX PX ttl, or rotation.ErrLeaseHeld when the key is there. ttl must be
// at least a millisecond; each Save renews it.
func (s *Store) Lease(ctx context.Context, client string, ttl time.Duration) (rotation.Lease, error) {
	if err := checkClient(client); err != nil {
		return nil, err
	}
	if ttl < time.Millisecond {
		return nil, fmt.Errorf("redisstore: client %q: lease: ttl %v: want at least 1ms", client, ttl)
	}
	var f [16]byte
	rand.Read(f[:])
	fence := hex.EncodeToString(f[:])
	stateKey, leaseKey := s.Keys(client)
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := s.now()
	ok, err := s.rdb.SetNX(ctx, leaseKey, fence, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: client %q: lease: redis: %w", client, err)
	}
	if !ok {
		return nil, fmt.Errorf("redisstore: client %q: %w", client, rotation.ErrLeaseHeld)
	}
	return &lease{s: s, client: client, stateKey: stateKey, leaseKey: leaseKey, fence: fence, ttl: ttl,
		deadline: start.Add(ttl)}, nil
}

// lease is a held lease key.
type lease struct {
	s                  *Store
	client             string
	stateKey, leaseKey string
	fence              string
	ttl                time.Duration

	mu       sync.Mutex
	deadline time.Time // by s.now; past it the lease counts as lost
	released bool
}

// saveScript writes the State (KEYS[2] = ARGV[2]) and renews the lease
// (KEYS[1], ttl ARGV[3] ms) while the lease holds our fencing value
// ARGV[1]; it returns 1, else 0 and writes nothing.
var saveScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
	return 0
end
redis.call("SET", KEYS[2], ARGV[2])
redis.call("PEXPIRE", KEYS[1], ARGV[3])
return 1
`)

// releaseScript deletes the lease (KEYS[1]) while it holds our fencing
// value ARGV[1].
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// Save implements rotation.Lease. It fails with rotation.ErrLeaseLost after
// Release, once the lease's ttl has run out by Config.Now, and when the
// lease key no longer holds this lease's fencing value; then nothing is
// written. Any other error (Redis down) leaves it unknown whether the
// State was written, but a written State came from the lease's holder.
func (l *lease) Save(ctx context.Context, st rotation.State) error {
	if err := checkSecrets(st); err != nil {
		return fmt.Errorf("redisstore: client %q: save state: %w", l.client, err)
	}
	state, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("redisstore: client %q: save state: %w", l.client, err)
	}
	b, err := json.Marshal(record{Version: recordVersion, Client: l.client, State: state,
		MAC: base64.RawURLEncoding.EncodeToString(l.s.mac(l.client, state))})
	if err != nil {
		return fmt.Errorf("redisstore: client %q: save state: %w", l.client, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return fmt.Errorf("redisstore: client %q: save state: released: %w", l.client, rotation.ErrLeaseLost)
	}
	start := l.s.now()
	if !start.Before(l.deadline) {
		return fmt.Errorf("redisstore: client %q: save state: the lease's ttl ran out: %w", l.client, rotation.ErrLeaseLost)
	}
	ctx, cancel := context.WithTimeout(ctx, l.s.timeout)
	defer cancel()
	n, err := saveScript.Run(ctx, l.s.rdb, []string{l.leaseKey, l.stateKey}, l.fence, b, l.ttl.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redisstore: client %q: save state: redis: %w", l.client, err)
	}
	if n != 1 {
		return fmt.Errorf("redisstore: client %q: save state: the lease expired or passed to another: %w", l.client, rotation.ErrLeaseLost)
	}
	l.deadline = start.Add(l.ttl)
	return nil
}

// Release implements rotation.Lease: it deletes the lease key while it
// holds this lease's fencing value, and never another holder's. Releasing
// again, or releasing a lease that was lost, does nothing. Save fails
// after Release even when Release failed (Redis down); the lease key then
// expires by its ttl.
func (l *lease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	l.released = true
	ctx, cancel := context.WithTimeout(ctx, l.s.timeout)
	defer cancel()
	if err := releaseScript.Run(ctx, l.s.rdb, []string{l.leaseKey}, l.fence).Err(); err != nil {
		return fmt.Errorf("redisstore: client %q: release: redis: %w", l.client, err)
	}
	return nil
}

// secretParams are URI query parameters that carry a secret.
var secretParams = map[string]bool{
	"pin-value": true, "pin": true, "password": true, "passwd": true, "pwd": true, "secret": true,
	"client_secret": true, "access_token": true, "token": true, "sig": true, "api_key": true, "apikey": true,
}

// checkSecrets refuses a State with a key URI that carries a secret: a
// password in its user info or a query parameter of secretParams. The
// error names the key's kid and the parameter, never the value.
func checkSecrets(st rotation.State) error {
	for _, k := range st.Keys {
		if u, err := url.Parse(k.URI); err == nil && u.User != nil {
			if _, ok := u.User.Password(); ok {
				return fmt.Errorf("key %q: its URI carries a password; Redis must hold no secret", k.KID)
			}
		}
		_, query, ok := strings.Cut(k.URI, "?")
		if !ok {
			continue
		}
		query, _, _ = strings.Cut(query, "#")
		for _, p := range strings.FieldsFunc(query, func(r rune) bool { return r == '&' || r == ';' }) {
			name, _, _ := strings.Cut(p, "=")
			if n, err := url.QueryUnescape(name); err == nil {
				name = n
			}
			if secretParams[strings.ToLower(strings.TrimSpace(name))] {
				return fmt.Errorf("key %q: its URI carries %s; Redis must hold no secret (use a pin-source file or the backend's own credentials)", k.KID, name)
			}
		}
	}
	return nil
}
