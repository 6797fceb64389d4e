// Package signer defines the key handle the broker signs Maskinporten grants
// with: a crypto.Signer together with the key id (kid) registered at
// Maskinporten and the JWS algorithm. Backends (a key file, an HSM, a KMS)
// live in subpackages and all return a *Key; the private key never leaves the
// backend, and nothing in this package ever prints it.
package signer

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// Algorithm is a JWS algorithm Maskinporten accepts for grants.
type Algorithm string

// The algorithms Maskinporten lists for grants. RS256 is the default.
const (
	RS256 Algorithm = "RS256"
	RS384 Algorithm = "RS384"
	RS512 Algorithm = "RS512"
)

// MinRSABits is the smallest RSA modulus a key may have.
const MinRSABits = 2048

// ParseAlgorithm returns the algorithm named s; the empty string means RS256.
// It fails for any algorithm Maskinporten does not list.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch a := Algorithm(strings.ToUpper(strings.TrimSpace(s))); a {
	case "":
		return RS256, nil
	case RS256, RS384, RS512:
		return a, nil
	default:
		return "", fmt.Errorf("unsupported algorithm %q (want RS256, RS384 or RS512)", s)
	}
}

// Hash returns the hash function the algorithm signs over.
func (a Algorithm) Hash() crypto.Hash {
	switch a {
	case RS384:
		return crypto.SHA384
	case RS512:
		return crypto.SHA512
	default:
		return crypto.SHA256
	}
}

// JWA returns the algorithm as the jwx library names it.
func (a Algorithm) JWA() jwa.SignatureAlgorithm {
	return jwa.SignatureAlgorithm(a)
}

// Key is a signing key as the broker uses it. Signer performs the signature;
// for RSA keys it must produce PKCS#1 v1.5 signatures for the digest passed
// to Sign, as crypto/rsa does.
type Key struct {
	// KeyID is the kid registered with the key at Maskinporten.
	KeyID string
	// Algorithm is the JWS algorithm used for grants.
	Algorithm Algorithm
	// Signer holds the private key, or a handle to it.
	Signer crypto.Signer
	// Backend names where the key lives ("file", "memory", ...), for logs.
	Backend string
	// Chain, when not empty, is the key's certificate chain, leaf first
	// (an enterprise certificate, "virksomhetssertifikat"): grants then
	// carry it as x5c instead of a kid.
	Chain []*x509.Certificate

	closer *closer
}

// NotAfter returns the leaf certificate's expiry, or the zero time for a
// key without a certificate.
func (k *Key) NotAfter() time.Time {
	if len(k.Chain) == 0 {
		return time.Time{}
	}
	return k.Chain[0].NotAfter
}

// New checks that s holds an RSA key of at least MinRSABits and returns a
// Key for it. When s is an io.Closer, the key's Close closes it.
func New(kid string, alg Algorithm, s crypto.Signer, backend string) (*Key, error) {
	if strings.TrimSpace(kid) == "" {
		return nil, errors.New("key id (kid) is empty")
	}
	alg, err := ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	pub, ok := s.Public().(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key %q is %T, want an RSA key", kid, s.Public())
	}
	if pub.N.BitLen() < MinRSABits {
		return nil, fmt.Errorf("key %q has %d bits, want at least %d", kid, pub.N.BitLen(), MinRSABits)
	}
	return &Key{KeyID: kid, Algorithm: alg, Signer: s, Backend: backend, closer: closerOf(s)}, nil
}

// Sign signs digest, which must be the Algorithm's hash of the message.
func (k *Key) Sign(rand io.Reader, digest []byte) ([]byte, error) {
	return k.Signer.Sign(rand, digest, k.Algorithm.Hash())
}

// PublicJWK returns the public half of the key as a JWK with kid, alg and
// use=sig set: what is registered on the client at Maskinporten.
func (k *Key) PublicJWK() (jwk.Key, error) {
	pub, err := jwk.FromRaw(k.Signer.Public())
	if err != nil {
		return nil, fmt.Errorf("public key of %q: %w", k.KeyID, err)
	}
	for name, v := range map[string]any{
		jwk.KeyIDKey:     k.KeyID,
		jwk.AlgorithmKey: k.Algorithm.JWA(),
		jwk.KeyUsageKey:  jwk.ForSignature,
	} {
		if err := pub.Set(name, v); err != nil {
			return nil, fmt.Errorf("public key of %q: set %s: %w", k.KeyID, name, err)
		}
	}
	return pub, nil
}

// String names the key without revealing anything secret.
func (k *Key) String() string {
	return fmt.Sprintf("%s key %q (%s)", k.Backend, k.KeyID, k.Algorithm)
}
