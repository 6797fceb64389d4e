package daemon

import (
	"context"
	"crypto"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/audit"
	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/hedge"
	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/pagetoken"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/metrics"
)

// Spec is the signer.Spec of a key config: relative paths resolve against
// baseDir, and each backend call is bounded by timeout (zero: the
// backend's default).
func (k KeyConfig) Spec(baseDir string, timeout time.Duration) signer.Spec {
	return signer.Spec{
		URI: k.Signer, KeyID: k.KID, Algorithm: signer.Algorithm(k.Algorithm), BaseDir: baseDir,
		Password:              signer.PasswordSource{File: k.PasswordFile, Env: k.PasswordEnv},
		AllowLoosePermissions: k.AllowLoosePermissions, CallTimeout: timeout,
	}
}

// OpenKey opens the key a key config names, for the commands that only
// look at keys (check, jwks, explain, signer serve); the caller closes it.
func OpenKey(k KeyConfig, baseDir string) (*signer.Key, error) {
	return keys.Open(context.Background(), k.Spec(baseDir, 0))
}

// newHTTPClients returns the HTTP clients for Maskinporten and Altinn (see
// maskinporten.NewHTTPClient): one with a pool of kept-alive connections,
// and one that opens a fresh connection per request, for hedges. Until ctx
// ends, the idle connections of both are closed every reconnect_interval
// so that the hosts are resolved again.
func newHTTPClients(ctx context.Context, m MaskinportenConfig, tel telemetry) (pooled, fresh *http.Client) {
	tc := maskinporten.TransportConfig{
		ConnectTimeout:        time.Duration(m.ConnectTimeout),
		ResponseHeaderTimeout: time.Duration(m.ResponseHeaderTimeout),
		IdleConnTimeout:       time.Duration(m.IdleConnTimeout),
	}
	pooled = maskinporten.NewHTTPClient(tc)
	tc.FreshConnections = true
	fresh = maskinporten.NewHTTPClient(tc)
	every := time.Duration(m.ReconnectInterval)
	if every == 0 {
		every = time.Minute
	}
	go maskinporten.CloseIdleEvery(ctx, every, pooled, fresh)
	if tel.tracer != nil {
		for _, c := range []*http.Client{pooled, fresh} {
			c.Transport = otelhttp.NewTransport(c.Transport, otelhttp.WithTracerProvider(tel.tracer))
		}
	}
	return pooled, fresh
}

// telemetry is what buildBroker instruments the clients with; zero fields
// mean none.
type telemetry struct {
	metrics *metrics.Metrics
	tracer  trace.TracerProvider
}

// running is what a config reload may change in a running broker: the
// policy, and each client's keys (held by the key ring).
type running struct {
	broker *broker.Broker
	ring   *keyring.Ring
	// clients are the Maskinporten clients, by name: each signs with the
	// ring's active key for it.
	clients map[string]*maskinporten.Client

	// What else was built, for Components.
	mpHedger                *hedge.Hedger
	exchanger               *altinn.Exchanger
	httpClient, freshClient *http.Client
	metrics                 *metrics.Metrics
	// closeShared closes the shared cache level (cache.shared), if any.
	closeShared func()
}

// Components says what Run assembled, so that a test can hold two ways
// of starting the broker (serve and dev) against each other.
type Components struct {
	// HTTPTransport and HedgeTransport are the types of the transports to
	// Maskinporten and Altinn, pooled and fresh-connection.
	HTTPTransport, HedgeTransport string
	// MaskinportenHedger and AltinnHedger: hedged attempts behind a breaker.
	MaskinportenHedger, AltinnHedger bool
	// Metrics: the gRPC interceptor, the broker's, the exchange's and the
	// keys' metrics; SignTimer: the key ring times every signature.
	Metrics bool
	// Tracing: a tracer provider (on as the config or OTEL_* say).
	Tracing bool
	// Audit is the type of the audit sink's log.
	Audit string
	// KeyRing, and ProbeInterval of its probe loop.
	KeyRing       bool
	ProbeInterval time.Duration
	// Interceptors counts the gRPC interceptors besides the server's own.
	Interceptors int
	// Limits are the gRPC connection limits; CallerRate the per-caller rate.
	Limits     server.Limits
	CallerRate float64
	// Servers counts the gRPC servers (TCP, and the unix socket's);
	// OperatorHTTP the /metrics, /healthz, /readyz listener; Reload
	// whether a config file is watched.
	Servers      int
	OperatorHTTP bool
	Reload       bool
}

