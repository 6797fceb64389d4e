package daemon

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sync"
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
	"github.com/tokenbroker/tokenbroker/broker/rotation"
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

	// rotation is the automatic key rotation, nil when no client rotates.
	rotation *keyRotation
	// keysMu serialises the changes of the key ring (a reload, a rotation
	// state applied) and guards cfg and baseDir, the config in use.
	keysMu  sync.Mutex
	cfg     *Config
	baseDir string
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

// setKey makes k the key client signs grants with, and the key it signed
// with before a switch the fallback for as long as the ring holds it (a
// rotation's grace period, or until a reload drops it): Maskinporten may
// not know a new key everywhere at once.
func (rt *running) setKey(client string, k *signer.Key) {
	mp := rt.clients[client]
	if mp == nil {
		return
	}
	fallback := ""
	if prev := mp.Key(); prev != nil && prev.KeyID != k.KeyID {
		fallback = prev.KeyID
	} else if fb := mp.FallbackKey(); fb != nil {
		fallback = fb.KeyID
	}
	_ = mp.SetKey(k)
	if fallback == k.KeyID {
		fallback = ""
	}
	// The ring reopens its keys at every change: take its current handle,
	// nil once it no longer holds the key.
	mp.SetFallbackKey(rt.ring.Key(client, fallback))
}

// ringClients is the key ring's view of the config's clients, with, for
// clients that rotate, what their rotation state adds: the keys the
// rotator made, the kid it made active, and no retired key. A key's expiry
// is the one its registration gave when the state knows it. A key of the
// state that owns refuses (one not in the client's rotation.new_keys) is
// an error: the state may have been written by someone else.
func ringClients(cfg *Config, baseDir string, states map[string]rotation.State, owns func(client string, spec signer.Spec) error) ([]keyring.Client, error) {
	timeout := time.Duration(cfg.Maskinporten.SignTimeout)
	var out []keyring.Client
	for i, c := range cfg.Clients {
		st := states[c.Name]
		registered := map[string]time.Time{}
		for _, r := range st.Registered {
			registered[r.KID] = r.Expires
		}
		expiry := func(kid string, configured time.Time) time.Time {
			if e, ok := registered[kid]; ok && !e.IsZero() {
				return e
			}
			return configured
		}
		active := st.ActiveKID(c.ActiveKey().KID)
		rc := keyring.Client{Name: c.Name}
		for _, kc := range c.KeyList() {
			if slices.Contains(st.Retired, kc.KID) && kc.KID != active {
				continue
			}
			expires, err := kc.Expiry()
			if err != nil {
				return nil, fmt.Errorf("clients[%d] (%s) key %q: expires: %w", i, c.Name, kc.KID, err)
			}
			rc.Keys = append(rc.Keys, keyring.Key{Spec: kc.Spec(baseDir, timeout), Active: kc.KID == active, Expires: expiry(kc.KID, expires)})
		}
		for _, mk := range st.Keys {
			if slices.ContainsFunc(rc.Keys, func(k keyring.Key) bool { return k.KeyID == mk.KID }) {
				return nil, fmt.Errorf("clients[%d] (%s): key %q is both in the config and made by the rotation", i, c.Name, mk.KID)
			}
			spec := signer.Spec{URI: mk.URI, KeyID: mk.KID, Algorithm: mk.Algorithm, BaseDir: baseDir, CallTimeout: timeout}
			if err := owns(c.Name, spec); err != nil {
				return nil, fmt.Errorf("clients[%d] (%s): %w", i, c.Name, err)
			}
			rc.Keys = append(rc.Keys, keyring.Key{Spec: spec, Active: mk.KID == active, Expires: expiry(mk.KID, time.Time{})})
		}
		if !slices.ContainsFunc(rc.Keys, func(k keyring.Key) bool { return k.Active }) {
			return nil, fmt.Errorf("clients[%d] (%s): the rotation state makes %q active, which is neither in the config nor made by the rotation", i, c.Name, active)
		}
		out = append(out, rc)
	}
	return out, nil
}

