package redisstore_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/rotation/redisstore"
	"github.com/tokenbroker/tokenbroker/broker/rotation/rotationtest"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
)

var integrityKey = []byte("0123456789abcdef0123456789abcdef-integrity")

// conformance runs the suite against Redis reached through cfg, each
// subtest under its own prefix; every Store has its own client, as
// replicas do.
func conformance(t *testing.T, cfg sharedcache.RedisConfig) {
	var n atomic.Int64
	dial := func(t *testing.T, prefix string) *redisstore.Store {
		t.Helper()
		c, err := sharedcache.Dial(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := redisstore.New(redisstore.Config{Client: c, Prefix: prefix, IntegrityKey: integrityKey})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	prefixes := map[*redisstore.Store]string{}
	var mu sync.Mutex
	rotationtest.StoreConformance(t, rotationtest.Harness{
		New: func(t *testing.T) rotation.Store {
			p := fmt.Sprintf("t%d:", n.Add(1))
			s := dial(t, p)
			mu.Lock()
			prefixes[s] = p
			mu.Unlock()
			return s
		},
		Share: func(t *testing.T, s rotation.Store) rotation.Store {
			mu.Lock()
			p := prefixes[s.(*redisstore.Store)]
			mu.Unlock()
			return dial(t, p)
		},
		Lose: func(t *testing.T, s rotation.Store, client string) {
			_, lease := s.(*redisstore.Store).Keys(client)
			c, err := sharedcache.Dial(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if n, err := c.Del(context.Background(), lease).Result(); err != nil || n != 1 {
				t.Fatalf("DEL %s: %d, %v; want 1 key deleted", lease, n, err)
			}
		},
		Expires: true,
	})
}

func TestConformance(t *testing.T) {
	t.Parallel()
	r := sharedcachetest.Start(t)
	conformance(t, sharedcache.RedisConfig{Addrs: []string{r.Addr()}})
}

// Through a Cluster, the Lua scripts touch the two keys of one client in
// one slot (a CROSSSLOT error otherwise).
func TestConformanceCluster(t *testing.T) {
	t.Parallel()
	r := sharedcachetest.StartCluster(t)
	conformance(t, sharedcache.RedisConfig{Addrs: []string{r.Addr()}, Cluster: true})
}

func TestConformanceSentinel(t *testing.T) {
	t.Parallel()
	master := sharedcachetest.Start(t)
	sentinel := sharedcachetest.StartSentinel(t, master)
	conformance(t, sharedcache.RedisConfig{Addrs: []string{sentinel.Addr()}, MasterName: "mymaster"})
}

func newStore(t *testing.T, c redis.UniversalClient, now func() time.Time) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(redisstore.Config{Client: c, IntegrityKey: integrityKey, Timeout: 500 * time.Millisecond, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, tc := range []struct {
		name string
		cfg  redisstore.Config
		want string
	}{
		{"no_client", redisstore.Config{IntegrityKey: integrityKey}, "no Redis client"},
		{"no_key", redisstore.Config{Client: c}, "integrity key: 0 bytes"},
		{"short_key", redisstore.Config{Client: c, IntegrityKey: integrityKey[:31]}, "integrity key: 31 bytes"},
		{"negative_timeout", redisstore.Config{Client: c, IntegrityKey: integrityKey, Timeout: -1}, "timeout"},
	} {
		if _, err := redisstore.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v; want an error saying %q", tc.name, err, tc.want)
		}
	}
}

// The key names are the package doc's, one hash tag for both, and Redis
// holds nothing else: no client name in a key, no secret in a value.
func TestKeysAndValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	raw := r.Raw(t)
	s := newStore(t, r.Client(t), nil)
	state, lease := s.Keys("demo")
	const tag = "{2a97516c354b68848cdbd8f54a226a0a55b21ed138e207ad6c5cbb9c00aa5aea}" // sha256("demo")
	if state != "tokenbroker:rotation:state:"+tag || lease != "tokenbroker:rotation:lease:"+tag {
		t.Fatalf("Keys(demo) = %q, %q", state, lease)
	}
	l, err := s.Lease(ctx, "demo", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := rotationtest.FullState()
	if err := l.Save(ctx, want); err != nil {
		t.Fatal(err)
	}
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || !(keys[0] == state && keys[1] == lease || keys[0] == lease && keys[1] == state) {
		t.Fatalf("Redis holds %q; want only %q and %q", keys, state, lease)
	}
	if ttl := raw.PTTL(ctx, state).Val(); ttl != -1 {
		t.Fatalf("state key ttl %v; want none", ttl)
	}
	v, err := raw.Get(ctx, state).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range [][]byte{integrityKey, []byte(hex.EncodeToString(integrityKey)),
		[]byte(base64.StdEncoding.EncodeToString(integrityKey)), []byte(base64.RawURLEncoding.EncodeToString(integrityKey))} {
		if bytes.Contains(v, secret) {
			t.Fatalf("the stored State holds the integrity key: %s", v)
		}
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(v, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec) != 4 || rec["v"] == nil || rec["client"] == nil || rec["state"] == nil || rec["mac"] == nil {
		t.Fatalf("stored record has fields %v; want v, client, state, mac", v)
	}
	var st rotation.State
	if err := json.Unmarshal(rec["state"], &st); err != nil || !rotationtest.Equal(st, want) {
		t.Fatalf("stored state %s (%v); want the State saved", rec["state"], err)
	}
}

// A key URI that carries a secret is refused, without the secret in the
// error, and nothing is written.
func TestSaveRefusesSecrets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	s := newStore(t, r.Client(t), nil)
	l, err := s.Lease(ctx, "demo", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	for _, uri := range []string{
		"pkcs11:token=tb;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=S3CR3T",
		"pkcs11:token=tb;object=k?PIN-VALUE=S3CR3T",
		"pkcs11:token=tb;object=k?module-path=/x;pin%2Dvalue=S3CR3T",
		"grpc://user:S3CR3T@signer.internal:443/key",
		"azurekv://vault/keys/k?sig=S3CR3T",
		"awskms:///alias/k?password=S3CR3T",
	} {
		st := rotation.State{Active: "kid-1", Keys: []rotation.ManagedKey{{KID: "kid-1", URI: uri}}}
		err := l.Save(ctx, st)
		if err == nil || strings.Contains(err.Error(), "S3CR3T") || !strings.Contains(err.Error(), `client "demo"`) {
			t.Errorf("Save with key URI %q: %v; want an error naming the client, without the secret", uri, err)
		}
	}
	rotationtest.MustLoad(t, s, "demo", rotation.State{})
	// URIs without a secret pass, including pin-source and a token label.
	ok := rotation.State{Keys: []rotation.ManagedKey{
		{KID: "a", URI: "pkcs11:token=tb;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"},
		{KID: "b", URI: "file:keys/secret-name.pem"},
		{KID: "c", URI: "grpc://user@signer.internal:443/key"},
	}}
	if err := l.Save(ctx, ok); err != nil {
		t.Fatal(err)
	}
	rotationtest.MustLoad(t, s, "demo", ok)
}

// A stored State that does not verify is an error naming the client,
// never the zero State and never another client's State.
func TestTamperedStateRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	raw := r.Raw(t)
	s := newStore(t, r.Client(t), nil)
	for _, client := range []string{"demo", "dem0"} {
		l, err := s.Lease(ctx, client, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Save(ctx, rotation.State{Active: "kid-" + client, Keys: []rotation.ManagedKey{{KID: "kid-" + client, URI: "file:" + client + ".pem"}}}); err != nil {
			t.Fatal(err)
		}
		l.Release(ctx)
	}
	demoKey, _ := s.Keys("demo")
	otherKey, _ := s.Keys("dem0")
	good := raw.Get(ctx, demoKey).Val()
	other := raw.Get(ctx, otherKey).Val()
	otherKeyStore, err := redisstore.New(redisstore.Config{Client: r.Client(t), IntegrityKey: bytes.Repeat([]byte("x"), 32)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, value, want string
		store             *redisstore.Store
	}{
		{"active_changed", strings.Replace(good, `"active":"kid-demo"`, `"active":"kid-attacker"`, 1), "does not verify", s},
		{"uri_changed", strings.Replace(good, `file:demo.pem`, `file:/tmp/attacker.pem`, 1), "does not verify", s},
		{"mac_dropped", regexpReplace(good, `"mac":"[^"]*"`, `"mac":""`), "does not verify", s},
		{"mac_garbage", regexpReplace(good, `"mac":"[^"]*"`, `"mac":"!!"`), "does not verify", s},
		{"other_client_copied", other, `holds the state of client "dem0"`, s},
		{"other_client_renamed", strings.Replace(other, `"client":"dem0"`, `"client":"demo"`, 1), "does not verify", s},
		{"bare_state", `{"active":"kid-attacker"}`, "version 0", s},
		{"not_json", "garbage", "not a stored State", s},
		{"empty", "", "not a stored State", s},
		{"other_integrity_key", good, "does not verify", otherKeyStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.value == good && tc.store == s {
				t.Fatal("the case changes nothing")
			}
			if err := raw.Set(ctx, demoKey, tc.value, 0).Err(); err != nil {
				t.Fatal(err)
			}
			st, err := tc.store.Load(ctx, "demo")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `client "demo"`) {
				t.Fatalf("Load of a tampered state: %+v, %v; want an error naming the client and saying %q", st, err, tc.want)
			}
		})
	}
	// And the untouched value loads.
	if err := raw.Set(ctx, demoKey, good, 0).Err(); err != nil {
		t.Fatal(err)
	}
	rotationtest.MustLoad(t, s, "demo", rotation.State{Active: "kid-demo", Keys: []rotation.ManagedKey{{KID: "kid-demo", URI: "file:demo.pem"}}})
}

func regexpReplace(s, expr, repl string) string {
	out := regexp.MustCompile(expr).ReplaceAllString(s, repl)
	if out == s {
		panic("no match for " + expr)
	}
	return out
}

// The lease key expires in Redis while its holder's clock says it has
// not (a frozen clock): the holder's Save is refused by the script, not by
// its own clock, before and after another replica takes the lease over.
func TestExpiredLeaseRefusedByRedis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	raw := r.Raw(t)
	frozen := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	old := newStore(t, r.Client(t), func() time.Time { return frozen })
	other := newStore(t, r.Client(t), nil)
	l, err := old.Lease(ctx, "demo", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
		t.Fatal(err)
	}
	_, leaseKey := old.Keys("demo")
	deadline := time.Now().Add(20 * time.Second)
	for raw.Exists(ctx, leaseKey).Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("lease key still there 20s after its 100ms ttl")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := l.Save(ctx, rotation.State{Active: "kid-stale"}); !errors.Is(err, rotation.ErrLeaseLost) {
		t.Fatalf("Save after the lease key expired: %v; want ErrLeaseLost", err)
	}
	if raw.Exists(ctx, leaseKey).Val() != 0 {
		t.Fatal("the refused Save made the lease key again")
	}
	next, err := other.Lease(ctx, "demo", time.Minute)
	if err != nil {
		t.Fatalf("Lease after expiry: %v", err)
	}
	if err := l.Save(ctx, rotation.State{Active: "kid-stale"}); !errors.Is(err, rotation.ErrLeaseLost) {
		t.Fatalf("Save after another took the lease over: %v; want ErrLeaseLost", err)
	}
	rotationtest.MustLoad(t, other, "demo", rotation.State{Active: "kid-1"})
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := next.Save(ctx, rotation.State{Active: "kid-2"}); err != nil {
		t.Fatalf("Save by the new holder after the old one's Release: %v", err)
	}
	rotationtest.MustLoad(t, old, "demo", rotation.State{Active: "kid-2"})
}

// The holder's own clock: once the lease's ttl has run out by Config.Now,
// Save fails with ErrLeaseLost even while Redis still has the lease key,
// and writes nothing; each Save moves the deadline on by the ttl.
func TestLeaseDeadlineByClock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	var mu sync.Mutex
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := newStore(t, r.Client(t), clock)
	l, err := s.Lease(ctx, "demo", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	advance(59 * time.Minute)
	if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
		t.Fatalf("Save within the ttl: %v", err)
	}
	advance(59 * time.Minute) // 118 min after Lease, 59 after the Save
	if err := l.Save(ctx, rotation.State{Active: "kid-2"}); err != nil {
		t.Fatalf("Save within the ttl renewed by the last Save: %v", err)
	}
	advance(time.Hour)
	if err := l.Save(ctx, rotation.State{Active: "kid-3"}); !errors.Is(err, rotation.ErrLeaseLost) {
		t.Fatalf("Save past the ttl by the clock: %v; want ErrLeaseLost", err)
	}
	rotationtest.MustLoad(t, s, "demo", rotation.State{Active: "kid-2"})
}

// Each Save renews the lease key's ttl in Redis.
func TestSaveRenewsLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	raw := r.Raw(t)
	s := newStore(t, r.Client(t), nil)
	l, err := s.Lease(ctx, "demo", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	_, leaseKey := s.Keys("demo")
	if err := raw.PExpire(ctx, leaseKey, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
		t.Fatal(err)
	}
	if ttl := raw.PTTL(ctx, leaseKey).Val(); ttl <= 30*time.Minute {
		t.Fatalf("lease ttl after Save %v; want it renewed to about an hour", ttl)
	}
}

// Redis down (killed) or hung (stopped): every call fails with an error
// that names the client and what failed, never a zero State, never
// ErrLeaseHeld or ErrLeaseLost, never a panic; once Redis is back the
// Store works again.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"killed", "hung"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			r := sharedcachetest.Start(t)
			s := newStore(t, r.Client(t), nil)
			l, err := s.Lease(ctx, "demo", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
				t.Fatal(err)
			}
			if how == "killed" {
				r.Stop()
			} else {
				r.Pause()
			}
			check := func(what string, err error) {
				t.Helper()
				client := "demo"
				if what == "lease" {
					client = "other"
				}
				if err == nil || errors.Is(err, rotation.ErrLeaseHeld) || errors.Is(err, rotation.ErrLeaseLost) ||
					!strings.Contains(err.Error(), `client "`+client+`": `+what+": redis: ") {
					t.Fatalf("%s with Redis %s: %v; want an error naming the client, %q and Redis", what, how, err, what)
				}
			}
			st, err := s.Load(ctx, "demo")
			check("load state", err)
			if !rotationtest.Equal(st, rotation.State{}) {
				t.Fatalf("Load with Redis %s returned %+v with its error", how, st)
			}
			_, err = s.Lease(ctx, "other", time.Minute)
			check("lease", err)
			check("save state", l.Save(ctx, rotation.State{Active: "kid-2"}))
			check("release", l.Release(ctx))
			if how == "killed" {
				r.Start() // empty: the test server keeps nothing on disk
			} else {
				r.Resume()
			}
			// A hung Redis may still run the commands it held once it
			// resumes (the lease of "other" taken for nobody): go on with
			// a client nothing touched.
			l2, err := s.Lease(ctx, "after", time.Minute)
			if err != nil {
				t.Fatalf("Lease once Redis is back: %v", err)
			}
			if err := l2.Save(ctx, rotation.State{Active: "kid-3"}); err != nil {
				t.Fatalf("Save once Redis is back: %v", err)
			}
			rotationtest.MustLoad(t, s, "after", rotation.State{Active: "kid-3"})
		})
	}
}

