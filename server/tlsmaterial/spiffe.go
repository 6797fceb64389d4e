package tlsmaterial

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// SocketEnv is the environment variable that names the Workload API
// socket when the config does not (the SPIFFE standard).
const SocketEnv = "SPIFFE_ENDPOINT_SOCKET"

// WorkloadAPIAddr returns the Workload API address to dial: configured
// when not empty, else $SPIFFE_ENDPOINT_SOCKET. An absolute path means a
// unix socket. It accepts unix:///ABSOLUTE/PATH and tcp://IP:PORT, as the
// SPIFFE Workload Endpoint standard does, and errors name field.
func WorkloadAPIAddr(field, configured string) (string, error) {
	addr := configured
	if addr == "" {
		addr = os.Getenv(SocketEnv)
		if addr == "" {
			return "", fmt.Errorf("%s: required when %s is not set (e.g. unix:///run/spire/sockets/agent.sock)", field, SocketEnv)
		}
		field = SocketEnv
	}
	if filepath.IsAbs(addr) {
		addr = "unix://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("%s: %q is not a URL: %v", field, addr, err)
	}
	switch {
	case u.Scheme == "unix" && u.Host == "" && filepath.IsAbs(u.Path) && u.RawQuery == "" && u.Fragment == "" && u.User == nil:
	case u.Scheme == "tcp" && net.ParseIP(u.Hostname()) != nil && u.Port() != "" && (u.Path == "" || u.Path == "/") && u.User == nil:
	default:
		return "", fmt.Errorf("%s: %q: want unix:///ABSOLUTE/PATH, an absolute path, or tcp://IP:PORT", field, addr)
	}
	return addr, nil
}

// SPIFFEConfig configures the SPIFFE source.
type SPIFFEConfig struct {
	// Addr is the Workload API address (see WorkloadAPIAddr).
	Addr string
	// Logger receives one line per rotation; nil discards.
	Logger *slog.Logger
}

// SPIFFE is TLS material from the SPIFFE Workload API: the broker's
// X.509-SVID, and the X.509 bundles of its trust domain and of the trust
// domains it federates with, all as the agent last delivered them.
type SPIFFE struct {
	src *workloadapi.X509Source
	log *slog.Logger

	mu    sync.Mutex
	info  CertInfo
	trust []string // trust domains with a bundle, for the log
}

// NewSPIFFE connects to the Workload API and waits, until ctx ends, for
// the first SVID and bundles. Run Watch to log rotations; Close when done.
func NewSPIFFE(ctx context.Context, c SPIFFEConfig) (*SPIFFE, error) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(c.Addr)))
	if err != nil {
		return nil, fmt.Errorf("SPIFFE Workload API at %s: %w", c.Addr, err)
	}
	s := &SPIFFE{src: src, log: c.Logger}
	if _, err := s.update(); err != nil {
		src.Close()
		return nil, err
	}
	return s, nil
}

// Close drops the connection to the Workload API.
func (s *SPIFFE) Close() error { return s.src.Close() }

// GetCertificate is tls.Config.GetCertificate: the SVID in use.
func (s *SPIFFE) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	return svidCertificate(svid), nil
}

// GetX509SVID implements x509svid.Source (for clients of the broker's own
// outbound calls and for tests).
func (s *SPIFFE) GetX509SVID() (*x509svid.SVID, error) { return s.src.GetX509SVID() }

// GetX509BundleForTrustDomain implements x509bundle.Source: the bundle of
// a trust domain the agent delivers (the broker's own or a federated one).
func (s *SPIFFE) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.src.GetX509BundleForTrustDomain(td)
}

// ServerConfig returns a TLS server config whose every handshake takes
// the SVID in use.
func (s *SPIFFE) ServerConfig() *tls.Config { return serverConfig(s.GetCertificate) }

// Status describes the SVID in use.
func (s *SPIFFE) Status() CertInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// Watch logs every update the agent sends (a new SVID, new bundles) until
// ctx ends. updated, when not nil, receives the status after each (for
// tests, which wait on updates, not on time).
func (s *SPIFFE) Watch(ctx context.Context, updated chan<- CertInfo) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.src.Updated():
		}
		info, err := s.update()
		if err != nil {
			s.log.Error("SPIFFE Workload API update unusable; keeping the SVID in use", slog.String("error", err.Error()))
			continue
		}
		if updated != nil {
			select {
			case updated <- info:
			case <-ctx.Done():
				return
			}
		}
	}
}

// update records the SVID and bundles the source holds now, logging what
// changed.
func (s *SPIFFE) update() (CertInfo, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return CertInfo{}, err
	}
	if len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return CertInfo{}, errors.New("SPIFFE Workload API: an SVID without certificate or key")
	}
	trust := s.trustDomains(svid.ID.TrustDomain())
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.info
	info := certInfo(SourceSPIFFE, svid.Certificates[0], time.Now())
	if prev.Serial == info.Serial {
		info.Since = prev.Since
	} else {
		s.log.Info("X.509-SVID in use", slog.String("spiffe_id", info.SPIFFEID), slog.String("serial", info.Serial),
			slog.String("issuer", info.Issuer), slog.Time("not_after", info.NotAfter), slog.String("previous_serial", prev.Serial))
	}
	if strings.Join(trust, ",") != strings.Join(s.trust, ",") {
		s.log.Info("SPIFFE trust bundles", slog.Any("trust_domains", trust))
	}
	s.info, s.trust = info, trust
	return info, nil
}

// trustDomains lists the broker's own trust domain with the number of its
// CAs; go-spiffe's source does not enumerate federated ones.
func (s *SPIFFE) trustDomains(own spiffeid.TrustDomain) []string {
	b, err := s.src.GetX509BundleForTrustDomain(own)
	if err != nil {
		return nil
	}
	return []string{fmt.Sprintf("%s (%d CA)", own.Name(), len(b.X509Authorities()))}
}

// svidCertificate turns an SVID into the tls.Certificate presented.
func svidCertificate(svid *x509svid.SVID) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}
