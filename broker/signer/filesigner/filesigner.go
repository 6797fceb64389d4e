// Package filesigner loads an RSA signing key from a file: a PEM file
// (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY"), a private JWK as JSON
// (what Maskinporten's self-service hands out, alone or as the only key of a
// JWK set), or the same JWK base64-encoded. It is meant for development and
// for deployments where the key is a mounted secret.
//
// Errors name the file and the problem, never the key bytes.
package filesigner

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// MaxFileSize bounds the size of a key file.
const MaxFileSize = 1 << 20

// Option changes how Load reads a key file.
type Option func(*options)

type options struct{ loosePermissions bool }

// AllowLoosePermissions lets Load read a key file that group or others may
// read or write. Use it only where the file system itself is private.
func AllowLoosePermissions() Option { return func(o *options) { o.loosePermissions = true } }

// ParseURI returns the path of a file: URI: file:PATH (relative to the
// config file) or file:///ABSOLUTE/PATH.
func ParseURI(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "file" {
		return "", fmt.Errorf("%q is not a URI such as file:mp-key.pem", raw)
	}
	p := u.Opaque
	if p == "" {
		p = u.Path
	}
	if p == "" {
		return "", errors.New("file: URI without a path")
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("file URI with host %q: use file:PATH or file:///PATH", u.Host)
	}
	return p, nil
}

// Check parses the spec's file: URI without reading the file.
func Check(s signer.Spec) error {
	_, err := ParseURI(s.URI)
	return err
}

// Open reads the key file the spec names: a PKCS#12 file (.p12, .pfx) with
// the spec's password, or any other key file (which takes no password).
// The key holds nothing that needs closing.
func Open(_ context.Context, s signer.Spec) (*signer.Key, error) {
	p, err := ParseURI(s.URI)
	if err != nil {
		return nil, err
	}
	var opts []Option
	if s.AllowLoosePermissions {
		opts = append(opts, AllowLoosePermissions())
	}
	path := s.Path(p)
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".p12" || ext == ".pfx" {
		pw, err := s.Password.Read(s.BaseDir)
		if err != nil {
			return nil, err
		}
		return LoadPKCS12(path, pw, s.KeyID, s.Algorithm, opts...)
	}
	if !s.Password.IsZero() {
		return nil, errors.New("password_file/password_env: only PKCS#12 files (.p12, .pfx) take a password")
	}
	return Load(path, s.KeyID, s.Algorithm, opts...)
}

// Load reads the key file at path. kid is the key id registered at
// Maskinporten; it may be empty for a JWK that carries its own kid, and must
// match that kid when both are given. alg selects the grant algorithm (empty
// means RS256). A file that group or others may access is refused, unless
// AllowLoosePermissions is given.
func Load(path, kid string, alg signer.Algorithm, opts ...Option) (*signer.Key, error) {
	data, err := readKeyFile(path, opts)
	if err != nil {
		return nil, err
	}
	key, err := Parse(data, kid, alg)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return key, nil
}

// LoadPKCS12 reads a PKCS#12 file (.p12/.pfx: an enterprise certificate
// with its RSA key and chain) protected by password. The key signs grants
// with the chain as x5c. kid only names the key in logs and the cache; empty
// means "cert-" and the start of the leaf certificate's SHA-256.
func LoadPKCS12(path, password, kid string, alg signer.Algorithm, opts ...Option) (*signer.Key, error) {
	data, err := readKeyFile(path, opts)
	if err != nil {
		return nil, err
	}
	priv, leaf, cas, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		// The error says what failed (a wrong password, say), never the
		// password.
		return nil, fmt.Errorf("key file %s: PKCS#12: %v", path, err)
	}
	rk, ok := priv.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key file %s: PKCS#12 key is %T, want RSA", path, priv)
	}
	if !rk.PublicKey.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("key file %s: the certificate does not belong to the key", path)
	}
	if kid == "" {
		sum := sha256.Sum256(leaf.Raw)
		kid = "cert-" + hex.EncodeToString(sum[:8])
	}
	k, err := signer.New(kid, alg, rk, "file")
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	k.Chain = append([]*x509.Certificate{leaf}, cas...)
	return k, nil
}

