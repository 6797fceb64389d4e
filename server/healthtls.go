package server

import (
	"time"

	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
)

// HealthOption adds to what /healthz reports.
type HealthOption func(*healthOptions)

type healthOptions struct {
	tls      func() tlsmaterial.CertInfo
	rotation func() []RotationStatus
}

// WithTLS reports the server certificate that cert returns (the one in
// use) under "tls"; status turns "degraded" when less than a third of its
// lifetime remains (tlsmaterial.CertInfo.ExpiresSoon).
func WithTLS(cert func() tlsmaterial.CertInfo) HealthOption {
	return func(o *healthOptions) { o.tls = cert }
}

// tlsReport is the "tls" part of /healthz.
type tlsReport struct {
	tlsmaterial.CertInfo
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
	ExpiresSoon      bool    `json:"expires_soon"`
}

func newTLSReport(ci tlsmaterial.CertInfo, now time.Time) *tlsReport {
	return &tlsReport{CertInfo: ci, ExpiresInSeconds: ci.NotAfter.Sub(now).Seconds(), ExpiresSoon: ci.ExpiresSoon(now)}
}
