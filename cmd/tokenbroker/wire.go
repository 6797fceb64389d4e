package main

import (
	"context"
	"crypto"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/pagetoken"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/metrics"
)

// spec is the signer.Spec of a key config: relative paths resolve against
// baseDir, and each backend call is bounded by timeout (zero: the
// backend's default).
func (k KeyConfig) spec(baseDir string, timeout time.Duration) signer.Spec {
	return signer.Spec{
		URI: k.Signer, KeyID: k.KID, Algorithm: signer.Algorithm(k.Algorithm), BaseDir: baseDir,
		Password:              signer.PasswordSource{File: k.PasswordFile, Env: k.PasswordEnv},
		AllowLoosePermissions: k.AllowLoosePermissions, CallTimeout: timeout,
	}
}

// openKey loads the key a client's config names.
func openKey(k KeyConfig, baseDir string) (*signer.Key, error) {
	return keys.Open(context.Background(), k.spec(baseDir, 0))
}

// ExpiryWarning is how long before a key's expiry the broker starts to warn.
const ExpiryWarning = 30 * 24 * time.Hour

// warnExpiry logs a warning for a key that has expired or expires within
// ExpiryWarning.
func warnExpiry(ctx context.Context, log *slog.Logger, client, kid string, expires time.Time) {
	if expires.IsZero() {
		return
	}
	switch left := time.Until(expires); {
	case left <= 0:
		log.ErrorContext(ctx, "key has expired: Maskinporten refuses its grants (MP-121); register a new key and rotate",
			slog.String("client", client), slog.String("kid", kid), slog.Time("expired", expires))
	case left < ExpiryWarning:
		log.WarnContext(ctx, "key expires soon: register a new key at Maskinporten and rotate",
			slog.String("client", client), slog.String("kid", kid), slog.Time("expires", expires),
			slog.Duration("left", left.Round(time.Hour)))
	}
}

// newHTTPClient returns the client for Maskinporten: bounded connect and
// TLS handshake times and a pool of kept-alive connections. Each exchange
// is bounded by the maskinporten client's attempt timeout.
func newHTTPClient(connectTimeout time.Duration) *http.Client {
	if connectTimeout <= 0 {
		connectTimeout = 3 * time.Second
	}
	dialer := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   connectTimeout,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}}
}

// buildBroker loads every key and builds the broker. Any failure names the
// client and the problem.
// telemetry is what buildBroker instruments the clients with; zero fields
// mean none.
type telemetry struct {
	metrics *metrics.Metrics
	tracer  trace.TracerProvider
}

// running is what a config reload may change in a running broker: the
// policy, and each client's keys.
type running struct {
	broker      *broker.Broker
	clients     map[string]*maskinporten.Client
	tel         telemetry
	log         *slog.Logger
	signTimeout time.Duration

	mu sync.Mutex
	// active holds each client's active key, guarded.
	active map[string]*signer.Guarded
	// setReady receives the readiness the signers allow: true when every
	// active key signs.
	setReady func(bool)
	// keys describes every loaded key, by client, for /healthz.
	keys map[string][]keyInfo
}

// keyInfo is what /healthz shows of a key.
type keyInfo struct {
	kid, backend string
	active       bool
	expires      time.Time
	guard        *signer.Guarded
}

// keyStatus lists the keys for /healthz.
func (rt *running) keyStatus() []server.KeyStatus {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []server.KeyStatus
	for client, keys := range rt.keys {
		for _, k := range keys {
			ks := server.KeyStatus{Client: client, KeyID: k.kid, Backend: k.backend, Active: k.active, Signing: k.guard.Healthy()}
			if !k.expires.IsZero() {
				e := k.expires
				ks.Expires = &e
				ks.ExpiresSoon = time.Until(e) < ExpiryWarning
			}
			out = append(out, ks)
		}
	}
	slices.SortFunc(out, func(a, b server.KeyStatus) int { return strings.Compare(a.Client+a.KeyID, b.Client+b.KeyID) })
	return out
}

// metricKeys lists the keys for the metrics.
func (rt *running) metricKeys() []metrics.Key {
	var out []metrics.Key
	for _, ks := range rt.keyStatus() {
		k := metrics.Key{Client: ks.Client, KeyID: ks.KeyID, Backend: ks.Backend, Active: ks.Active, Signing: ks.Signing}
		if ks.Expires != nil {
			k.Expires = *ks.Expires
		}
		out = append(out, k)
	}
	return out
}