// components describes what was built.
func (rt *running) components(tp any, a *audit.Log, sc server.Config, servers int, operatorHTTP, reload bool) Components {
	return Components{
		HTTPTransport:      fmt.Sprintf("%T", rt.httpClient.Transport),
		HedgeTransport:     fmt.Sprintf("%T", rt.freshClient.Transport),
		MaskinportenHedger: rt.mpHedger != nil,
		AltinnHedger:       rt.exchanger.Hedger != nil && rt.exchanger.HedgeHTTP != nil,
		Metrics:            rt.metrics != nil && rt.exchanger.OnExchange != nil,
		Tracing:            tp != nil,
		Audit:              fmt.Sprintf("%T", a),
		KeyRing:            rt.ring != nil,
		Interceptors:       len(sc.Interceptors),
		Limits:             sc.Limits,
		CallerRate:         sc.CallerRate,
		Servers:            servers,
		OperatorHTTP:       operatorHTTP,
		Reload:             reload,
	}
}

// setKey makes k the key client signs grants with.
func (rt *running) setKey(client string, k *signer.Key) { _ = rt.clients[client].SetKey(k) }

// ringClients is the key ring's view of the config's clients.
func ringClients(cfg *Config, baseDir string) ([]keyring.Client, error) {
	timeout := time.Duration(cfg.Maskinporten.SignTimeout)
	var out []keyring.Client
	for i, c := range cfg.Clients {
		rc := keyring.Client{Name: c.Name}
		for _, kc := range c.KeyList() {
			expires, err := kc.Expiry()
			if err != nil {
				return nil, fmt.Errorf("clients[%d] (%s) key %q: expires: %w", i, c.Name, kc.KID, err)
			}
			rc.Keys = append(rc.Keys, keyring.Key{Spec: kc.Spec(baseDir, timeout), Active: kc == c.ActiveKey(), Expires: expires})
		}
		out = append(out, rc)
	}
	return out, nil
}

// keyStatus lists the keys for /healthz.
func (rt *running) keyStatus() []server.KeyStatus {
	var out []server.KeyStatus
	for _, st := range rt.ring.Status() {
		ks := server.KeyStatus{Client: st.Client, KeyID: st.KeyID, Backend: st.Backend, Active: st.Active, Signing: st.Signing,
			ExpiresSoon: st.ExpiresSoon}
		if !st.Expires.IsZero() {
			e := st.Expires
			ks.Expires = &e
		}
		out = append(out, ks)
	}
	return out
}

// metricKeys lists the keys for the metrics.
func (rt *running) metricKeys() []metrics.Key {
	var out []metrics.Key
	for _, st := range rt.ring.Status() {
		out = append(out, metrics.Key{Client: st.Client, KeyID: st.KeyID, Backend: st.Backend, Active: st.Active,
			Signing: st.Signing, Expires: st.Expires})
	}
	return out
}

