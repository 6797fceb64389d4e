package sharedcache_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
)

// The shared level through Sentinel and through a Cluster, as Dial makes
// the client from RedisConfig: 3 replicas and 300 callers on a cold key
// make one grant, and a value and its lock live together in a Cluster
// (the unlock script touches one key; the names share a hash tag).
func TestSharedTopologies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  func(t *testing.T) sharedcache.RedisConfig
	}{
		{"sentinel", func(t *testing.T) sharedcache.RedisConfig {
			master := sharedcachetest.Start(t)
			sentinel := sharedcachetest.StartSentinel(t, master)
			return sharedcache.RedisConfig{Addrs: []string{sentinel.Addr()}, MasterName: "mymaster"}
		}},
		{"cluster", func(t *testing.T) sharedcache.RedisConfig {
			node := sharedcachetest.StartCluster(t)
			return sharedcache.RedisConfig{Addrs: []string{node.Addr()}, Cluster: true}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := tc.cfg(t)
			up := &upstream{lifetime: time.Minute}
			var reps []*broker.Broker
			var caches []*sharedcache.Cache
			for range 3 {
				client, err := sharedcache.Dial(rc)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { client.Close() })
				c, err := sharedcache.New(sharedcache.Config{Client: client, Keys: []sharedcache.Key{{ID: "k1", Secret: secret1}}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(c.Close)
				b, err := broker.New(broker.Config{Policy: policy.AllowAll(),
					Clients: []broker.Client{{Name: "demo", Scopes: []string{scope}, Source: up}}, Shared: c})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(b.Close)
				reps, caches = append(reps, b), append(caches, c)
			}
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range 300 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					start := time.Now()
					tok, err := reps[i%3].GetToken(context.Background(), req("310904473", 10*time.Second))
					if err == nil {
						err = checkToken(tok, "310904473", 10*time.Second, start)
					}
					if err != nil {
						t.Error(err)
					}
				}()
			}
			close(start)
			wg.Wait()
			var hits, fallbacks int64
			for _, c := range caches {
				h := c.Health()
				hits += h.Hits
				fallbacks += h.Fallbacks
			}
			if up.grants.Load() != 1 || hits != 2 || fallbacks != 0 {
				t.Fatalf("%d grants, %d shared hits, %d fallbacks; want 1 grant, the 2 other replicas served from Redis, no fallback",
					up.grants.Load(), hits, fallbacks)
			}
		})
	}
}