// signerChanged logs that the key kid of client stopped or resumed
// signing and recomputes readiness, which follows the active keys only.
func (rt *running) signerChanged(client, kid, backend string, ok bool) {
	attrs := []any{slog.String("client", client), slog.String("kid", kid), slog.String("backend", backend)}
	if ok {
		rt.log.Info("key signs again", attrs...)
	} else {
		rt.log.Error("key does not sign", attrs...)
	}
	rt.mu.Lock()
	all := true
	for _, g := range rt.active {
		all = all && g.Healthy()
	}
	set := rt.setReady
	rt.mu.Unlock()
	if set != nil {
		set(all)
	}
	if !all {
		rt.log.Error("an active key does not sign: readiness is NOT_SERVING until it signs again")
	}
}

// probeSigners signs a throwaway digest with every key, active or standby,
// every interval, so that readiness and the key metrics follow the
// backends even without traffic, and a broken standby key shows before a
// rotation to it.
func (rt *running) probeSigners(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rt.mu.Lock()
		var guards []*signer.Guarded
		for _, keys := range rt.keys {
			for _, k := range keys {
				guards = append(guards, k.guard)
			}
		}
		rt.mu.Unlock()
		for _, g := range guards {
			_ = g.Probe(crypto.SHA256)
		}
	}
}

func buildBroker(ctx context.Context, cfg *Config, baseDir string, log *slog.Logger, tel telemetry) (*running, error) {
	env, err := cfg.environment()
	if err != nil {
		return nil, fmt.Errorf("maskinporten: %w", err)
	}
	timeout := time.Duration(cfg.Maskinporten.Timeout)
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	httpClient := newHTTPClient(time.Duration(cfg.Maskinporten.ConnectTimeout))
	if tel.tracer != nil {
		httpClient.Transport = otelhttp.NewTransport(httpClient.Transport, otelhttp.WithTracerProvider(tel.tracer))
	}
	brk := breaker.New(breaker.Config{
		Failures: cfg.Maskinporten.Breaker.Failures,
		OpenFor:  time.Duration(cfg.Maskinporten.Breaker.OpenFor),
	})
	pol, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	bc := broker.Config{
		Policy:             pol,
		DefaultMinValidity: time.Duration(cfg.Cache.DefaultMinValidity),
		FetchTimeout:       timeout,
		Logger:             log,
		RefreshMargin:      time.Duration(cfg.Cache.RefreshMargin),
		RefreshFraction:    cfg.Cache.RefreshFraction,
		IdleAfter:          time.Duration(cfg.Cache.IdleAfter),
		MaxEntries:         cfg.Cache.MaxEntries,
		NegativeTTL:        time.Duration(cfg.Cache.NegativeTTL),
	}
	exURL, err := altinn.ExchangeURLFor(cfg.Maskinporten.Environment, cfg.Altinn.ExchangeURL)
	if err != nil {
		return nil, err
	}
	exchanger := altinn.NewExchanger(exURL, httpClient)
	baseURL, err := altinn.BaseURLFor(cfg.Maskinporten.Environment, cfg.Altinn.BaseURL)
	if err != nil {
		return nil, err
	}
	vendor := altinn.NewVendor(baseURL, httpClient)
	if f := cfg.Altinn.PageTokenKeyFile; f != "" {
		key, err := os.ReadFile(resolvePath(baseDir, f))
		if err != nil {
			return nil, fmt.Errorf("altinn.page_token_key_file: %w", err)
		}
		if len(key) < pagetoken.MinKeyLen {
			return nil, fmt.Errorf("altinn.page_token_key_file: %d bytes, want at least %d", len(key), pagetoken.MinKeyLen)
		}
		bc.PageTokenKey = key
	}
	if tel.metrics != nil {
		exchanger.OnExchange = tel.metrics.ObserveExchange()
	}
	rt := &running{clients: map[string]*maskinporten.Client{}, tel: tel, log: log,
		signTimeout: time.Duration(cfg.Maskinporten.SignTimeout), active: map[string]*signer.Guarded{}, keys: map[string][]keyInfo{}}
	for i, c := range cfg.Clients {
		active, guard, err := rt.loadKeys(ctx, i, c, baseDir)
		if err != nil {
			return nil, err
		}
		rt.active[c.Name] = guard
		var onAttempt func(time.Duration, error)
		if tel.metrics != nil {
			onAttempt = tel.metrics.ObserveAttempt(c.Name)
		}
		mp, err := maskinporten.New(maskinporten.Config{
			ClientID:         c.ClientID,
			Key:              active,
			Environment:      env,
			HTTPClient:       httpClient,
			GrantLifetime:    time.Duration(cfg.Maskinporten.GrantLifetime),
			ResourceAsString: c.ResourceAsString,
			AttemptTimeout:   time.Duration(cfg.Maskinporten.AttemptTimeout),
			Breaker:          brk,
			OnAttempt:        onAttempt,
			Retry: maskinporten.RetryPolicy{
				MaxAttempts:    cfg.Maskinporten.Retry.MaxAttempts,
				InitialBackoff: time.Duration(cfg.Maskinporten.Retry.InitialBackoff),
				MaxBackoff:     time.Duration(cfg.Maskinporten.Retry.MaxBackoff),
			},
		})
		if err != nil {
			return nil, fmt.Errorf("clients[%d] (%s): %w", i, c.Name, err)
		}
		rt.clients[c.Name] = mp
		bc.Clients = append(bc.Clients, broker.Client{Name: c.Name, Scopes: c.Scopes, Source: mp, Exchanger: exchanger,
			SystemID: c.SystemID, Vendor: vendor})
		log.InfoContext(ctx, "client ready", slog.String("client", c.Name), slog.String("client_id", c.ClientID),
			slog.String("kid", active.KeyID), slog.String("backend", active.Backend), slog.String("algorithm", string(active.Algorithm)),
			slog.Int("keys", len(c.keyList())), slog.String("environment", env.Name), slog.String("token_url", env.TokenURL))
	}
	b, err := broker.New(bc)
	if err != nil {
		return nil, err
	}
	rt.broker = b
	return rt, nil
}