func buildBroker(ctx context.Context, cfg *Config, baseDir string, log *slog.Logger, tel telemetry, openKey func(context.Context, signer.Spec) (*signer.Key, error)) (_ *running, err error) {
	env, err := cfg.Environment()
	if err != nil {
		return nil, fmt.Errorf("maskinporten: %w", err)
	}
	httpClient, freshClient := newHTTPClients(ctx, cfg.Maskinporten, tel)
	newHedger := func() *hedge.Hedger {
		budget := cfg.Maskinporten.Hedge.Budget
		return hedge.New(hedge.Config{
			Floor:  time.Duration(cfg.Maskinporten.Hedge.DelayFloor),
			Max:    time.Duration(cfg.Maskinporten.Hedge.DelayMax),
			Budget: budget,
			Breaker: breaker.New(breaker.Config{
				Failures: cfg.Maskinporten.Breaker.Failures,
				OpenFor:  time.Duration(cfg.Maskinporten.Breaker.OpenFor),
			}),
		})
	}
	// One hedger and breaker for Maskinporten, shared by the clients, and
	// one for Altinn.
	mpHedger := newHedger()
	pol, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	bc := broker.Config{
		Policy:             pol,
		DefaultMinValidity: time.Duration(cfg.Cache.DefaultMinValidity),
		FetchTimeout:       time.Duration(cfg.Maskinporten.Timeout),
		Logger:             log,
		RefreshMargin:      time.Duration(cfg.Cache.RefreshMargin),
		RefreshFraction:    cfg.Cache.RefreshFraction,
		IdleAfter:          time.Duration(cfg.Cache.IdleAfter),
		MaxEntries:         cfg.Cache.MaxEntries,
		NegativeTTL:        time.Duration(cfg.Cache.NegativeTTL),
	}
	shared, closeShared, err := sharedCacheFor(cfg, baseDir, os.LookupEnv, log)
	if err != nil {
		return nil, err
	}
	bc.Shared = shared
	defer func() {
		if err != nil {
			closeShared()
		}
	}()
	exURL, err := altinn.ExchangeURLFor(cfg.Maskinporten.Environment, cfg.Altinn.ExchangeURL)
	if err != nil {
		return nil, err
	}
	exchanger := altinn.NewExchanger(exURL, httpClient)
	exchanger.Hedger, exchanger.HedgeHTTP = newHedger(), freshClient
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
	rcs, err := ringClients(cfg, baseDir)
	if err != nil {
		return nil, err
	}
	var wrap func(string, crypto.Signer) crypto.Signer
	if tel.metrics != nil {
		wrap = tel.metrics.TimeSigner
	}
	ring, err := keyring.Open(ctx, keyring.Config{Logger: log, Wrap: wrap, Open: openKey}, rcs)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			ring.Close()
		}
	}()
	rt := &running{ring: ring, mpHedger: mpHedger, exchanger: exchanger, httpClient: httpClient, freshClient: freshClient,
		metrics: tel.metrics}
	clients := map[string]*maskinporten.Client{}
	for i, c := range cfg.Clients {
		active := ring.Active(c.Name)
		var onAttempt func(time.Duration, error)
		if tel.metrics != nil {
			onAttempt = tel.metrics.ObserveAttempt(c.Name)
		}
		mp, err := maskinporten.New(maskinporten.Config{
			ClientID:         c.ClientID,
			Key:              active,
			Environment:      env,
			HTTPClient:       httpClient,
			HedgeHTTPClient:  freshClient,
			Hedger:           mpHedger,
			GrantRate:        cfg.Maskinporten.GrantRate,
			GrantBurst:       cfg.Maskinporten.GrantBurst,
			GrantLifetime:    time.Duration(cfg.Maskinporten.GrantLifetime),
			ResourceAsString: c.ResourceAsString,
			AttemptTimeout:   time.Duration(cfg.Maskinporten.AttemptTimeout),
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
		clients[c.Name] = mp
		bc.Clients = append(bc.Clients, broker.Client{Name: c.Name, Scopes: c.Scopes, Source: mp, Exchanger: exchanger,
			SystemID: c.SystemID, Vendor: vendor})
		log.InfoContext(ctx, "client ready", slog.String("client", c.Name), slog.String("client_id", c.ClientID),
			slog.String("kid", active.KeyID), slog.String("backend", active.Backend), slog.String("algorithm", string(active.Algorithm)),
			slog.Int("keys", len(c.KeyList())), slog.String("environment", env.Name), slog.String("token_url", env.TokenURL))
	}
	b, err := broker.New(bc)
	if err != nil {
		return nil, err
	}
	rt.broker = b
	rt.clients = clients
	rt.closeShared = closeShared
	return rt, nil
}

// reload applies a new config to the running broker: every client's keys
// (the active one may change; the one active now must still be listed) and
// the policy. It changes nothing unless all of it loads: the policy is
// compiled and the keys opened before either is swapped in. Other changes
// need a restart.
func (rt *running) reload(ctx context.Context, cfg *Config, baseDir string) error {
	pol, err := cfg.policy()
	if err != nil {
		return err
	}
	rcs, err := ringClients(cfg, baseDir)
	if err != nil {
		return err
	}
	if err := rt.ring.Replace(ctx, rcs); err != nil {
		return err
	}
	rt.broker.SetPolicy(pol)
	return nil
}
