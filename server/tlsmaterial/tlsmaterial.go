// Package tlsmaterial keeps the broker's TLS material current without a
// restart: the certificate and key it presents, and the roots that callers'
// certificates must chain to. Two sources supply it:
//
//   - Files (tls.cert, tls.key, tls.client_ca) are looked at on an interval
//     and re-read when their content changes. New files replace the
//     material in use only whole: the certificate parses, the key matches
//     it, the CA bundle parses, and nothing is truncated. Anything else
//     (a pair caught half-written, a key for another certificate) keeps
//     the material in use and is logged once.
//   - SPIFFE takes the X.509-SVID and the trust bundles (federated ones
//     included) from the SPIFFE Workload API, and follows every rotation
//     SPIRE makes.
//
// Both hand the TLS server a GetCertificate callback, so that every new
// connection gets the material in use at its handshake, and report the
// certificate in use (never its key) for /healthz and the metrics.
package tlsmaterial

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"time"
)

// Source names where the material comes from, as /healthz and the metrics
// show it.
const (
	SourceFiles  = "files"
	SourceSPIFFE = "spiffe"
)

// CertInfo describes the server certificate in use. It holds no key.
type CertInfo struct {
	// Source is SourceFiles or SourceSPIFFE.
	Source string `json:"source"`
	// Subject is the certificate's subject; SPIFFEID its SPIFFE ID, if any.
	Subject  string `json:"subject,omitempty"`
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Serial is the serial number in hex, Issuer the issuer's subject.
	Serial    string    `json:"serial"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Since is when this certificate was taken into use.
	Since time.Time `json:"since"`
	// ReloadError, when not empty, says why newer material (files that
	// changed) is not in use; the certificate above still is.
	ReloadError string `json:"reload_error,omitempty"`
}

// Lifetime is NotAfter - NotBefore.
func (c CertInfo) Lifetime() time.Duration { return c.NotAfter.Sub(c.NotBefore) }

// ExpiresSoon reports whether less than a third of the certificate's
// lifetime remains at now: past the point where cert-manager renews by
// default (and SPIRE, at half), so its renewal has failed.
func (c CertInfo) ExpiresSoon(now time.Time) bool {
	return c.NotAfter.Sub(now) < c.Lifetime()/3
}

func certInfo(source string, leaf *x509.Certificate, since time.Time) CertInfo {
	ci := CertInfo{
		Source: source, Subject: leaf.Subject.String(), Serial: hex.EncodeToString(leaf.SerialNumber.Bytes()),
		Issuer: leaf.Issuer.String(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Since: since,
	}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			ci.SPIFFEID = u.String()
		}
	}
	return ci
}

// serverConfig is the server side of both sources: the certificate comes
// from get at each handshake; a client certificate is requested but not
// verified here (the server's Authenticator verifies it per call, so that
// a missing or foreign one gets a clear Unauthenticated).
func serverConfig(get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		GetCertificate: get,
		ClientAuth:     tls.RequestClientCert,
		MinVersion:     tls.VersionTLS12,
	}
}