// loadKeys opens every key of client c (failing on the first that does not
// load), instruments them, warns about expiry, and returns the active one
// with its guard.
func (rt *running) loadKeys(ctx context.Context, i int, c ClientConfig, baseDir string) (active *signer.Key, activeGuard *signer.Guarded, err error) {
	var infos []keyInfo
	defer func() {
		if err == nil {
			rt.mu.Lock()
			rt.keys[c.Name] = infos
			rt.mu.Unlock()
		}
	}()
	for _, kc := range c.keyList() {
		key, err := keys.Open(ctx, kc.spec(baseDir, rt.signTimeout))
		if err != nil {
			return nil, nil, fmt.Errorf("clients[%d] (%s) key %q: %w", i, c.Name, kc.KID, err)
		}
		if rt.tel.metrics != nil {
			key.Signer = rt.tel.metrics.TimeSigner(key.Backend, key.Signer)
		}
		guard := signer.Guard(key.Signer, rt.signTimeout, func(ok bool) { rt.signerChanged(c.Name, key.KeyID, key.Backend, ok) })
		key.Signer = guard
		expires, _ := kc.expiry()
		if expires.IsZero() {
			expires = key.NotAfter() // a certificate's own expiry
		}
		warnExpiry(ctx, rt.log, c.Name, key.KeyID, expires)
		isActive := kc.Active || len(c.keyList()) == 1
		if isActive {
			active, activeGuard = key, guard
		}
		infos = append(infos, keyInfo{kid: key.KeyID, backend: key.Backend, active: isActive, expires: expires, guard: guard})
	}
	return active, activeGuard, nil
}

// reload applies a new config to the running broker: every client's keys
// (the active one may change; the one active now must still be listed) and
// the policy. It changes nothing unless all of it loads. Other changes need
// a restart.
func (rt *running) reload(ctx context.Context, cfg *Config, baseDir string) error {
	pol, err := cfg.policy()
	if err != nil {
		return err
	}
	next := map[string]*signer.Key{}
	guards := map[string]*signer.Guarded{}
	for i, c := range cfg.Clients {
		mp, ok := rt.clients[c.Name]
		if !ok {
			return fmt.Errorf("clients[%d] (%s): adding a client needs a restart", i, c.Name)
		}
		current := mp.KeyID()
		listed := false
		for _, k := range c.keyList() {
			listed = listed || k.KID == current
		}
		if !listed && c.activeKID() != "" {
			return fmt.Errorf("clients[%d] (%s): the active key %q was removed; make another key active, reload, and only then remove it",
				i, c.Name, current)
		}
		active, guard, err := rt.loadKeys(ctx, i, c, baseDir)
		if err != nil {
			return err
		}
		next[c.Name] = active
		guards[c.Name] = guard
	}
	rt.mu.Lock()
	for name, g := range guards {
		rt.active[name] = g
	}
	rt.mu.Unlock()
	for name, k := range next {
		if old := rt.clients[name].KeyID(); old != k.KeyID {
			rt.log.InfoContext(ctx, "active key changed", slog.String("client", name), slog.String("from", old), slog.String("to", k.KeyID))
		}
		_ = rt.clients[name].SetKey(k)
	}
	rt.broker.SetPolicy(pol)
	return nil
}