// readKeyFile reads a key file after checking that it is a regular file of
// bounded size that group and others cannot access (unless allowed).
func readKeyFile(path string, opts []Option) ([]byte, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 && !o.loosePermissions {
		return nil, fmt.Errorf("key file %s: mode %04o lets group or others read it; chmod 600 it (or set key.allow_loose_permissions)", path, perm)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("key file %s: larger than %d bytes", path, MaxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	return data, nil
}

// Parse is Load for key material already in memory.
func Parse(data []byte, kid string, alg signer.Algorithm) (*signer.Key, error) {
	alg, err := signer.ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	priv, jwkKID, err := parseRSA(bytes.TrimSpace(data))
	if err != nil {
		return nil, err
	}
	switch {
	case kid == "" && jwkKID == "":
		return nil, errors.New("no key id: set kid in the config")
	case kid == "":
		kid = jwkKID
	case jwkKID != "" && jwkKID != kid:
		return nil, fmt.Errorf("the JWK's kid %q differs from the configured kid %q", jwkKID, kid)
	}
	if err := priv.Validate(); err != nil {
		return nil, errors.New("RSA key fails validation")
	}
	return signer.New(kid, alg, priv, "file")
}

// parseRSA recognises the format of data and returns the RSA private key and,
// for a JWK, its kid.
func parseRSA(data []byte) (*rsa.PrivateKey, string, error) {
	switch {
	case len(data) == 0:
		return nil, "", errors.New("empty")
	case bytes.HasPrefix(data, []byte("-----BEGIN")):
		k, err := parsePEM(data)
		return k, "", err
	case data[0] == '{':
		return parseJWK(data)
	default:
		raw, err := decodeBase64(data)
		if err != nil {
			return nil, "", errors.New("neither PEM, JWK JSON nor base64-encoded JWK")
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] != '{' {
			return nil, "", errors.New("base64 content is not a JWK")
		}
		return parseJWK(raw)
	}
}

func parsePEM(data []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("malformed PEM")
	}
	if _, encrypted := block.Headers["Proc-Type"]; encrypted || block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, errors.New("encrypted PEM keys are not supported; decrypt it or use another backend")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, errors.New("malformed PKCS#1 RSA key")
		}
		return k, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, errors.New("malformed PKCS#8 key")
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("PKCS#8 key is %T, want RSA", k)
		}
		return rk, nil
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key (want RSA PRIVATE KEY or PRIVATE KEY)", block.Type)
	}
}

// parseJWK accepts a single JWK or a JWK set holding exactly one key.
func parseJWK(data []byte) (*rsa.PrivateKey, string, error) {
	var probe struct {
		Keys json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, "", errors.New("malformed JWK JSON")
	}
	var key jwk.Key
	if probe.Keys != nil {
		set, err := jwk.Parse(data)
		if err != nil {
			return nil, "", errors.New("malformed JWK set")
		}
		if set.Len() != 1 {
			return nil, "", fmt.Errorf("JWK set holds %d keys, want exactly 1", set.Len())
		}
		key, _ = set.Key(0)
	} else {
		k, err := jwk.ParseKey(data)
		if err != nil {
			return nil, "", errors.New("malformed JWK")
		}
		key = k
	}
	if key.KeyType() != "RSA" {
		return nil, "", fmt.Errorf("JWK key type %q, want RSA", key.KeyType())
	}
	var priv rsa.PrivateKey
	if err := key.Raw(&priv); err != nil {
		return nil, "", errors.New("JWK is not an RSA private key (a public JWK cannot sign)")
	}
	return &priv, key.KeyID(), nil
}

func decodeBase64(data []byte) ([]byte, error) {
	s := strings.Join(strings.Fields(string(data)), "")
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(s); err == nil {
			return raw, nil
		}
	}
	return nil, errors.New("not base64")
}
