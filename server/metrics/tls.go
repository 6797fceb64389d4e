package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TLSCert is the server certificate in use, as the metrics show it.
type TLSCert struct {
	// Source is where it comes from: files or spiffe.
	Source string
	// NotBefore and NotAfter bound its validity.
	NotBefore, NotAfter time.Time
	// ReloadFailing is true while newer material (changed files) cannot be
	// used and this certificate stays in use.
	ReloadFailing bool
}

// ObserveTLS exports the server certificate that cert returns, read at
// each scrape so that a reload or an SVID rotation shows at once:
// tokenbroker_tls_certificate_expiry_seconds (negative once expired),
// tokenbroker_tls_certificate_lifetime_seconds (for alerts relative to
// the lifetime: an hour for an SVID, months for cert-manager) and
// tokenbroker_tls_reload_failing.
func (m *Metrics) ObserveTLS(cert func() TLSCert) {
	m.reg.MustRegister(tlsCollector(cert))
}

var (
	descTLSExpiry = prometheus.NewDesc("tokenbroker_tls_certificate_expiry_seconds",
		"Seconds until the server certificate in use expires.", []string{"source"}, nil)
	descTLSLifetime = prometheus.NewDesc("tokenbroker_tls_certificate_lifetime_seconds",
		"Validity period of the server certificate in use (not after - not before).", []string{"source"}, nil)
	descTLSFailing = prometheus.NewDesc("tokenbroker_tls_reload_failing",
		"1 while changed TLS files cannot be used and the previous certificate stays in use.", []string{"source"}, nil)
)

type tlsCollector func() TLSCert

func (c tlsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTLSExpiry
	ch <- descTLSLifetime
	ch <- descTLSFailing
}

func (c tlsCollector) Collect(ch chan<- prometheus.Metric) {
	t := c()
	ch <- prometheus.MustNewConstMetric(descTLSExpiry, prometheus.GaugeValue, time.Until(t.NotAfter).Seconds(), t.Source)
	ch <- prometheus.MustNewConstMetric(descTLSLifetime, prometheus.GaugeValue, t.NotAfter.Sub(t.NotBefore).Seconds(), t.Source)
	ch <- prometheus.MustNewConstMetric(descTLSFailing, prometheus.GaugeValue, boolFloat(t.ReloadFailing), t.Source)
}
