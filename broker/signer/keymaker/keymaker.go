// Package keymaker picks the backend that makes new signing keys for key
// rotation, from a location written like a key URI: its scheme picks the
// backend, the rest says where in that backend keys are made. Each backend
// parses its own location and makes and destroys its own keys (the Maker
// beside its Open); this package only picks one, as package keys does for
// opening keys.
//
// Locations, one per backend that can make keys:
//
//	file:keys/                         a directory; keys are <kid>.pem in it
//	pkcs11:token=tb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin
//	                                   a token; keys are labelled <kid>
//	awskms:?region=eu-north-1          an account and region; keys are alias/tokenbroker/<kid>
//	gcpkms:projects/P/locations/L/keyRings/R
//	                                   a key ring; keys are crypto keys tokenbroker-<kid>
//	azurekv:https://tb.vault.azure.net a vault; keys are named tokenbroker-<kid>
//
// grpc: (an external signer owns its keys) cannot make keys.
package keymaker

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/awskmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/azurekvsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/filesigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/gcpkmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/pkcs11signer"
)

// Maker makes new keys in one backend and destroys the ones it made; it is
// rotation.Maker.
type Maker interface {
	// Make makes the key named kid and returns the Spec that opens it
	// (with keys.Open). Called again with the same kid, it returns the key
	// it made before instead of making another.
	Make(ctx context.Context, kid string) (signer.Spec, error)
	// Destroy destroys or disables the key spec names, as far as the
	// backend allows; a key that is already gone is not an error. It
	// refuses a key this maker would not have made.
	Destroy(ctx context.Context, spec signer.Spec) error
	// Owns reports, with nil, whether spec names a key this maker makes
	// (one Destroy would take), and otherwise why not, without a PIN. It
	// calls no backend: a key stored in the rotation state is checked
	// with it before it is opened, so that whoever can write the state
	// cannot make the broker open a key elsewhere (a pkcs11: URI with
	// another module-path loads that module).
	Owns(spec signer.Spec) error
}

var _ rotation.Maker = Maker(nil)

// MakerConfig says where and how new keys are made.
type MakerConfig struct {
	// Location names where keys are made, in the style of a key URI; its
	// scheme picks the backend (see the package doc).
	Location string
	// Algorithm is the grant algorithm of the keys made; empty means RS256.
	Algorithm signer.Algorithm
	// Bits is the RSA modulus size: 2048 (when zero), 3072 or 4096.
	Bits int
	// BaseDir resolves a relative path in Location.
	BaseDir string
	// CallTimeout bounds each call to the backend, and is the CallTimeout
	// of the Specs made; zero means signer.DefaultCallTimeout.
	CallTimeout time.Duration
}

func (c MakerConfig) options() signer.MakeOptions {
	return signer.MakeOptions{Algorithm: c.Algorithm, Bits: c.Bits, BaseDir: c.BaseDir, CallTimeout: c.CallTimeout}
}

var schemeRE = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*):`)

// NewMaker returns the maker of the backend cfg.Location's scheme picks. It
// checks the whole config first (the cloud makers also build their SDK
// client, which reaches nothing yet); errors name the field that is wrong.
func NewMaker(cfg MakerConfig) (Maker, error) {
	opts, err := cfg.options().Normalize()
	if err != nil {
		return nil, err
	}
	m := schemeRE.FindStringSubmatch(cfg.Location)
	if m == nil {
		return nil, fmt.Errorf("location: %q is not a location such as file:keys/", cfg.Location)
	}
	switch scheme := m[1]; scheme {
	case "file":
		return filesigner.NewMaker(cfg.Location, opts)
	case "pkcs11":
		return pkcs11signer.NewMaker(cfg.Location, opts)
	case "awskms":
		return awskmssigner.NewMaker(cfg.Location, opts)
	case "gcpkms":
		return gcpkmssigner.NewMaker(cfg.Location, opts)
	case "azurekv":
		return azurekvsigner.NewMaker(cfg.Location, opts)
	case "grpc":
		return nil, fmt.Errorf("location: an external grpc: signer owns its keys; tokenbroker cannot make them (rotate them in the signer, or make keys in another backend)")
	default:
		return nil, fmt.Errorf("location: scheme %q cannot make keys (want file:, pkcs11:, awskms:, gcpkms: or azurekv:)", scheme)
	}
}
