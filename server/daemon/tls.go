package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/metrics"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
)

// defaultTLSReloadInterval is how often TLS files are looked at unless
// tls.reload_interval says otherwise.
const defaultTLSReloadInterval = 10 * time.Second

// spiffeStartTimeout bounds the wait for the first SVID at start.
const spiffeStartTimeout = time.Minute

// check validates the tls section (when not insecure).
func (t TLSConfig) check() error {
	switch t.Source {
	case "", tlsmaterial.SourceFiles:
		if t.Cert == "" || t.Key == "" || t.ClientCA == "" {
			return errors.New("tls: cert, key and client_ca are required (or source: spiffe, or insecure: true on a loopback address)")
		}
		if t.SPIFFE != (SPIFFETLSConfig{}) {
			return errors.New("tls.spiffe: only used with tls.source: spiffe")
		}
	case tlsmaterial.SourceSPIFFE:
		if t.Cert != "" || t.Key != "" || t.ClientCA != "" {
			return errors.New("tls.source: spiffe takes the certificate and the CAs from the Workload API; remove tls.cert, tls.key and tls.client_ca")
		}
		if t.ReloadInterval != 0 {
			return errors.New("tls.reload_interval: only used with files (SPIFFE rotations arrive as they happen)")
		}
		if _, err := tlsmaterial.WorkloadAPIAddr("tls.spiffe.socket", t.SPIFFE.Socket); err != nil {
			return err
		}
	default:
		return fmt.Errorf("tls.source: %q, want files or spiffe", t.Source)
	}
	if t.ReloadInterval < 0 {
		return fmt.Errorf("tls.reload_interval: %v must not be negative (default %v)", time.Duration(t.ReloadInterval), defaultTLSReloadInterval)
	}
	return nil
}

// tlsSetup is the TLS side of the TCP listener: its credentials, how
// callers are authenticated, the certificate in use (for /healthz and the
// metrics), and what keeps the material current.
type tlsSetup struct {
	creds  credentials.TransportCredentials
	auth   server.Authenticator
	status func() tlsmaterial.CertInfo
	// watch keeps the material current until ctx ends.
	watch func(ctx context.Context)
	close func()
}

// metric is the certificate in use for metrics.ObserveTLS.
func (s *tlsSetup) metric() metrics.TLSCert {
	ci := s.status()
	return metrics.TLSCert{Source: ci.Source, NotBefore: ci.NotBefore, NotAfter: ci.NotAfter, ReloadFailing: ci.ReloadError != ""}
}

// openTLS reads the TLS material of the tls section: files, watched every
// tls.reload_interval, or the SPIFFE Workload API. Every new connection
// gets the material in use at its handshake.
func openTLS(ctx context.Context, c TLSConfig, baseDir string, log *slog.Logger, hooks Hooks) (*tlsSetup, error) {
	if c.Source == tlsmaterial.SourceSPIFFE {
		addr, err := tlsmaterial.WorkloadAPIAddr("tls.spiffe.socket", c.SPIFFE.Socket)
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, spiffeStartTimeout)
		defer cancel()
		src, err := tlsmaterial.NewSPIFFE(wctx, tlsmaterial.SPIFFEConfig{Addr: addr, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("tls.source spiffe: %w", err)
		}
		return &tlsSetup{
			creds: credentials.NewTLS(src.ServerConfig()), auth: server.SPIFFE(src), status: src.Status,
			watch: func(ctx context.Context) { src.Watch(ctx, hooks.SVIDUpdated) },
			close: func() { _ = src.Close() },
		}, nil
	}
	files, err := tlsmaterial.LoadFiles(tlsmaterial.FilesConfig{
		Cert: resolvePath(baseDir, c.Cert), Key: resolvePath(baseDir, c.Key), ClientCA: resolvePath(baseDir, c.ClientCA), Logger: log,
	})
	if err != nil {
		return nil, err
	}
	every := time.Duration(c.ReloadInterval)
	if every == 0 {
		every = defaultTLSReloadInterval
	}
	if hooks.TLSInterval > 0 {
		every = hooks.TLSInterval
	}
	return &tlsSetup{
		creds: credentials.NewTLS(files.ServerConfig()), auth: server.MTLSRoots(files.Roots), status: files.Status,
		watch: func(ctx context.Context) {
			// SIGHUP, which reloads keys and policy, also looks at once.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						_ = files.Reload()
					}
				}
			}()
			files.Watch(ctx, every, hooks.TLSLooked)
		},
		close: func() {},
	}, nil
}

// CheckTLS loads the TLS files for `tokenbroker check`; the SPIFFE
// source is only validated, as the Workload API answers only the workload
// itself.
func CheckTLS(c TLSConfig, baseDir string) (string, error) {
	if c.Source == tlsmaterial.SourceSPIFFE {
		addr, err := tlsmaterial.WorkloadAPIAddr("tls.spiffe.socket", c.SPIFFE.Socket)
		return "mTLS with SPIFFE SVIDs from " + addr, err
	}
	f, err := tlsmaterial.LoadFiles(tlsmaterial.FilesConfig{
		Cert: resolvePath(baseDir, c.Cert), Key: resolvePath(baseDir, c.Key), ClientCA: resolvePath(baseDir, c.ClientCA),
	})
	if err != nil {
		return "", err
	}
	st := f.Status()
	return fmt.Sprintf("mTLS, certificate %s serial %s expires %s", st.Subject, st.Serial, st.NotAfter.UTC().Format(time.RFC3339)), nil
}
