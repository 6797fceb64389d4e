// Package azurekvsigner signs with an RSA key held in Azure Key Vault (or a
// Managed HSM), which signs the digest; the private key never leaves it.
// URI:
//
//	azurekv:https://<vault>.vault.azure.net/keys/<name>[/<version>]
//
// Credentials come from azidentity's DefaultAzureCredential (environment,
// workload identity, managed identity, Azure CLI).
package azurekvsigner

import (
	"context"
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// API is the part of the azkeys client this package uses.
type API interface {
	GetKey(ctx context.Context, name, version string, opts *azkeys.GetKeyOptions) (azkeys.GetKeyResponse, error)
	Sign(ctx context.Context, name, version string, params azkeys.SignParameters, opts *azkeys.SignOptions) (azkeys.SignResponse, error)
}

var _ API = (*azkeys.Client)(nil)

// URI is a parsed azurekv: URI.
type URI struct {
	VaultURL, Name, Version string
}

// ParseURI parses an azurekv: URI.
func ParseURI(raw string) (*URI, error) {
	rest, ok := strings.CutPrefix(raw, "azurekv:")
	if !ok {
		return nil, errors.New("not an azurekv: URI")
	}
	u, err := url.Parse(rest)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("azurekv URI: %q is not https://<vault>/keys/<name>[/<version>]", rest)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "keys" || parts[1] == "" {
		return nil, fmt.Errorf("azurekv URI: path %q is not /keys/<name>[/<version>]", u.Path)
	}
	out := &URI{VaultURL: "https://" + u.Host, Name: parts[1]}
	if len(parts) == 3 {
		out.Version = parts[2]
	}
	return out, nil
}

// Check parses the spec's azurekv: URI without calling Key Vault.
func Check(s signer.Spec) error {
	_, err := ParseURI(s.URI)
	return err
}

// Open connects with DefaultAzureCredential and returns the key. The azkeys
// client holds no connection that needs closing.
func Open(ctx context.Context, s signer.Spec) (*signer.Key, error) {
	u, err := ParseURI(s.URI)
	if err != nil {
		return nil, err
	}
	if s.KeyID == "" {
		return nil, errors.New("kid: required for an azurekv key")
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("azurekv: credentials: %w", err)
	}
	client, err := azkeys.NewClient(u.VaultURL, cred, nil)
	if err != nil {
		return nil, fmt.Errorf("azurekv: %w", err)
	}
	return New(ctx, client, u.Name, u.Version, s.KeyID, s.Algorithm, s.Timeout())
}

// New fetches the public key of the named key through api and returns a
// signer.Key; timeout bounds each call (zero means
// signer.DefaultCallTimeout).
func New(ctx context.Context, api API, name, version, kid string, alg signer.Algorithm, timeout time.Duration) (*signer.Key, error) {
	alg, err := signer.ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	timeout = signer.Spec{CallTimeout: timeout}.Timeout()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := api.GetKey(cctx, name, version, nil)
	if err != nil {
		return nil, fmt.Errorf("azurekv: key %s: %w", name, err)
	}
	k := resp.Key
	if k == nil || k.Kty == nil || (*k.Kty != azkeys.KeyTypeRSA && *k.Kty != azkeys.KeyTypeRSAHSM) || len(k.N) == 0 || len(k.E) == 0 {
		return nil, fmt.Errorf("azurekv: key %s is not an RSA key", name)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(k.N), E: int(new(big.Int).SetBytes(k.E).Int64())}
	return signer.New(kid, alg, &kvSigner{api: api, name: name, version: version, pub: pub, timeout: timeout}, "azurekv")
}

type kvSigner struct {
	api           API
	name, version string
	pub           *rsa.PublicKey
	timeout       time.Duration
}

func (s *kvSigner) Public() crypto.PublicKey { return s.pub }

func (s *kvSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg azkeys.SignatureAlgorithm
	switch opts.HashFunc() {
	case crypto.SHA256:
		alg = azkeys.SignatureAlgorithmRS256
	case crypto.SHA384:
		alg = azkeys.SignatureAlgorithmRS384
	case crypto.SHA512:
		alg = azkeys.SignatureAlgorithmRS512
	default:
		return nil, fmt.Errorf("azurekv: unsupported hash %v", opts.HashFunc())
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	resp, err := s.api.Sign(ctx, s.name, s.version, azkeys.SignParameters{Algorithm: &alg, Value: digest}, nil)
	if err != nil {
		return nil, fmt.Errorf("azurekv: sign with %s: %w", s.name, err)
	}
	return resp.Result, nil
}
