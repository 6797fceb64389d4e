package sharedcache_test

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
)

// After a run with tokens and a refusal in Redis, every key and value is
// scanned: no JWT, no org number, no token, and nothing opens without the
// key. A value copied under another key does not open there either: that
// replica treats it as a miss, fetches, and overwrites it.
func TestSharedRedisHoldsNothingInClear(t *testing.T) {
	t.Parallel()
	rs := sharedcachetest.Start(t)
	keys := orgs(10)
	up := &upstream{lifetime: time.Minute, refused: map[string]bool{keys[9]: true}}
	a := newReplica(t, up, rs, func(c *broker.Config) { c.NegativeTTL = time.Minute })
	var tokens []string
	for _, org := range keys {
		tok, err := a.b.GetToken(context.Background(), req(org, time.Second))
		if org == keys[9] {
			if err == nil {
				t.Fatal("refused org got a token")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok.AccessToken)
	}
	raw := rs.Raw(t)
	ctx := context.Background()
	names, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != len(keys) {
		t.Fatalf("%d Redis keys after %d keys were fetched; want one each (locks released): %q", len(names), len(keys), names)
	}
	other, err := sharedcache.New(sharedcache.Config{Client: rs.Client(t), Keys: []sharedcache.Key{{ID: "k1", Secret: secret2}}})
	if err != nil {
		t.Fatal(err)
	}
	jwt := regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}`)
	for _, n := range names {
		v, err := raw.Get(ctx, n).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		ttl, _ := raw.PTTL(ctx, n).Result()
		if ttl <= 0 || ttl > time.Minute {
			t.Errorf("key %q: TTL %v; want the token's remaining life (or the refusal's TTL)", n, ttl)
		}
		for _, hay := range [][]byte{[]byte(n), v} {
			if jwt.Match(hay) {
				t.Errorf("Redis holds a JWT in clear (under %q)", n)
			}
			for _, org := range keys {
				if bytes.Contains(hay, []byte(org)) {
					t.Errorf("Redis holds org number %s in clear (under %q)", org, n)
				}
			}
			for _, tok := range tokens {
				if bytes.Contains(hay, []byte(tok)) || bytes.Contains(hay, []byte(tok[len(tok)-20:])) {
					t.Errorf("Redis holds a token in clear (under %q)", n)
				}
			}
			if bytes.Contains(hay, []byte("MP-303")) {
				t.Errorf("Redis holds the refusal in clear (under %q)", n)
			}
		}
		// Without the key, or as another cache key, nothing opens.
		for _, org := range keys {
			key := sharedKeyFor(org)
			if _, err := sharedcache.Open(other, key, v); err == nil {
				t.Errorf("value under %q opens with another secret", n)
			}
		}
	}

	// Copy org 0's value over org 1's: a fresh replica asking for org 1
	// finds a value that does not open, fetches, and overwrites it.
	d0, _ := sharedcache.Names(a.cache, sharedKeyFor(keys[0]))
	d1, _ := sharedcache.Names(a.cache, sharedKeyFor(keys[1]))
	v0, err := raw.Get(ctx, d0).Bytes()
	if err != nil {
		t.Fatalf("org 0's value is not under the name the test computes (%v): the test's key string is out of date", err)
	}
	if err := raw.Set(ctx, d1, v0, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := sharedcache.Open(a.cache, sharedKeyFor(keys[1]), v0); err == nil {
		t.Fatal("a value copied to another key opens there")
	}
	b := newReplica(t, up, rs, nil)
	before := up.grants.Load()
	start := time.Now()
	tok, err := b.b.GetToken(ctx, req(keys[1], time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkToken(tok, keys[1], time.Second, start); err != nil {
		t.Fatal(err)
	}
	if up.grants.Load() != before+1 || b.cache.Broken() == 0 {
		t.Fatalf("grants %d -> %d, broken values %d; want one fetch after one broken value", before, up.grants.Load(), b.cache.Broken())
	}
	v1, _ := raw.Get(ctx, d1).Bytes()
	if bytes.Equal(v1, v0) {
		t.Fatal("the broken value was not overwritten")
	}
}

// sharedKeyFor is the broker's shared cache key for org with the test's
// client (broker.cacheKey.sharedKey).
func sharedKeyFor(org string) string {
	f := func(s string) string { return "|" + itoa(len(s)) + ":" + s }
	return "tokenbroker/v1" + f("demo") + f("kid-1") + f(maskinporten.Test.Issuer) + f(scope) + f("") + f(org) + f("") + f("")
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
