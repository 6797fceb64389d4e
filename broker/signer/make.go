package signer

import (
	"fmt"
	"regexp"
	"time"
)

// MakeOptions say how a backend makes a new key (for key rotation): every
// backend's maker takes them beside its own location.
type MakeOptions struct {
	// Algorithm is the grant algorithm of the keys made; empty means RS256.
	Algorithm Algorithm
	// Bits is the RSA modulus size: 2048 (when zero), 3072 or 4096.
	Bits int
	// BaseDir resolves relative paths in the location.
	BaseDir string
	// CallTimeout bounds each call to the backend; zero means
	// DefaultCallTimeout. It is also the CallTimeout of the Specs made.
	CallTimeout time.Duration
}

// DefaultMakeBits is the RSA modulus size of a made key when
// MakeOptions.Bits is zero.
const DefaultMakeBits = 2048

// Normalize returns o with its defaults filled in, or an error naming the
// field that is wrong.
func (o MakeOptions) Normalize() (MakeOptions, error) {
	alg, err := ParseAlgorithm(string(o.Algorithm))
	if err != nil {
		return o, fmt.Errorf("algorithm: %w", err)
	}
	o.Algorithm = alg
	switch o.Bits {
	case 0:
		o.Bits = DefaultMakeBits
	case 2048, 3072, 4096:
	default:
		return o, fmt.Errorf("bits: %d is not 2048, 3072 or 4096", o.Bits)
	}
	if o.CallTimeout < 0 {
		return o, fmt.Errorf("call_timeout: %v is negative", o.CallTimeout)
	}
	return o, nil
}

// Spec returns the Spec of a made key: uri, kid and the options' algorithm,
// base directory and call timeout.
func (o MakeOptions) Spec(uri, kid string) Spec {
	return Spec{URI: uri, KeyID: kid, Algorithm: o.Algorithm, BaseDir: o.BaseDir, CallTimeout: o.CallTimeout}
}

// MaxMadeKIDLen is the longest kid a maker takes.
const MaxMadeKIDLen = 48

var madeKIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]*$`)

// CheckMadeKID checks that kid can name a key in every backend: a file
// name, a PKCS#11 label, part of an AWS alias, a Cloud KMS crypto key id
// and an Azure key name. It must be letters, digits and hyphens, start
// with a letter or digit and be at most MaxMadeKIDLen long; a UUID is.
func CheckMadeKID(kid string) error {
	if len(kid) > MaxMadeKIDLen || !madeKIDRE.MatchString(kid) {
		return fmt.Errorf("kid %q: want letters, digits and hyphens (a UUID), at most %d, starting with a letter or digit", kid, MaxMadeKIDLen)
	}
	return nil
}
