// Package metrics exposes the broker's Prometheus metrics. Labels carry
// only bounded values (method, code, client name, MP code, backend,
// outcome): never a customer organisation, a caller identity or a token.
package metrics

import (
	"context"
	"crypto"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// Metrics holds the collectors and their registry.
type Metrics struct {
	reg       *prometheus.Registry
	rpcs      *prometheus.CounterVec
	rpcTime   *prometheus.HistogramVec
	grants    *prometheus.CounterVec
	upstream  *prometheus.HistogramVec
	sign      *prometheus.HistogramVec
	exchanges *prometheus.CounterVec
}

// New returns metrics registered in a fresh registry, with the Go runtime
// and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenbroker_grpc_requests_total", Help: "gRPC calls by method and status code.",
		}, []string{"method", "code"}),
		rpcTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenbroker_grpc_request_duration_seconds", Help: "gRPC call latency by method.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method"}),
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenbroker_maskinporten_grants_total",
			Help: "Grants sent to Maskinporten by client, outcome (ok, refused, failed, circuit_open) and MP code.",
		}, []string{"client", "outcome", "mp_code"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenbroker_upstream_request_duration_seconds", Help: "Latency of one request to an upstream (maskinporten).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"upstream", "client"}),
		exchanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenbroker_altinn_exchanges_total", Help: "Exchanges of Maskinporten tokens for Altinn tokens by outcome.",
		}, []string{"outcome"}),
		sign: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokenbroker_sign_duration_seconds", Help: "Latency of one signature by key backend.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"backend"}),
	}
	m.reg.MustRegister(m.rpcs, m.rpcTime, m.grants, m.upstream, m.sign, m.exchanges,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// UnaryInterceptor counts calls by method and code and times them.
func (m *Metrics) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		m.rpcs.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		m.rpcTime.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// ObserveAttempt returns the hook for maskinporten.Config.OnAttempt of the
// named client: one grant counted by outcome and MP code, and its latency.
func (m *Metrics) ObserveAttempt(client string) func(time.Duration, error) {
	return func(d time.Duration, err error) {
		outcome, code := "ok", ""
		var me *maskinporten.Error
		switch {
		case err == nil:
		case errors.As(err, &me) && me.CircuitOpen:
			outcome = "circuit_open"
		case errors.As(err, &me) && me.StatusCode >= 400 && me.StatusCode < 500 && me.StatusCode != 429:
			outcome, code = "refused", me.MPCode
		default:
			outcome = "failed"
		}
		m.grants.WithLabelValues(client, outcome, code).Inc()
		if outcome != "circuit_open" {
			m.upstream.WithLabelValues("maskinporten", client).Observe(d.Seconds())
		}
	}
}

// ObserveExchange returns the hook for altinn.Exchanger.OnExchange: the
// latency of each exchange, and its outcome in
// tokenbroker_altinn_exchanges_total.
func (m *Metrics) ObserveExchange() func(time.Duration, error) {
	return func(d time.Duration, err error) {
		outcome := "ok"
		if err != nil {
			outcome = "failed"
		}
		m.exchanges.WithLabelValues(outcome).Inc()
		m.upstream.WithLabelValues("altinn", "").Observe(d.Seconds())
	}
}

// TimeSigner wraps s so that each signature is timed under backend.
func (m *Metrics) TimeSigner(backend string, s crypto.Signer) crypto.Signer {
	return &timedSigner{Signer: s, obs: m.sign.WithLabelValues(backend)}
}

type timedSigner struct {
	crypto.Signer
	obs prometheus.Observer
}

func (t *timedSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	start := time.Now()
	sig, err := t.Signer.Sign(rand, digest, opts)
	t.obs.Observe(time.Since(start).Seconds())
	return sig, err
}

// Key is what the metrics show of one configured key.
type Key struct {
	Client, KeyID, Backend string
	// Active is true for the key that signs the client's grants.
	Active bool
	// Signing is false while the key's backend fails.
	Signing bool
	// Expires is when Maskinporten stops accepting the key; zero if
	// unknown.
	Expires time.Time
}

// ObserveKeys exports the keys that keys returns, read at each scrape so
// that a reload's keys replace the old ones: tokenbroker_key_up (1 while the
// backend signs), tokenbroker_key_active, and tokenbroker_key_expiry_seconds
// for keys whose expiry is known (negative once it has passed).
func (m *Metrics) ObserveKeys(keys func() []Key) {
	m.reg.MustRegister(keyCollector(keys))
}

var (
	descKeyUp = prometheus.NewDesc("tokenbroker_key_up",
		"1 while the key's signing backend signs, 0 while it fails.", []string{"client", "kid", "backend"}, nil)
	descKeyActive = prometheus.NewDesc("tokenbroker_key_active",
		"1 for the key that signs the client's grants, 0 for the others.", []string{"client", "kid"}, nil)
	descKeyExpiry = prometheus.NewDesc("tokenbroker_key_expiry_seconds",
		"Seconds until Maskinporten stops accepting the key.", []string{"client", "kid"}, nil)
)

type keyCollector func() []Key

func (c keyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descKeyUp
	ch <- descKeyActive
	ch <- descKeyExpiry
}

func (c keyCollector) Collect(ch chan<- prometheus.Metric) {
	for _, k := range c() {
		ch <- prometheus.MustNewConstMetric(descKeyUp, prometheus.GaugeValue, boolFloat(k.Signing), k.Client, k.KeyID, k.Backend)
		ch <- prometheus.MustNewConstMetric(descKeyActive, prometheus.GaugeValue, boolFloat(k.Active), k.Client, k.KeyID)
		if !k.Expires.IsZero() {
			ch <- prometheus.MustNewConstMetric(descKeyExpiry, prometheus.GaugeValue, time.Until(k.Expires).Seconds(), k.Client, k.KeyID)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ObserveBroker exports the broker's cache counters and each client's clock
// skew, read at scrape time.
func (m *Metrics) ObserveBroker(b *broker.Broker) {
	m.reg.MustRegister(&brokerCollector{b: b})
}

var (
	descCache = prometheus.NewDesc("tokenbroker_cache_events_total",
		"Cache events: hit, miss, refresh (background renewals started), eviction.", []string{"event"}, nil)
	descEntries  = prometheus.NewDesc("tokenbroker_cache_entries", "Keys in the token cache.", nil, nil)
	descInFlight = prometheus.NewDesc("tokenbroker_cache_fetches_in_flight", "Fetches from Maskinporten running now.", nil, nil)
	descSharedUp = prometheus.NewDesc("tokenbroker_shared_cache_up",
		"1 while the cache level shared with other replicas (Redis) is in use, 0 while this replica falls back to its own cache.", nil, nil)
	descShared = prometheus.NewDesc("tokenbroker_shared_cache_events_total",
		"Shared cache events: hit (token from Redis), fetch (made under the shared lock), wait (for another replica's fetch), fallback (fetch without Redis), outage, return.",
		[]string{"event"}, nil)
	descSkew = prometheus.NewDesc("tokenbroker_clock_skew_seconds",
		"Maskinporten's clock minus ours, from its last Date header.", []string{"client"}, nil)
)

type brokerCollector struct{ b *broker.Broker }

func (c *brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCache
	ch <- descEntries
	ch <- descInFlight
	ch <- descSkew
	ch <- descSharedUp
	ch <- descShared
}

func (c *brokerCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.b.Health()
	for event, v := range map[string]int64{"hit": h.Hits, "miss": h.Misses, "refresh": h.Refreshes, "eviction": h.Evictions} {
		ch <- prometheus.MustNewConstMetric(descCache, prometheus.CounterValue, float64(v), event)
	}
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(h.Entries))
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(h.InFlight))
	if s := h.Shared; s != nil {
		ch <- prometheus.MustNewConstMetric(descSharedUp, prometheus.GaugeValue, boolFloat(s.Up))
		for event, v := range map[string]int64{"hit": s.Hits, "fetch": s.Fetches, "wait": s.Waits, "fallback": s.Fallbacks,
			"outage": s.Outages, "return": s.Returns} {
			ch <- prometheus.MustNewConstMetric(descShared, prometheus.CounterValue, float64(v), event)
		}
	}
	for name, ch2 := range h.Clients {
		if ch2.ClockSkewKnown {
			ch <- prometheus.MustNewConstMetric(descSkew, prometheus.GaugeValue, ch2.ClockSkew.Seconds(), name)
		}
	}
}
