package daemon

// The cache.shared section: the token cache level that replicas share in
// Redis (broker/sharedcache). Kept apart from the rest of the assembly:
// check validates the section, sharedCacheFor builds the level from it.

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
)

// SharedCacheConfig is cache.shared. Without it every replica keeps its own
// cache and nothing is shared.
type SharedCacheConfig struct {
	// Redis says where Redis is and how to log in.
	Redis RedisConfig `yaml:"redis"`
	// Keys are the secrets tokens are encrypted with in Redis (AES-256-GCM,
	// derived per key); at least one.
	Keys []SharedKeyConfig `yaml:"keys"`
	// EncryptKey is the id of the key new values are sealed with; default
	// the first. The others only decrypt. To rotate: add the new key and
	// roll out; then make it encrypt_key (with name_key set to the old
	// one) and roll out again.
	EncryptKey string `yaml:"encrypt_key"`
	// NameKey is the id of the key Redis key names are derived from
	// (HMAC-SHA256); default encrypt_key. Keep it while rotating
	// encrypt_key, or the shared cache starts empty once.
	NameKey string `yaml:"name_key"`
	// Prefix of every Redis key; default "tokenbroker:". Brokers with
	// different prefixes share nothing.
	Prefix string `yaml:"prefix"`
	// Timeout bounds each Redis command; default 250ms. Past it a replica
	// falls back to its own cache until Redis answers again.
	Timeout Duration `yaml:"timeout"`
	// LockTTL is how long a replica may hold a key's fetch lock before
	// another takes over; default 10s, less than maskinporten.timeout.
	LockTTL Duration `yaml:"lock_ttl"`
}

// RedisConfig is cache.shared.redis.
type RedisConfig struct {
	// Addrs: one host:port is a single Redis; several are a Cluster; with
	// master_name they are Sentinels.
	Addrs      []string `yaml:"addrs"`
	MasterName string   `yaml:"master_name"`
	// Cluster makes one address a Cluster (a configuration endpoint).
	Cluster bool `yaml:"cluster"`
	// Username is the ACL user (Redis 6+); empty is the default user.
	Username string `yaml:"username"`
	// PasswordFile holds the password (a trailing newline is dropped);
	// SentinelPasswordFile the Sentinels' password, if they have one.
	PasswordFile         string `yaml:"password_file"`
	SentinelPasswordFile string `yaml:"sentinel_password_file"`
	// DB is the database number (single Redis or Sentinel only).
	DB int `yaml:"db"`
	// TLS, when set, is used for every connection to Redis.
	TLS *RedisTLSConfig `yaml:"tls"`
}

// RedisTLSConfig is cache.shared.redis.tls. Paths are relative to the
// config file.
type RedisTLSConfig struct {
	// CA verifies Redis's certificate; default the system's roots.
	CA string `yaml:"ca"`
	// Cert and Key are a client certificate, when Redis asks for one.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ServerName overrides the name checked in Redis's certificate.
	ServerName string `yaml:"server_name"`
}

// SharedKeyConfig is one of cache.shared.keys: an id and a secret of at
// least 32 bytes, from a file or an environment variable.
type SharedKeyConfig struct {
	ID   string `yaml:"id"`
	File string `yaml:"file"`
	Env  string `yaml:"env"`
}

// check validates what can be checked without reading files.
func (c *SharedCacheConfig) check(fetchTimeout time.Duration) error {
	const where = "cache.shared"
	if len(c.Redis.Addrs) == 0 {
		return fmt.Errorf("%s.redis.addrs: at least one host:port is required", where)
	}
	for i, a := range c.Redis.Addrs {
		if !strings.Contains(a, ":") {
			return fmt.Errorf("%s.redis.addrs[%d]: %q is not host:port", where, i, a)
		}
	}
	if c.Redis.Cluster && c.Redis.MasterName != "" {
		return fmt.Errorf("%s.redis.cluster: not with master_name (Sentinel)", where)
	}
	if c.Redis.DB != 0 && ((len(c.Redis.Addrs) > 1 || c.Redis.Cluster) && c.Redis.MasterName == "") {
		return fmt.Errorf("%s.redis.db: a Cluster has only database 0", where)
	}
	if t := c.Redis.TLS; t != nil && (t.Cert == "") != (t.Key == "") {
		return fmt.Errorf("%s.redis.tls: cert and key go together", where)
	}
	if len(c.Keys) == 0 {
		return fmt.Errorf("%s.keys: at least one key is required (tokens are never stored in clear)", where)
	}
	for i, k := range c.Keys {
		if k.ID == "" {
			return fmt.Errorf("%s.keys[%d].id: required", where, i)
		}
		if (k.File == "") == (k.Env == "") {
			return fmt.Errorf("%s.keys[%d] (%s): set one of file and env", where, i, k.ID)
		}
	}
	if fetchTimeout == 0 {
		fetchTimeout = 30 * time.Second
	}
	lock := time.Duration(c.LockTTL)
	if lock == 0 {
		lock = 10 * time.Second
	}
	if lock >= fetchTimeout {
		return fmt.Errorf("%s.lock_ttl: %v, want less than maskinporten.timeout (%v), so that waiters take over from a replica that died while fetching",
			where, lock, fetchTimeout)
	}
	if t := time.Duration(c.Timeout); t > 5*time.Second {
		return fmt.Errorf("%s.timeout: %v, want at most 5s (a slow Redis must not hold callers)", where, t)
	}
	return nil
}

