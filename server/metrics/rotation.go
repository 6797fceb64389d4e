package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Rotation is what the metrics show of one client's key rotation.
type Rotation struct {
	Client string
	// Failing is true while the last rotation pass failed.
	Failing bool
	// FollowFailing is true while this replica cannot read, apply or
	// acknowledge the client's rotation state (it keeps the keys in use;
	// the rotation keeps the old key registered while it is alive).
	FollowFailing bool
	// Due is when the next rotation is due; zero if unknown.
	Due time.Time
	// Step is the step of a rotation under way; "" when none is.
	Step string
	// LastRotation is when a rotation last made a key active; zero if
	// never.
	LastRotation time.Time
	// Registered are the keys registered at Digdir with their expiry, as
	// last read (keys added by hand included).
	Registered []RegisteredKey
}

// RegisteredKey is one key registered on a client at Digdir.
type RegisteredKey struct {
	KeyID   string
	Expires time.Time
}

var (
	descRotFailing = prometheus.NewDesc("tokenbroker_key_rotation_failing",
		"1 while the client's last key rotation pass failed (see keys status and the log), else 0.", []string{"client"}, nil)
	descRotFollow = prometheus.NewDesc("tokenbroker_key_rotation_follow_failing",
		"1 while this replica cannot read, apply or acknowledge the client's rotation state (it keeps signing with the keys in use), else 0.",
		[]string{"client"}, nil)
	descRotDue = prometheus.NewDesc("tokenbroker_key_rotation_due_seconds",
		"Seconds until the client's next key rotation is due (negative when overdue).", []string{"client"}, nil)
	descRotStep = prometheus.NewDesc("tokenbroker_key_rotation_in_progress",
		"1 while a rotation of the client's key is under way, labelled with the step it is at.", []string{"client", "step"}, nil)
	descRotLast = prometheus.NewDesc("tokenbroker_key_rotation_last_timestamp_seconds",
		"Unix time when a rotation last made a new key of the client active.", []string{"client"}, nil)
	descRegExpiry = prometheus.NewDesc("tokenbroker_registered_key_expiry_seconds",
		"Seconds until Maskinporten stops accepting a key registered on the client at Digdir (keys added by hand included).",
		[]string{"client", "kid"}, nil)
)

// ObserveRotation exports the rotation state that rot returns, read at each
// scrape, and counts passes through the returned function (outcome is
// rotated, waiting, renewed, not_due, held or failed):
// tokenbroker_key_rotation_passes_total.
func (m *Metrics) ObserveRotation(rot func() []Rotation) func(client, outcome string) {
	passes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_key_rotation_passes_total",
		Help: "Key rotation passes by client and outcome (rotated, waiting, renewed, not_due, held, failed).",
	}, []string{"client", "outcome"})
	m.reg.MustRegister(passes, rotationCollector(rot))
	return func(client, outcome string) { passes.WithLabelValues(client, outcome).Inc() }
}

type rotationCollector func() []Rotation

func (c rotationCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRotFailing, descRotFollow, descRotDue, descRotStep, descRotLast, descRegExpiry} {
		ch <- d
	}
}

func (c rotationCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c() {
		ch <- prometheus.MustNewConstMetric(descRotFailing, prometheus.GaugeValue, boolFloat(r.Failing), r.Client)
		ch <- prometheus.MustNewConstMetric(descRotFollow, prometheus.GaugeValue, boolFloat(r.FollowFailing), r.Client)
		if !r.Due.IsZero() {
			ch <- prometheus.MustNewConstMetric(descRotDue, prometheus.GaugeValue, time.Until(r.Due).Seconds(), r.Client)
		}
		if r.Step != "" {
			ch <- prometheus.MustNewConstMetric(descRotStep, prometheus.GaugeValue, 1, r.Client, r.Step)
		}
		if !r.LastRotation.IsZero() {
			ch <- prometheus.MustNewConstMetric(descRotLast, prometheus.GaugeValue, float64(r.LastRotation.Unix()), r.Client)
		}
		for _, k := range r.Registered {
			if !k.Expires.IsZero() {
				ch <- prometheus.MustNewConstMetric(descRegExpiry, prometheus.GaugeValue, time.Until(k.Expires).Seconds(), r.Client, k.KeyID)
			}
		}
	}
}

var descFallbacks = prometheus.NewDesc("tokenbroker_key_fallbacks_total",
	"Tokens got with the key in use before the last switch, after Maskinporten did not know the active key's kid (yet).",
	[]string{"client"}, nil)

// ObserveFallbacks exports the count of fallbacks to the previous key per
// client that counts returns, read at each scrape.
func (m *Metrics) ObserveFallbacks(counts func() map[string]int64) {
	m.reg.MustRegister(fallbackCollector(counts))
}

type fallbackCollector func() map[string]int64

func (c fallbackCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descFallbacks }

func (c fallbackCollector) Collect(ch chan<- prometheus.Metric) {
	for client, n := range c() {
		ch <- prometheus.MustNewConstMetric(descFallbacks, prometheus.CounterValue, float64(n), client)
	}
}

var descSelfServiceCert = prometheus.NewDesc("tokenbroker_self_service_certificate_expiry_seconds",
	"Seconds until the business certificate of the self-service client expires; key rotation stops with it.", nil, nil)

// ObserveSelfServiceCertificate exports when the self-service client's
// business certificate expires, as notAfter returns it.
func (m *Metrics) ObserveSelfServiceCertificate(notAfter func() time.Time) {
	m.reg.MustRegister(certCollector(notAfter))
}

type certCollector func() time.Time

func (c certCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descSelfServiceCert }

func (c certCollector) Collect(ch chan<- prometheus.Metric) {
	if t := c(); !t.IsZero() {
		ch <- prometheus.MustNewConstMetric(descSelfServiceCert, prometheus.GaugeValue, time.Until(t).Seconds())
	}
}
