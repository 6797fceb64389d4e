package signer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DefaultCallTimeout bounds one call to a key backend (a signature, or
// fetching the public key at open) when Spec.CallTimeout is zero.
const DefaultCallTimeout = 5 * time.Second

// Spec says which key to open and how. Every backend takes the same Spec and
// reads its own URI; fields a backend has no use for are ignored, except
// that the file backend refuses a password for anything but PKCS#12.
type Spec struct {
	// URI names the key; its scheme picks the backend (file:, pkcs11:,
	// awskms:, gcpkms:, azurekv:, grpc:).
	URI string
	// KeyID is the kid registered at Maskinporten.
	KeyID string
	// Algorithm is the grant's JWS algorithm; empty means RS256.
	Algorithm Algorithm
	// BaseDir resolves relative paths in the URI (and the password file).
	BaseDir string
	// Password is where a PKCS#12 file's password comes from.
	Password PasswordSource
	// AllowLoosePermissions lets a key file be readable by group or others.
	AllowLoosePermissions bool
	// CallTimeout bounds each call to the backend; zero means
	// DefaultCallTimeout.
	CallTimeout time.Duration
}

// Timeout returns the spec's call timeout, DefaultCallTimeout when unset.
func (s Spec) Timeout() time.Duration {
	if s.CallTimeout > 0 {
		return s.CallTimeout
	}
	return DefaultCallTimeout
}

// Path resolves p against BaseDir unless it is absolute.
func (s Spec) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || s.BaseDir == "" {
		return p
	}
	return filepath.Join(s.BaseDir, p)
}

// Scheme returns the URI's scheme: the text before the first colon.
func (s Spec) Scheme() string {
	scheme, _, ok := strings.Cut(s.URI, ":")
	if !ok {
		return ""
	}
	return strings.ToLower(scheme)
}

// PasswordSource names where a password is read from: a file or an
// environment variable, never the config itself.
type PasswordSource struct {
	// File holds the password (one trailing newline is dropped); relative
	// to the spec's BaseDir.
	File string
	// Env names an environment variable holding the password.
	Env string
}

// IsZero reports whether no source is set.
func (p PasswordSource) IsZero() bool { return p.File == "" && p.Env == "" }

// Read returns the password. Errors name the config field and never the
// password.
func (p PasswordSource) Read(baseDir string) (string, error) {
	switch {
	case p.File != "" && p.Env != "":
		return "", errors.New("password_file and password_env: set one")
	case p.File != "":
		b, err := os.ReadFile(Spec{BaseDir: baseDir}.Path(p.File))
		if err != nil {
			return "", fmt.Errorf("password_file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case p.Env != "":
		pw, ok := os.LookupEnv(p.Env)
		if !ok {
			return "", fmt.Errorf("password_env: %s is not set", p.Env)
		}
		return pw, nil
	default:
		return "", errors.New("a PKCS#12 key needs password_file or password_env")
	}
}

// closer releases what a key holds, once.
type closer struct {
	once sync.Once
	fn   func() error
	err  error
}

func (c *closer) close() error {
	c.once.Do(func() {
		if c.fn != nil {
			c.err = c.fn()
		}
	})
	return c.err
}

// Close releases what the key holds in its backend: a PKCS#11 session, a
// gRPC connection, an SDK client. The key must not sign afterwards. Close
// is safe to call more than once and on a key whose backend holds nothing;
// later calls return the first call's result.
func (k *Key) Close() error {
	if k == nil || k.closer == nil {
		return nil
	}
	return k.closer.close()
}

// OnClose makes fn what Close calls (once). Backends whose signer is not
// itself an io.Closer use it; New already arranges it for those that are.
func (k *Key) OnClose(fn func() error) {
	k.closer = &closer{fn: fn}
}

// closerOf returns the Close of s when it has one.
func closerOf(s any) *closer {
	if c, ok := s.(io.Closer); ok {
		return &closer{fn: c.Close}
	}
	return nil
}