// Acks live in one hash per client under the client's hash tag (one slot
// of a Cluster), field = replica id, value = "<expires ms> <at ms> <kid>";
// an expired field is deleted when the acks are read, and the hash itself
// expires once nobody acks.
func TestAckKeyAndValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := sharedcachetest.Start(t)
	raw := r.Raw(t)
	s := newStore(t, r.Client(t), nil)
	const tag = "{2a97516c354b68848cdbd8f54a226a0a55b21ed138e207ad6c5cbb9c00aa5aea}" // sha256("demo")
	key := s.AckKey("demo")
	if key != "tokenbroker:rotation:acks:"+tag {
		t.Fatalf("AckKey(demo) = %q", key)
	}
	if err := s.Ack(ctx, "demo", "pod-a", "kid-new", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, "demo", "pod-b", "kid-old", 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 1 || keys[0] != key {
		t.Fatalf("Redis holds %q (%v); want only %q", keys, err, key)
	}
	if ttl := raw.PTTL(ctx, key).Val(); ttl <= 30*time.Millisecond || ttl > time.Minute {
		t.Fatalf("ack hash ttl %v; want the longest ack's (1m)", ttl)
	}
	v, err := raw.HGet(ctx, key, "pod-a").Result()
	if err != nil || !regexp.MustCompile(`^[0-9]{13} [0-9]{13} kid-new$`).MatchString(v) {
		t.Fatalf("field pod-a = %q (%v); want \"<expires ms> <at ms> kid-new\"", v, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for raw.HExists(ctx, key, "pod-b").Val() {
		if _, err := s.Acks(ctx, "demo"); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the expired ack of pod-b is still in Redis")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := raw.HLen(ctx, key).Val(); n != 1 {
		t.Fatalf("ack hash has %d fields; want pod-a's only", n)
	}
}
