// Package keys is the one place that maps a key URI's scheme to the backend
// that opens it: file:, pkcs11:, awskms:, gcpkms:, azurekv: and grpc:. Each
// backend parses its own URI; this package only picks it.
package keys

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/awskmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/azurekvsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/filesigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/gcpkmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/grpcsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/pkcs11signer"
)

// Backend opens the keys of one URI scheme.
type Backend struct {
	// Check parses the spec's URI without opening anything.
	Check func(signer.Spec) error
	// Open opens the key. The caller closes it.
	Open func(context.Context, signer.Spec) (*signer.Key, error)
}

// backends maps each URI scheme to its backend.
var backends = map[string]Backend{
	"file":    {filesigner.Check, filesigner.Open},
	"pkcs11":  {pkcs11signer.Check, pkcs11signer.Open},
	"awskms":  {awskmssigner.Check, awskmssigner.Open},
	"gcpkms":  {gcpkmssigner.Check, gcpkmssigner.Open},
	"azurekv": {azurekvsigner.Check, azurekvsigner.Open},
	"grpc":    {grpcsigner.Check, grpcsigner.Open},
}

// Schemes lists the supported URI schemes, sorted.
func Schemes() []string {
	var out []string
	for s := range backends {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

var schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

// For returns the backend for the spec's URI scheme.
func For(s signer.Spec) (Backend, error) {
	if !schemeRE.MatchString(s.URI) {
		return Backend{}, fmt.Errorf("%q is not a URI such as file:mp-key.pem", s.URI)
	}
	b, ok := backends[s.Scheme()]
	if !ok {
		return Backend{}, fmt.Errorf("unsupported signer scheme %q (supported: %s)", s.Scheme(), strings.Join(Schemes(), ", "))
	}
	return b, nil
}

// Check parses the spec's algorithm and URI without opening the key.
func Check(s signer.Spec) error {
	if _, err := signer.ParseAlgorithm(string(s.Algorithm)); err != nil {
		return err
	}
	b, err := For(s)
	if err != nil {
		return err
	}
	return b.Check(s)
}

// Open opens the key the spec names with the backend its scheme picks. The
// caller must Close the key when done with it.
func Open(ctx context.Context, s signer.Spec) (*signer.Key, error) {
	if _, err := signer.ParseAlgorithm(string(s.Algorithm)); err != nil {
		return nil, err
	}
	b, err := For(s)
	if err != nil {
		return nil, err
	}
	return b.Open(ctx, s)
}
