package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/server"
)

// Config is the broker's YAML configuration file. Keys may be added, never
// renamed; unknown keys are refused.
type Config struct {
	// Listen is the gRPC listen address, host:port.
	Listen string `yaml:"listen"`
	// Insecure serves plaintext gRPC without caller authentication. It is
	// refused unless Listen is a loopback address.
	Insecure bool `yaml:"insecure"`
	// InsecureIdentity names the identity every caller has in insecure
	// mode, for the policy: NAME or local:NAME, which is local:NAME;
	// default local:insecure.
	InsecureIdentity string `yaml:"insecure_identity"`
	// TLS is the server certificate and the CA of caller certificates
	// (mTLS); required unless Insecure.
	TLS TLSConfig `yaml:"tls"`
	// Unix is an optional unix socket listener for sidecar use.
	Unix UnixConfig `yaml:"unix"`
	// Policy says which caller may ask for what; default deny.
	Policy []RuleConfig `yaml:"policy"`
	// Audit is where the audit log goes.
	Audit AuditConfig `yaml:"audit"`
	// Limits bound what one caller can ask.
	Limits LimitsConfig `yaml:"limits"`
	// HTTPListen, when set, serves /metrics (Prometheus), /healthz (JSON:
	// clock skew per client, cache counts) and /readyz over HTTP on this
	// host:port.
	HTTPListen string `yaml:"http_listen"`
	// Tracing turns on OpenTelemetry traces, exported as the standard
	// OTEL_* environment variables say (OTEL_TRACES_EXPORTER,
	// OTEL_EXPORTER_OTLP_ENDPOINT, ...). Also on when
	// OTEL_TRACES_EXPORTER is set to anything but "none".
	Tracing bool `yaml:"tracing"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `yaml:"log_level"`
	// Maskinporten selects the environment and its endpoints.
	Maskinporten MaskinportenConfig `yaml:"maskinporten"`
	// Cache tunes the token cache.
	Cache CacheConfig `yaml:"cache"`
	// Altinn configures Altinn's exchange endpoint (for ALTINN tokens).
	Altinn AltinnConfig `yaml:"altinn"`
	// Clients are the Maskinporten clients the broker holds keys for.
	Clients []ClientConfig `yaml:"clients"`
	// ConfigWatchInterval, when set, is how often the broker reads its
	// config file and reloads it, as SIGHUP does, when the content changed:
	// for Kubernetes config maps, whose updates arrive as a new file and
	// cannot send a signal. Off when zero.
	ConfigWatchInterval Duration `yaml:"config_watch_interval"`
	// SelfService is the organisation's self-service client at Digdir,
	// needed by clients with a rotation section.
	SelfService *SelfServiceConfig `yaml:"self_service"`
}

// TLSConfig is the tls section. Paths are relative to the config file.
type TLSConfig struct {
	// Source is where the TLS material comes from: files (default: Cert,
	// Key and ClientCA, re-read when they change) or spiffe (the SPIFFE
	// Workload API: the broker's X.509-SVID and the trust bundles).
	Source   string `yaml:"source"`
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
	// ReloadInterval is how often the files are looked at for a change;
	// default 10s.
	ReloadInterval Duration `yaml:"reload_interval"`
	// SPIFFE configures source spiffe.
	SPIFFE SPIFFETLSConfig `yaml:"spiffe"`
}

// SPIFFETLSConfig is the tls.spiffe section.
type SPIFFETLSConfig struct {
	// Socket is the Workload API address (unix:///PATH, an absolute path,
	// or tcp://IP:PORT); default $SPIFFE_ENDPOINT_SOCKET.
	Socket string `yaml:"socket"`
}

// UnixConfig is the unix section.
type UnixConfig struct {
	// Path of the socket; empty means no unix listener.
	Path string `yaml:"path"`
	// Mode of the socket file, octal; default 0660.
	Mode string `yaml:"mode"`
	// Identities maps peer uids to caller names: NAME or unix:NAME, which
	// is the identity unix:NAME.
	Identities map[uint32]string `yaml:"identities"`
	// Identity names the identity of a peer whose uid is not in
	// Identities, like them; empty refuses such peers.
	Identity string `yaml:"identity"`
}

// RuleConfig is one policy rule; see package policy.
type RuleConfig struct {
	Callers        []string `yaml:"callers"`
	Clients        []string `yaml:"clients"`
	Scopes         []string `yaml:"scopes"`
	CustomerOrgs   []string `yaml:"customer_orgs"`
	ExternalRefs   []string `yaml:"external_refs"`
	MaxMinValidity Duration `yaml:"max_min_validity"`
}

// AuditConfig is the audit section.
type AuditConfig struct {
	// Sink is "stderr" (default) or "file:PATH".
	Sink string `yaml:"sink"`
}

// LimitsConfig is the limits section.
type LimitsConfig struct {
	// CallerRate is GetToken calls per second per caller; 0 means no limit.
	CallerRate float64 `yaml:"caller_rate"`
	// CallerBurst is the bucket size; default 2 x CallerRate.
	CallerBurst int `yaml:"caller_burst"`
	// MaxConcurrentStreams per connection; default 128.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// MaxHeaderBytes bounds the headers of one call; default 8 KiB.
	MaxHeaderBytes uint32 `yaml:"max_header_bytes"`
	// HandshakeTimeout bounds the TLS handshake of a new connection;
	// default 5s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
	// FirstRequestTimeout closes a connection with no authenticated call
	// this long after it opened; default 10s.
	FirstRequestTimeout Duration `yaml:"first_request_timeout"`
	// IdleTimeout closes a connection without calls this long; default 5m.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// KeepaliveMinTime is the shortest ping interval a client may use;
	// default 10s.
	KeepaliveMinTime Duration `yaml:"keepalive_min_time"`
	// MaxConnections bounds open TCP connections; default 1024.
	MaxConnections int `yaml:"max_connections"`
	// MaxPendingPerIP bounds the not yet authenticated connections of one
	// IP address; default 32.
	MaxPendingPerIP int `yaml:"max_pending_per_ip"`
}

// serverLimits returns the connection limits of the limits section; zero
// fields take server.DefaultLimits.
func (l LimitsConfig) serverLimits() server.Limits {
	return server.Limits{
		MaxHeaderBytes: l.MaxHeaderBytes, HandshakeTimeout: time.Duration(l.HandshakeTimeout),
		FirstRequestTimeout: time.Duration(l.FirstRequestTimeout), IdleTimeout: time.Duration(l.IdleTimeout),
		KeepaliveMinTime: time.Duration(l.KeepaliveMinTime), MaxConnections: l.MaxConnections,
		MaxPendingPerIP: l.MaxPendingPerIP, MaxConcurrentStreams: l.MaxConcurrentStreams,
	}
}

// check refuses limits that would lock out every caller or undo the
// protection.
func (l LimitsConfig) check() error {
	if l.CallerRate < 0 || l.CallerBurst < 0 {
		return errors.New("limits: caller_rate and caller_burst must not be negative")
	}
	if err := l.serverLimits().Check(); err != nil {
		return fmt.Errorf("limits.%w", err)
	}
	return nil
}

// namedIdentity reads an identity name of the config (insecure_identity,
// the unix identities): NAME or KIND:NAME, where KIND must be kind. Any
// other kind is refused, so that no configured name can pass for a
// certificate's identity.
func namedIdentity(field string, kind identity.Kind, name string) (identity.ID, error) {
	if name == "" {
		return identity.ID{}, nil
	}
	if id, err := identity.Parse(name); err == nil {
		if id.Kind() != kind {
			return identity.ID{}, fmt.Errorf("%s: %q is a %s identity; only %s:NAME (or a bare NAME) is allowed here", field, name, id.Kind(), kind)
		}
		return id, nil
	}
	id, err := identity.New(kind, name)
	if err != nil {
		return identity.ID{}, fmt.Errorf("%s: %w", field, err)
	}
	return id, nil
}

// identities returns the insecure identity and the unix socket's.
func (c *Config) identities() (insecure identity.ID, unix map[uint32]identity.ID, unixOther identity.ID, err error) {
	name := c.InsecureIdentity
	if name == "" {
		name = "insecure"
	}
	if insecure, err = namedIdentity("insecure_identity", identity.Local, name); err != nil {
		return
	}
	unix = map[uint32]identity.ID{}
	for uid, n := range c.Unix.Identities {
		if unix[uid], err = namedIdentity(fmt.Sprintf("unix.identities[%d]", uid), identity.Unix, n); err != nil {
			return
		}
		if unix[uid].IsZero() {
			err = fmt.Errorf("unix.identities[%d]: empty", uid)
			return
		}
	}
	unixOther, err = namedIdentity("unix.identity", identity.Unix, c.Unix.Identity)
	return
}

// AltinnConfig is the altinn section.
type AltinnConfig struct {
	// ExchangeURL overrides the exchange endpoint that pairs with the
	// Maskinporten environment (TT02 for test, production for prod); one
	// of the other environment is refused.
	ExchangeURL string `yaml:"exchange_url"`
	// BaseURL overrides the authentication API base
	// (…/authentication/api/v1) that pairs with the environment.
	BaseURL string `yaml:"base_url"`
	// PageTokenKeyFile holds the key (at least 32 bytes, read as is) that
	// signs SystemUserService page tokens. Empty means a random key per
	// process; replicas behind one address need the same file, so that a
	// page token from one is accepted by the others.
	PageTokenKeyFile string `yaml:"page_token_key_file"`
}

// MaskinportenConfig is the maskinporten section.
type MaskinportenConfig struct {
	// Environment is test or prod.
	Environment string `yaml:"environment"`
	// Issuer overrides the environment's issuer (the grants' aud).
	Issuer string `yaml:"issuer"`
	// TokenURL overrides the environment's token endpoint.
	TokenURL string `yaml:"token_url"`
	// Timeout bounds one fetch, retries included; default 30s.
	Timeout Duration `yaml:"timeout"`
	// ConnectTimeout bounds connecting (TCP and TLS); default 3s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// AttemptTimeout bounds one HTTP exchange; default 10s.
	AttemptTimeout Duration `yaml:"attempt_timeout"`
	// ResponseHeaderTimeout bounds the wait for an answer's headers on
	// the transport to Maskinporten and Altinn; default 10s.
	ResponseHeaderTimeout Duration `yaml:"response_header_timeout"`
	// IdleConnTimeout closes kept-alive connections idle this long;
	// default 30s.
	IdleConnTimeout Duration `yaml:"idle_conn_timeout"`
	// ReconnectInterval: every this often the idle connections are
	// closed, so that new ones resolve the host again; default 60s.
	ReconnectInterval Duration `yaml:"reconnect_interval"`
	// GrantRate caps the grants per second of each client; default 50,
	// negative: no cap. GrantBurst is the grants sent at once; default 50.
	GrantRate  float64 `yaml:"grant_rate"`
	GrantBurst int     `yaml:"grant_burst"`
	// Hedge configures hedged attempts (also used for the Altinn
	// exchange).
	Hedge HedgeConfig `yaml:"hedge"`
	// Retry is the retry policy for network errors, 5xx, 429, MP-012,
	// MP-130 and "issue time is after now".
	Retry RetryConfig `yaml:"retry"`
	// Breaker opens after a run of failures and fails calls at once.
	Breaker BreakerConfig `yaml:"breaker"`
	// GrantLifetime is exp - iat of each grant; default 60s, at most 120s.
	GrantLifetime Duration `yaml:"grant_lifetime"`
	// SignTimeout bounds one signature by the key backend; default 5s.
	SignTimeout Duration `yaml:"sign_timeout"`
	// SignProbeInterval is how often every key signs a throwaway digest so
	// that readiness and the key metrics follow the backends; default 15s.
	// Each probe of a cloud KMS key is a billed signing request.
	SignProbeInterval Duration `yaml:"sign_probe_interval"`
}

// RetryConfig is maskinporten.retry.
type RetryConfig struct {
	// MaxAttempts counts the first try; default 3, 1 disables retries.
	MaxAttempts int `yaml:"max_attempts"`
	// InitialBackoff is the first backoff window; default 200ms.
	InitialBackoff Duration `yaml:"initial_backoff"`
	// MaxBackoff caps the window; default 2s.
	MaxBackoff Duration `yaml:"max_backoff"`
}

// HedgeConfig is maskinporten.hedge.
type HedgeConfig struct {
	// DelayFloor is the least hedge delay; default 250ms.
	DelayFloor Duration `yaml:"delay_floor"`
	// DelayMax caps the hedge delay; default 2s.
	DelayMax Duration `yaml:"delay_max"`
	// Budget is the share of extra attempts allowed per minute; default
	// 0.1, negative disables hedging.
	Budget float64 `yaml:"budget"`
}

// BreakerConfig is maskinporten.breaker.
type BreakerConfig struct {
	// Failures is how many consecutive failures open it; default 5.
	Failures int `yaml:"failures"`
	// OpenFor is how long it stays open before a probe; default 250ms.
	OpenFor Duration `yaml:"open_for"`
}

// CacheConfig is the cache section.
type CacheConfig struct {
	// DefaultMinValidity applies to requests without min_validity;
	// default 30s.
	DefaultMinValidity Duration `yaml:"default_min_validity"`
	// RefreshMargin and RefreshFraction: a token in use is renewed in the
	// background when less than max(margin, fraction x lifetime) remains;
	// defaults 60s and 0.25.
	RefreshMargin   Duration `yaml:"refresh_margin"`
	RefreshFraction float64  `yaml:"refresh_fraction"`
	// IdleAfter evicts keys nobody asked for in this long; default 10m.
	IdleAfter Duration `yaml:"idle_after"`
	// MaxEntries caps the cached keys; default 100000.
	MaxEntries int `yaml:"max_entries"`
	// NegativeTTL remembers permanent refusals this long; default 5s.
	NegativeTTL Duration `yaml:"negative_ttl"`
	// Shared, when set, is a cache level in Redis that replicas share
	// (see SharedCacheConfig); without it nothing is shared.
	Shared *SharedCacheConfig `yaml:"shared"`
}

// ClientConfig is one Maskinporten client.
type ClientConfig struct {
	// Name is what callers put in GetToken's client field.
	Name string `yaml:"name"`
	// ClientID is the Maskinporten client_id (the grant's iss).
	ClientID string `yaml:"client_id"`
	// Scopes callers may ask for with this client.
	Scopes []string `yaml:"scopes"`
	// Key is the signing key registered on the client. Use Keys instead
	// for several keys (rotation).
	Key KeyConfig `yaml:"key"`
	// Keys are several keys registered on the client, each with its kid;
	// exactly one is active and signs grants. A reload (SIGHUP) may add
	// keys, switch the active one, or remove an inactive one.
	Keys []KeyConfig `yaml:"keys"`
	// ResourceAsString sends the grant's resource claim as a string
	// instead of an array.
	ResourceAsString bool `yaml:"resource_as_string"`
	// SystemID is the client's system in Altinn's system register (e.g.
	// 991825827_smartcloud), for SystemUserService. The client's
	// Maskinporten client must then also hold the scopes
	// altinn:authentication/systemuser.request.write and .read.
	SystemID string `yaml:"system_id"`
	// Rotation, when set, rotates the client's key automatically through
	// Digdir's self-service API (see RotationConfig and SelfService).
	Rotation *RotationConfig `yaml:"rotation"`
}

// KeyConfig is a client's signing key.
type KeyConfig struct {
	// KID is the key id registered at Maskinporten.
	KID string `yaml:"kid"`
	// Active marks the key that signs grants, when a client has several.
	Active bool `yaml:"active"`
	// Signer is a URI whose scheme picks the backend: file:PATH (relative
	// paths are relative to the config file).
	Signer string `yaml:"signer"`
	// Algorithm is RS256 (default), RS384 or RS512.
	Algorithm string `yaml:"algorithm"`
	// PasswordFile or PasswordEnv give the password of a PKCS#12 key file
	// (.p12/.pfx): a file holding it, or an environment variable. Never
	// inline.
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// AllowLoosePermissions lets a key file be readable by group or
	// others; such files are refused otherwise.
	AllowLoosePermissions bool `yaml:"allow_loose_permissions"`
	// Expires is when Maskinporten stops accepting the key (a registered
	// key expires a year after upload): a date (2027-11-25) or an RFC 3339
	// time. Optional; it feeds the expiry metric and start-up warnings.
	Expires string `yaml:"expires"`
}

// Expiry parses Expires; the zero time means not configured.
func (k KeyConfig) Expiry() (time.Time, error) {
	if k.Expires == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.DateOnly, k.Expires); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, k.Expires)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a date (2027-11-25) or an RFC 3339 time", k.Expires)
	}
	return t, nil
}

// Duration is a time.Duration written as "30s", "2m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 30s", n.Line)
	}
	v, err := parseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration such as 30s or 90d", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// parseDuration is time.ParseDuration that also takes a whole number of
// days, such as 90d.
func parseDuration(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok && d != "" && strings.Trim(d, "0123456789") == "" && len(d) <= 5 {
		n, err := strconv.Atoi(d)
		return time.Duration(n) * 24 * time.Hour, err
	}
	return time.ParseDuration(s)
}

// maxConfigSize bounds the config file.
const maxConfigSize = 1 << 20

// Load reads and checks the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and checks a config document.
func Parse(data []byte) (*Config, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty")
		}
		return nil, errors.New(cleanYAMLError(err))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

var unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)

// cleanYAMLError keeps the first problem the decoder found and says it in
// the config's terms rather than Go's.
func cleanYAMLError(err error) string {
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	if m := unknownFieldRE.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("line %s: unknown key %q", m[1], m[2])
	}
	return msg
}

// check validates everything that needs no file or network.
func (c *Config) check() error {
	if c.Listen == "" {
		return errors.New("listen: required (host:port)")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %q is not host:port", c.Listen)
	}
	if err := c.checkTransport(); err != nil {
		return err
	}
	if _, err := c.policy(); err != nil {
		return err
	}
	if sink := c.Audit.Sink; sink != "" && sink != "stderr" && !strings.HasPrefix(sink, "file:") {
		return fmt.Errorf("audit.sink: %q, want stderr or file:PATH", sink)
	}
	if err := c.Limits.check(); err != nil {
		return err
	}
	if _, _, _, err := c.identities(); err != nil {
		return err
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("http_listen: %q is not host:port", c.HTTPListen)
		}
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q, want debug, info, warn or error", c.LogLevel)
	}
	if _, err := c.Environment(); err != nil {
		return fmt.Errorf("maskinporten: %w", err)
	}
	if _, err := altinn.ExchangeURLFor(c.Maskinporten.Environment, c.Altinn.ExchangeURL); err != nil {
		return fmt.Errorf("altinn.exchange_url: %w", err)
	}
	if _, err := altinn.BaseURLFor(c.Maskinporten.Environment, c.Altinn.BaseURL); err != nil {
		return fmt.Errorf("altinn.base_url: %w", err)
	}
	if err := maskinporten.CheckGrantLifetime(time.Duration(c.Maskinporten.GrantLifetime)); err != nil {
		return fmt.Errorf("maskinporten.grant_lifetime: %w", err)
	}
	if c.Maskinporten.Retry.MaxAttempts < 0 || c.Maskinporten.Retry.MaxAttempts > 10 {
		return fmt.Errorf("maskinporten.retry.max_attempts: %d, want 1 to 10", c.Maskinporten.Retry.MaxAttempts)
	}
	if c.Maskinporten.Breaker.Failures < 0 {
		return fmt.Errorf("maskinporten.breaker.failures: %d, want at least 1", c.Maskinporten.Breaker.Failures)
	}
	if err := c.Maskinporten.checkResilience(); err != nil {
		return err
	}
	if err := broker.CheckRefreshFraction(c.Cache.RefreshFraction); err != nil {
		return fmt.Errorf("cache.refresh_fraction: %w", err)
	}
	if c.Cache.MaxEntries < 0 {
		return fmt.Errorf("cache.max_entries: %d, want at least 1", c.Cache.MaxEntries)
	}
	if err := broker.CheckDefaultMinValidity(time.Duration(c.Cache.DefaultMinValidity)); err != nil {
		return fmt.Errorf("cache.default_min_validity: %w", err)
	}
	if c.Cache.Shared != nil {
		if err := c.Cache.Shared.check(time.Duration(c.Maskinporten.Timeout)); err != nil {
			return err
		}
	}
	if len(c.Clients) == 0 {
		return errors.New("clients: at least one client is required")
	}
	names := map[string]bool{}
	for i, cl := range c.Clients {
		where := fmt.Sprintf("clients[%d]", i)
		switch {
		case cl.Name == "":
			return fmt.Errorf("%s.name: required", where)
		case names[cl.Name]:
			return fmt.Errorf("%s.name: %q used twice", where, cl.Name)
		case cl.ClientID == "":
			return fmt.Errorf("%s.client_id: required", where)
		case len(cl.Scopes) == 0:
			return fmt.Errorf("%s.scopes: at least one scope is required", where)
		}
		names[cl.Name] = true
		if err := cl.checkKeys(where); err != nil {
			return err
		}
	}
	return c.checkRotation()
}

// KeyList returns the client's keys: Keys, or Key alone.
func (c ClientConfig) KeyList() []KeyConfig {
	if len(c.Keys) > 0 {
		return c.Keys
	}
	return []KeyConfig{c.Key}
}

// ActiveKey returns the key that signs the client's grants: the only one,
// or the one marked active (the check makes sure there is exactly one).
func (c ClientConfig) ActiveKey() KeyConfig {
	list := c.KeyList()
	for _, k := range list {
		if k.Active || len(list) == 1 {
			return k
		}
	}
	return KeyConfig{}
}

func (c ClientConfig) checkKeys(where string) error {
	if len(c.Keys) > 0 && c.Key != (KeyConfig{}) {
		return fmt.Errorf("%s: set key or keys, not both", where)
	}
	list := c.KeyList()
	active, kids := 0, map[string]bool{}
	for i, k := range list {
		kw := where + ".key"
		if len(c.Keys) > 0 {
			kw = fmt.Sprintf("%s.keys[%d]", where, i)
			if k.KID == "" {
				return fmt.Errorf("%s.kid: required when a client has several keys", kw)
			}
			if kids[k.KID] {
				return fmt.Errorf("%s.kid: %q used twice", kw, k.KID)
			}
			kids[k.KID] = true
		}
		if k.Active {
			active++
		}
		if k.Signer == "" {
			return fmt.Errorf("%s.signer: required (e.g. file:mp-key.pem)", kw)
		}
		if _, err := signer.ParseAlgorithm(k.Algorithm); err != nil {
			return fmt.Errorf("%s.algorithm: %w", kw, err)
		}
		if err := keys.Check(k.Spec("", 0)); err != nil {
			return fmt.Errorf("%s.signer: %w", kw, err)
		}
		if _, err := k.Expiry(); err != nil {
			return fmt.Errorf("%s.expires: %w", kw, err)
		}
	}
	if len(list) > 1 && active != 1 {
		return fmt.Errorf("%s.keys: exactly one key must be active: true (found %d)", where, active)
	}
	return nil
}

// checkTransport enforces: mTLS, unless insecure on loopback.
func (c *Config) checkTransport() error {
	if c.Insecure {
		host, _, _ := net.SplitHostPort(c.Listen)
		if !isLoopback(host) {
			return fmt.Errorf("insecure: plaintext is only allowed on a loopback listen address, not %q", c.Listen)
		}
		if c.TLS != (TLSConfig{}) {
			return errors.New("insecure: true and tls are both set; choose one")
		}
	} else if err := c.TLS.check(); err != nil {
		return err
	}
	if c.Unix.Mode != "" {
		if _, err := strconv.ParseUint(c.Unix.Mode, 8, 32); err != nil {
			return fmt.Errorf("unix.mode: %q is not an octal mode", c.Unix.Mode)
		}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// policy compiles the policy section.
func (c *Config) policy() (*policy.Policy, error) {
	rules := make([]policy.Rule, 0, len(c.Policy))
	for _, r := range c.Policy {
		rules = append(rules, policy.Rule{
			Callers: r.Callers, Clients: r.Clients, Scopes: r.Scopes, CustomerOrgs: r.CustomerOrgs,
			ExternalRefs: r.ExternalRefs, MaxMinValidity: time.Duration(r.MaxMinValidity),
		})
	}
	return policy.New(rules)
}

// checkResilience checks the timeouts, hedging, breaker and grant rate
// settings, naming the field of a bad value.
func (m MaskinportenConfig) checkResilience() error {
	for _, d := range []struct {
		name string
		v    Duration
		max  time.Duration
	}{
		{"maskinporten.timeout", m.Timeout, 10 * time.Minute},
		{"maskinporten.connect_timeout", m.ConnectTimeout, time.Minute},
		{"maskinporten.attempt_timeout", m.AttemptTimeout, 5 * time.Minute},
		{"maskinporten.response_header_timeout", m.ResponseHeaderTimeout, 5 * time.Minute},
		{"maskinporten.idle_conn_timeout", m.IdleConnTimeout, time.Hour},
		{"maskinporten.reconnect_interval", m.ReconnectInterval, 24 * time.Hour},
		{"maskinporten.hedge.delay_floor", m.Hedge.DelayFloor, time.Minute},
		{"maskinporten.hedge.delay_max", m.Hedge.DelayMax, time.Minute},
		{"maskinporten.breaker.open_for", m.Breaker.OpenFor, 10 * time.Minute},
	} {
		if v := time.Duration(d.v); v < 0 || v > d.max {
			return fmt.Errorf("%s: %v, want 0 (the default) to %v", d.name, v, d.max)
		}
	}
	if lo, hi := time.Duration(m.Hedge.DelayFloor), time.Duration(m.Hedge.DelayMax); lo > 0 && hi > 0 && hi < lo {
		return fmt.Errorf("maskinporten.hedge.delay_max: %v is below delay_floor %v", hi, lo)
	}
	if b := m.Hedge.Budget; b > 1 || (b < 0 && b != -1) {
		return fmt.Errorf("maskinporten.hedge.budget: %v, want 0 (the default, 0.1) to 1, or -1 to disable hedging", b)
	}
	if r := m.GrantRate; r > 100_000 || (r < 0 && r != -1) {
		return fmt.Errorf("maskinporten.grant_rate: %v, want 0 (the default, 50) to 100000 grants per second, or -1 for no cap", r)
	}
	if m.GrantBurst < 0 || m.GrantBurst > 100_000 {
		return fmt.Errorf("maskinporten.grant_burst: %d, want 0 (the default, 50) to 100000", m.GrantBurst)
	}
	return nil
}

// Environment returns the Maskinporten environment the config names, with
// its overrides.
func (c *Config) Environment() (maskinporten.Environment, error) {
	m := c.Maskinporten
	if m.Environment == "" {
		return maskinporten.Environment{}, errors.New("environment: required (test or prod)")
	}
	return maskinporten.NewEnvironment(m.Environment, m.Issuer, m.TokenURL)
}

// resolvePath makes a relative key path relative to the config file's
// directory.
func resolvePath(baseDir, p string) string {
	if filepath.IsAbs(p) || baseDir == "" {
		return p
	}
	return filepath.Join(baseDir, p)
}
