package maskinporten

import (
	"context"
	"net"
	"net/http"
	"time"
)

// TransportConfig configures NewHTTPClient. Zero fields take the defaults.
type TransportConfig struct {
	// ConnectTimeout bounds the TCP connect and the TLS handshake; 0
	// means 3 s. A black-holed address costs a hedge delay, not this:
	// the attempt is hedged and reported to the breaker first.
	ConnectTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an answer's headers once
	// the request is written; 0 means 10 s (the attempt timeout). It also
	// bounds calls made without a deadline (the vendor API).
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes a kept-alive connection idle this long; 0
	// means 30 s, so that connections are made (and the host resolved)
	// anew at least that often when traffic pauses.
	IdleConnTimeout time.Duration
	// FreshConnections makes every request open a new connection and close
	// it afterwards, as hedges need.
	FreshConnections bool
}

// NewHTTPClient returns the HTTP client for Maskinporten and Altinn.
//
//   - HTTP/1.1 only: each attempt owns its connection, so cancelling a hung
//     attempt (which hedging does) closes that connection and it is never
//     reused. Over HTTP/2 a cancelled stream leaves its connection in the
//     pool, and a connection that hangs stalls every stream on it. Token
//     requests are few and small; multiplexing buys nothing here.
//   - Connect, TLS handshake and response-header timeouts, and idle
//     connections closed after IdleConnTimeout.
//   - The host is resolved on every new connection (Go's resolver keeps no
//     cache), so a DNS change is followed as connections are renewed; see
//     CloseIdleEvery for busy pools.
func NewHTTPClient(cfg TransportConfig) *http.Client {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 3 * time.Second
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleConnTimeout <= 0 {
		cfg.IdleConnTimeout = 30 * time.Second
	}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 15 * time.Second}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ExpectContinueTimeout: time.Second,
		DisableKeepAlives:     cfg.FreshConnections,
		Protocols:             &protocols,
	}}
}

// CloseIdleEvery closes the idle connections of clients every interval
// until ctx ends, so that even a pool that never idles for
// IdleConnTimeout reconnects, and so re-resolves the host, that often.
func CloseIdleEvery(ctx context.Context, interval time.Duration, clients ...*http.Client) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, c := range clients {
				c.CloseIdleConnections()
			}
		}
	}
}
