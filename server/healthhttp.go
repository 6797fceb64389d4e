package server

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
)

// healthReport is the JSON body of /healthz. It holds no org number and no
// token.
type healthReport struct {
	Status   string                  `json:"status"`
	Clients  map[string]clientReport `json:"clients"`
	Cache    cacheReport             `json:"cache"`
	Keys     []KeyStatus             `json:"keys,omitempty"`
	TLS      *tlsReport              `json:"tls,omitempty"`
	Rotation []RotationStatus        `json:"rotation,omitempty"`
}

// KeyStatus describes one configured signing key for /healthz.
type KeyStatus struct {
	Client  string `json:"client"`
	KeyID   string `json:"kid"`
	Backend string `json:"backend"`
	Active  bool   `json:"active"`
	// Signing is false while the key's backend fails.
	Signing bool `json:"signing"`
	// Expires is when Maskinporten stops accepting the key, if known.
	Expires *time.Time `json:"expires,omitempty"`
	// ExpiresSoon is true within 30 days of Expires, or after it.
	ExpiresSoon bool `json:"expires_soon"`
}

type clientReport struct {
	// ClockSkewSeconds is Maskinporten's clock minus ours, from the Date
	// header of its last answer; absent before the first answer.
	ClockSkewSeconds  *float64 `json:"clock_skew_seconds,omitempty"`
	ClockSkewTooLarge bool     `json:"clock_skew_too_large"`
}

type cacheReport struct {
	Entries   int64 `json:"entries"`
	Hits      int64 `json:"hits"`
	Misses    int64 `json:"misses"`
	Refreshes int64 `json:"refreshes"`
	Evictions int64 `json:"evictions"`
	InFlight  int64 `json:"in_flight"`
	// Shared is the cache level shared with other replicas in Redis, when
	// configured; up is false while this replica falls back to its own
	// cache (status is then "degraded": tokens are still served).
	Shared *sharedReport `json:"shared,omitempty"`
}

type sharedReport struct {
	Up        bool  `json:"up"`
	Hits      int64 `json:"hits"`
	Fetches   int64 `json:"fetches"`
	Waits     int64 `json:"waits"`
	Fallbacks int64 `json:"fallbacks"`
	Outages   int64 `json:"outages"`
	Returns   int64 `json:"returns"`
}

// HealthReporter is what the operator endpoints need of the broker.
type HealthReporter interface {
	Health() broker.Health
}

// HTTPHandler serves the operator endpoints:
//   - /healthz: 200 with a JSON report of the broker's state (clock skew
//     per client, cache counts, the shared cache level); status
//     "degraded" when a client's clock skew exceeds broker.MaxClockSkew or
//     the shared cache fails (the broker still serves);
//   - /readyz: 200 while ready() is true (the gRPC health status is
//     SERVING), 503 otherwise;
//   - /metrics: metrics, when not nil.
//
// keys, when not nil, lists the signing keys for /healthz; status turns
// "degraded" when one expires soon or an active one does not sign. opts
// add more (WithTLS).
func HTTPHandler(b HealthReporter, ready func() bool, metrics http.Handler, keys func() []KeyStatus, opts ...HealthOption) http.Handler {
	var o healthOptions
	for _, opt := range opts {
		opt(&o)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if ready != nil && !ready() {
			http.Error(w, "not serving", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		h := b.Health()
		rep := healthReport{
			Status:  "ok",
			Clients: map[string]clientReport{},
			Cache: cacheReport{Entries: h.Entries, Hits: h.Hits, Misses: h.Misses,
				Refreshes: h.Refreshes, Evictions: h.Evictions, InFlight: h.InFlight},
		}
		if s := h.Shared; s != nil {
			rep.Cache.Shared = &sharedReport{Up: s.Up, Hits: s.Hits, Fetches: s.Fetches, Waits: s.Waits,
				Fallbacks: s.Fallbacks, Outages: s.Outages, Returns: s.Returns}
			if !s.Up {
				rep.Status = "degraded"
			}
		}
		for name, c := range h.Clients {
			cr := clientReport{ClockSkewTooLarge: c.ClockSkewTooLarge}
			if c.ClockSkewKnown {
				s := c.ClockSkew.Seconds()
				cr.ClockSkewSeconds = &s
			}
			if c.ClockSkewTooLarge {
				rep.Status = "degraded"
			}
			rep.Clients[name] = cr
		}
		if keys != nil {
			rep.Keys = keys()
			for _, k := range rep.Keys {
				if k.ExpiresSoon || (k.Active && !k.Signing) {
					rep.Status = "degraded"
				}
			}
		}
		if o.rotation != nil {
			rep.Rotation = o.rotation()
			for _, r := range rep.Rotation {
				if r.Failing || r.StateError != "" {
					rep.Status = "degraded"
				}
			}
		}
		if o.tls != nil {
			rep.TLS = newTLSReport(o.tls(), time.Now())
			if rep.TLS.ExpiresSoon {
				rep.Status = "degraded"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(rep)
	})
	return mux
}
