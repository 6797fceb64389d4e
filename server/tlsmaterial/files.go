package tlsmaterial

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// FilesConfig names the files of the tls section.
type FilesConfig struct {
	// Cert is the server certificate chain (PEM, leaf first), Key its
	// private key, ClientCA the CA bundle of callers' certificates.
	Cert, Key, ClientCA string
	// Logger receives one line per change applied or refused; nil
	// discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Files is TLS material read from files and re-read when they change.
type Files struct {
	cfg FilesConfig
	cur atomic.Pointer[material]

	mu      sync.Mutex // serialises Reload
	seen    [sha256.Size]byte
	refused string // why the files last seen are not in use; "" when they are
}

// material is one consistent set: a certificate, its key and the roots.
type material struct {
	cert  *tls.Certificate
	roots *x509.CertPool
	info  CertInfo
}

// LoadFiles reads the files once; an error names the field (tls.cert,
// tls.key, tls.client_ca) and never holds key material.
func LoadFiles(c FilesConfig) (*Files, error) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	f := &Files{cfg: c}
	raw, digest, err := f.read()
	if err != nil {
		return nil, err
	}
	m, err := f.parse(raw)
	if err != nil {
		return nil, err
	}
	f.seen = digest
	f.cur.Store(m)
	return f, nil
}

// GetCertificate is tls.Config.GetCertificate: the certificate in use.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.cur.Load().cert, nil
}

// Roots returns the callers' CA bundle in use.
func (f *Files) Roots() *x509.CertPool { return f.cur.Load().roots }

// ServerConfig returns a TLS server config whose every handshake takes the
// certificate in use.
func (f *Files) ServerConfig() *tls.Config { return serverConfig(f.GetCertificate) }

// Status describes the certificate in use, and why changed files are not.
func (f *Files) Status() CertInfo {
	info := f.cur.Load().info
	f.mu.Lock()
	info.ReloadError = f.refused
	f.mu.Unlock()
	return info
}

// ErrUnchanged is returned by Reload when the files hold what was last
// seen.
var ErrUnchanged = errors.New("TLS files unchanged")

// Reload reads the files and, when their content differs from what was
// last seen, takes them into use whole, or keeps the material in use and
// returns why not. A refusal is logged the first time those contents are
// seen, not again. It returns ErrUnchanged when nothing changed.
func (f *Files) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	raw, digest, err := f.read()
	if err == nil && digest == f.seen {
		if f.refused != "" {
			return errors.New(f.refused)
		}
		return ErrUnchanged
	}
	var m *material
	if err == nil {
		m, err = f.parse(raw)
	}
	if err != nil {
		// A file that cannot be read has no digest; log its error once.
		if err.Error() != f.refused {
			f.cfg.Logger.Error("TLS files changed but cannot be used; keeping the certificate in use",
				slog.String("error", err.Error()), slog.String("serial", f.cur.Load().info.Serial))
		}
		f.refused = err.Error()
		// Files that could not be read have no digest: whatever is read
		// next counts as a change, even the set in use coming back.
		f.seen = digest
		return err
	}
	old := f.cur.Swap(m)
	f.seen, f.refused = digest, ""
	f.cfg.Logger.Info("TLS material reloaded", slog.String("subject", m.info.Subject),
		slog.String("serial", m.info.Serial), slog.Time("not_after", m.info.NotAfter),
		slog.String("previous_serial", old.info.Serial))
	return nil
}

// Watch calls Reload every interval until ctx ends. looked, when not nil,
// receives after each look (for tests, which wait on looks, not on time).
func (f *Files) Watch(ctx context.Context, every time.Duration, looked chan<- struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = f.Reload()
		if looked != nil {
			select {
			case looked <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// rawFiles is the content of the three files.
type rawFiles struct{ cert, key, ca []byte }

func (f *Files) read() (*rawFiles, [sha256.Size]byte, error) {
	var r rawFiles
	var err error
	if r.cert, err = os.ReadFile(f.cfg.Cert); err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("tls.cert: %w", err)
	}
	if r.key, err = os.ReadFile(f.cfg.Key); err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("tls.key: %w", err)
	}
	if r.ca, err = os.ReadFile(f.cfg.ClientCA); err != nil {
		return nil, [sha256.Size]byte{}, fmt.Errorf("tls.client_ca: %w", err)
	}
	h := sha256.New()
	for _, b := range [][]byte{r.cert, r.key, r.ca} {
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	var d [sha256.Size]byte
	copy(d[:], h.Sum(nil))
	return &r, d, nil
}

// parse checks the three files as one: every PEM block whole, the key
// matching the certificate, the certificate valid now, at least one CA.
func (f *Files) parse(r *rawFiles) (*material, error) {
	if _, err := pemCerts(r.cert); err != nil {
		return nil, fmt.Errorf("tls.cert: %s: %w", f.cfg.Cert, err)
	}
	if err := pemWhole(r.key); err != nil {
		return nil, fmt.Errorf("tls.key: %s: %w", f.cfg.Key, err)
	}
	pair, err := tls.X509KeyPair(r.cert, r.key)
	if err != nil {
		// The errors of X509KeyPair name the problem, never the key.
		return nil, fmt.Errorf("tls.key: %s does not go with tls.cert %s: %w", f.cfg.Key, f.cfg.Cert, err)
	}
	leaf := pair.Leaf
	now := f.cfg.Now()
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls.cert: %s expired at %s", f.cfg.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	cas, err := pemCerts(r.ca)
	if err != nil {
		return nil, fmt.Errorf("tls.client_ca: %s: %w", f.cfg.ClientCA, err)
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	return &material{cert: &pair, roots: roots, info: certInfo(SourceFiles, leaf, now)}, nil
}

// pemCerts parses a PEM file holding one or more certificates and nothing
// else.
func pemCerts(data []byte) ([]*x509.Certificate, error) {
	if err := pemWhole(data); err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("holds a %q PEM block, want only CERTIFICATE", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// pemWhole refuses data that is not a run of whole PEM blocks: a file
// caught while it is written ends in a block without its END line.
func pemWhole(data []byte) error {
	n := 0
	rest := data
	for {
		b, r := pem.Decode(rest)
		if b == nil {
			break
		}
		n++
		rest = r
	}
	switch {
	case n == 0:
		return errors.New("holds no PEM block (empty or not PEM)")
	case len(bytes.TrimSpace(rest)) > 0:
		return errors.New("ends in something that is not a whole PEM block (truncated?)")
	}
	return nil
}
