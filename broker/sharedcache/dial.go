package sharedcache

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisConfig says how to reach Redis. One address is a single server;
// several are a Cluster; MasterName makes them Sentinels.
type RedisConfig struct {
	// Addrs are host:port addresses; at least one.
	Addrs []string
	// MasterName, when set, is the Sentinel master set and Addrs are the
	// Sentinels.
	MasterName string
	// Cluster makes one address a Cluster (a configuration endpoint, as
	// cloud Redis services give); several addresses are one anyway.
	Cluster bool
	// Username and Password authenticate (Redis 6 ACL user; Username ""
	// is the default user). SentinelPassword authenticates to Sentinels.
	Username, Password, SentinelPassword string
	// DB is the database number (not in a Cluster).
	DB int
	// TLS, when not nil, is used for every connection.
	TLS *tls.Config
	// Timeout bounds dialling, each read and each write; 0 means 250 ms.
	Timeout time.Duration
}

// Dial returns go-redis's universal client for cfg. It connects lazily.
// Commands fail within the timeout rather than retrying for long: a slow
// Redis must cost a caller milliseconds, then the replica falls back.
func Dial(cfg RedisConfig) (redis.UniversalClient, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("addrs: at least one Redis address is needed")
	}
	quietOnce.Do(func() { redis.SetLogger(quiet{}) })
	t := cfg.Timeout
	if t == 0 {
		t = 250 * time.Millisecond
	}
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 cfg.Addrs,
		MasterName:            cfg.MasterName,
		IsClusterMode:         cfg.Cluster,
		Username:              cfg.Username,
		Password:              cfg.Password,
		SentinelPassword:      cfg.SentinelPassword,
		DB:                    cfg.DB,
		TLSConfig:             cfg.TLS,
		DialTimeout:           t,
		ReadTimeout:           t,
		WriteTimeout:          t,
		PoolTimeout:           t,
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		DisableIdentity:       true,
	}), nil
}

// quiet drops go-redis's own log lines (a line per failed dial while Redis
// is down); Cache logs an outage once, and its return.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once
