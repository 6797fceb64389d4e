package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/filesigner"
	"github.com/tokenbroker/tokenbroker/server/metrics"
)

// parseSignerURI splits a key.signer URI into its backend and location.
// Supported: file:PATH, file:///ABSOLUTE/PATH.
func parseSignerURI(raw string) (backend, location string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "", "", fmt.Errorf("%q is not a URI such as file:mp-key.pem", raw)
	}
	switch u.Scheme {
	case "file":
		p := u.Opaque
		if p == "" {
			p = u.Path
		}
		if p == "" {
			return "", "", errors.New("file: URI without a path")
		}
		if u.Host != "" && u.Host != "localhost" {
			return "", "", fmt.Errorf("file URI with host %q: use file:PATH or file:///PATH", u.Host)
		}
		return "file", p, nil
	default:
		return "", "", fmt.Errorf("unsupported signer scheme %q (supported: file)", u.Scheme)
	}
}

// openKey loads the key a client's config names.
func openKey(k KeyConfig, baseDir string) (*signer.Key, error) {
	alg, err := signer.ParseAlgorithm(k.Algorithm)
	if err != nil {
		return nil, err
	}
	backend, loc, err := parseSignerURI(k.Signer)
	if err != nil {
		return nil, err
	}
	switch backend {
	case "file":
		var opts []filesigner.Option
		if k.AllowLoosePermissions {
			opts = append(opts, filesigner.AllowLoosePermissions())
		}
		return filesigner.Load(resolvePath(baseDir, loc), k.KID, alg, opts...)
	default:
		return nil, fmt.Errorf("unsupported signer backend %q", backend)
	}
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

func buildBroker(ctx context.Context, cfg *Config, baseDir string, log *slog.Logger, tel telemetry) (*broker.Broker, error) {
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
	for i, c := range cfg.Clients {
		key, err := openKey(c.Key, baseDir)
		if err != nil {
			return nil, fmt.Errorf("clients[%d] (%s).key: %w", i, c.Name, err)
		}
		var onAttempt func(time.Duration, error)
		if tel.metrics != nil {
			key.Signer = tel.metrics.TimeSigner(key.Backend, key.Signer)
			onAttempt = tel.metrics.ObserveAttempt(c.Name)
		}
		mp, err := maskinporten.New(maskinporten.Config{
			ClientID:         c.ClientID,
			Key:              key,
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
		bc.Clients = append(bc.Clients, broker.Client{Name: c.Name, Scopes: c.Scopes, Source: mp})
		expires, _ := c.Key.expiry()
		if tel.metrics != nil && !expires.IsZero() {
			tel.metrics.KeyExpiry(c.Name, key.KeyID, expires)
		}
		warnExpiry(ctx, log, c.Name, key.KeyID, expires)
		log.InfoContext(ctx, "client ready", slog.String("client", c.Name), slog.String("client_id", c.ClientID),
			slog.String("kid", key.KeyID), slog.String("backend", key.Backend), slog.String("algorithm", string(key.Algorithm)),
			slog.String("environment", env.Name), slog.String("token_url", env.TokenURL))
	}
	return broker.New(bc)
}