// sharedCacheFor builds the shared cache level of cfg and the function
// that closes it (its probe and its Redis connections), or returns nil and
// a no-op without a cache.shared section. It reads the secrets but does
// not contact Redis: a Redis down at start is a fallback, not a failure.
func sharedCacheFor(cfg *Config, baseDir string, lookup func(string) (string, bool), log *slog.Logger) (broker.SharedCache, func(), error) {
	c := cfg.Cache.Shared
	if c == nil {
		return nil, func() {}, nil
	}
	sc, err := newSharedCache(cfg, c, baseDir, lookup, log)
	if err != nil {
		return nil, nil, err
	}
	return sc, func() {
		sc.Close()
		_ = sc.Client().Close()
	}, nil
}

func newSharedCache(cfg *Config, c *SharedCacheConfig, baseDir string, lookup func(string) (string, bool), log *slog.Logger) (*sharedcache.Cache, error) {
	if err := c.check(time.Duration(cfg.Maskinporten.Timeout)); err != nil {
		return nil, err
	}
	rc, err := redisConfig(c, baseDir)
	if err != nil {
		return nil, err
	}
	keys, err := sharedSecrets(c, baseDir, lookup)
	if err != nil {
		return nil, err
	}
	client, err := sharedcache.Dial(rc)
	if err != nil {
		return nil, fmt.Errorf("cache.shared.redis: %w", err)
	}
	sc, err := sharedcache.New(sharedcache.Config{Client: client, Keys: keys, EncryptKey: c.EncryptKey, NameKey: c.NameKey,
		Prefix: c.Prefix, Timeout: time.Duration(c.Timeout), LockTTL: time.Duration(c.LockTTL),
		NegativeTTL: time.Duration(cfg.Cache.NegativeTTL), Logger: log})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("cache.shared: %w", err)
	}
	log.Info("shared cache", slog.Any("redis", c.Redis.Addrs), slog.String("master_name", c.Redis.MasterName),
		slog.Bool("tls", c.Redis.TLS != nil), slog.String("encrypt_key", firstSet(c.EncryptKey, keys[0].ID)))
	return sc, nil
}

func firstSet(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// readSecret reads a secret file (a trailing newline dropped); "" for no
// file. Errors name field and never hold the content.
func readSecret(baseDir, file, field string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(resolvePath(baseDir, file))
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// sharedSecrets reads the secrets of cache.shared.keys.
func sharedSecrets(c *SharedCacheConfig, baseDir string, lookup func(string) (string, bool)) ([]sharedcache.Key, error) {
	var keys []sharedcache.Key
	for i, k := range c.Keys {
		var secret string
		if k.File != "" {
			var err error
			secret, err = readSecret(baseDir, k.File, fmt.Sprintf("cache.shared.keys[%d].file", i))
			if err != nil {
				return nil, err
			}
		} else {
			v, ok := lookup(k.Env)
			if !ok || v == "" {
				return nil, fmt.Errorf("cache.shared.keys[%d].env: %s is not set", i, k.Env)
			}
			secret = strings.TrimSpace(v)
		}
		if len(secret) < sharedcache.MinSecretLen {
			return nil, fmt.Errorf("cache.shared.keys[%d] (%s): secret of %d bytes, want at least %d (for example: head -c 32 /dev/urandom | base64)",
				i, k.ID, len(secret), sharedcache.MinSecretLen)
		}
		keys = append(keys, sharedcache.Key{ID: k.ID, Secret: []byte(secret)})
	}
	return keys, nil
}

// rotationStateKey is the key that MACs the rotation state kept in Redis:
// derived from the shared cache's name key, which is kept when the
// encryption key rotates, so it changes only when the name key does.
func rotationStateKey(c *SharedCacheConfig, baseDir string, lookup func(string) (string, bool)) ([]byte, error) {
	keys, err := sharedSecrets(c, baseDir, lookup)
	if err != nil {
		return nil, err
	}
	id := firstSet(c.NameKey, firstSet(c.EncryptKey, keys[0].ID))
	for _, k := range keys {
		if k.ID == id {
			mac := hmac.New(sha256.New, k.Secret)
			mac.Write([]byte("tokenbroker rotation state v1"))
			return mac.Sum(nil), nil
		}
	}
	return nil, fmt.Errorf("cache.shared.name_key: no key %q", id)
}

// redisConfig is how to reach cache.shared's Redis.
func redisConfig(c *SharedCacheConfig, baseDir string) (sharedcache.RedisConfig, error) {
	rc := sharedcache.RedisConfig{Addrs: c.Redis.Addrs, MasterName: c.Redis.MasterName, Cluster: c.Redis.Cluster, Username: c.Redis.Username,
		DB: c.Redis.DB, Timeout: time.Duration(c.Timeout)}
	var err error
	if rc.Password, err = readSecret(baseDir, c.Redis.PasswordFile, "cache.shared.redis.password_file"); err != nil {
		return rc, err
	}
	if rc.SentinelPassword, err = readSecret(baseDir, c.Redis.SentinelPasswordFile, "cache.shared.redis.sentinel_password_file"); err != nil {
		return rc, err
	}
	if t := c.Redis.TLS; t != nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
		if t.CA != "" {
			pem, err := os.ReadFile(resolvePath(baseDir, t.CA))
			if err != nil {
				return rc, fmt.Errorf("cache.shared.redis.tls.ca: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return rc, errors.New("cache.shared.redis.tls.ca: no PEM certificate in it")
			}
		}
		if t.Cert != "" {
			cert, err := tls.LoadX509KeyPair(resolvePath(baseDir, t.Cert), resolvePath(baseDir, t.Key))
			if err != nil {
				return rc, fmt.Errorf("cache.shared.redis.tls.cert/key: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		rc.TLS = tc
	}
	return rc, nil
}