// fallbacks counts, per client, the tokens got with the fallback key.
func (rt *running) fallbacks() map[string]int64 {
	out := map[string]int64{}
	for name, c := range rt.clients {
		out[name] = c.Fallbacks()
	}
	return out
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
	if openKey == nil {
		openKey = keys.Open
	}
	kr, err := newKeyRotation(ctx, rotationEnv{cfg: cfg, baseDir: baseDir, log: log, http: httpClient, env: env, open: openKey, lookup: os.LookupEnv})
	if err != nil {
		return nil, err
	}
	if kr != nil {
		defer func() {
			if err != nil {
				kr.close()
			}
		}()
		if err := kr.load(ctx); err != nil {
			return nil, err
		}
	}
	rcs, err := ringClients(cfg, baseDir, kr.appliedSnapshot(), kr.owns)
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
		metrics: tel.metrics, rotation: kr, cfg: cfg, baseDir: baseDir}
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
	// A broker that starts during a rotation's grace period falls back to
	// the old key as one that switched to the new key does (setKey).
	for name, st := range kr.appliedSnapshot() {
		if f := st.Rotation; f != nil && f.Step == rotation.StepRetire && clients[name] != nil {
			clients[name].SetFallbackKey(ring.Key(name, f.Old))
		}
	}
	rt.closeShared = closeShared
	return rt, nil
}

// reload applies a new config to the running broker: every client's keys
// (the active one may change; the one active now must still be listed) and
// the policy. It changes nothing unless all of it loads: the policy is
// compiled and the keys opened before either is swapped in. Other changes
// need a restart, rotation and self_service among them.
func (rt *running) reload(ctx context.Context, cfg *Config, baseDir string) error {
	pol, err := cfg.policy()
	if err != nil {
		return err
	}
	rt.keysMu.Lock()
	defer rt.keysMu.Unlock()
	if err := sameRotation(rt.cfg, cfg); err != nil {
		return err
	}
	rcs, err := ringClients(cfg, baseDir, rt.rotation.appliedSnapshot(), rt.rotation.owns)
	if err != nil {
		return err
	}
	if err := rt.ring.Replace(ctx, rcs); err != nil {
		return err
	}
	rt.cfg, rt.baseDir = cfg, baseDir
	rt.broker.SetPolicy(pol)
	return nil
}

// applyRotation makes the key ring follow a client's new rotation state
// (the rotation's keys, its active key, no retired key), with the config in
// use for everything else and the other clients' keys as last applied: a
// state of another client that this replica could not apply is not tried
// again here.
func (rt *running) applyRotation(ctx context.Context, client string, st rotation.State) error {
	rt.keysMu.Lock()
	defer rt.keysMu.Unlock()
	states := rt.rotation.appliedSnapshot()
	// The rotator applies its state as it saves it, and the follower again
	// when it reads it, perhaps after a newer one: a state with the keys
	// the ring holds already costs no reopening, and an older one is not
	// applied over a newer one.
	if cur, ok := states[client]; ok && (st.Seq < cur.Seq || rotation.SameKeys(st, cur)) {
		if st.Seq > cur.Seq {
			rt.rotation.setApplied(client, st)
		}
		return nil
	}
	states[client] = st
	rcs, err := ringClients(rt.cfg, rt.baseDir, states, rt.rotation.owns)
	if err != nil {
		return err
	}
	if err := rt.ring.Replace(ctx, rcs); err != nil {
		return err
	}
	rt.rotation.setApplied(client, st)
	return nil
}

// signsWith returns the kid the key ring signs client's grants with now;
// "" when it has none.
func (rt *running) signsWith(client string) string {
	if k := rt.ring.Active(client); k != nil {
		return k.KeyID
	}
	return ""
}

// sameRotation refuses a reload that changes self_service or a client's
// rotation: the rotators were built from the config at start.
func sameRotation(old, next *Config) error {
	if !reflect.DeepEqual(old.SelfService, next.SelfService) {
		return errors.New("self_service: changing it needs a restart")
	}
	for i, c := range next.Clients {
		for _, o := range old.Clients {
			if o.Name == c.Name && !reflect.DeepEqual(o.Rotation, c.Rotation) {
				return fmt.Errorf("clients[%d] (%s).rotation: changing it needs a restart", i, c.Name)
			}
		}
	}
	return nil
}
