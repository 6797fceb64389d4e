// Package gcpkmssigner signs with an RSA key version held in Google Cloud
// KMS, which signs the digest; the private key never leaves KMS. URI:
//
//	gcpkms:projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/V
//
// Credentials come from Application Default Credentials. The key version's
// algorithm must be RSA_SIGN_PKCS1_<bits>_<hash> with the hash of the
// configured grant algorithm (RS256 needs ..._SHA256).
package gcpkmssigner

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// API is the part of the Cloud KMS client this package uses.
type API interface {
	GetPublicKey(context.Context, *kmspb.GetPublicKeyRequest, ...gax.CallOption) (*kmspb.PublicKey, error)
	AsymmetricSign(context.Context, *kmspb.AsymmetricSignRequest, ...gax.CallOption) (*kmspb.AsymmetricSignResponse, error)
}

var _ API = (*kms.KeyManagementClient)(nil)

// ParseURI returns the key version name of a gcpkms: URI.
func ParseURI(raw string) (string, error) {
	name, ok := strings.CutPrefix(raw, "gcpkms:")
	if !ok {
		return "", errors.New("not a gcpkms: URI")
	}
	parts := strings.Split(name, "/")
	if len(parts) != 10 || parts[0] != "projects" || parts[2] != "locations" || parts[4] != "keyRings" ||
		parts[6] != "cryptoKeys" || parts[8] != "cryptoKeyVersions" {
		return "", fmt.Errorf("gcpkms URI: %q is not projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/V", name)
	}
	for _, p := range parts {
		if p == "" {
			return "", errors.New("gcpkms URI: empty path segment")
		}
	}
	return name, nil
}

// Check parses the spec's gcpkms: URI without calling Cloud KMS.
func Check(s signer.Spec) error {
	_, err := ParseURI(s.URI)
	return err
}

// Open connects with Application Default Credentials and returns the key;
// its Close closes the KMS client.
func Open(ctx context.Context, s signer.Spec) (*signer.Key, error) {
	name, err := ParseURI(s.URI)
	if err != nil {
		return nil, err
	}
	if s.KeyID == "" {
		return nil, errors.New("kid: required for a gcpkms key")
	}
	client, err := kms.NewKeyManagementClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("gcpkms: %w", err)
	}
	k, err := New(ctx, client, name, s.KeyID, s.Algorithm, s.Timeout())
	if err != nil {
		client.Close()
		return nil, err
	}
	return k, nil
}

// New fetches the public key of key version name through api, checks its
// algorithm against alg, and returns a signer.Key; timeout bounds each call
// (zero means signer.DefaultCallTimeout). When api is an io.Closer, the
// key's Close closes it.
func New(ctx context.Context, api API, name, kid string, alg signer.Algorithm, timeout time.Duration) (*signer.Key, error) {
	alg, err := signer.ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	timeout = signer.Spec{CallTimeout: timeout}.Timeout()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pk, err := api.GetPublicKey(cctx, &kmspb.GetPublicKeyRequest{Name: name})
	if err != nil {
		return nil, fmt.Errorf("gcpkms: public key of %s: %w", name, err)
	}
	want := "_" + strings.Replace(alg.Hash().String(), "-", "", 1) // _SHA256
	a := pk.GetAlgorithm().String()
	if !strings.HasPrefix(a, "RSA_SIGN_PKCS1_") || !strings.HasSuffix(a, want) {
		return nil, fmt.Errorf("gcpkms: key %s has algorithm %s, want RSA_SIGN_PKCS1_*%s for %s", name, a, want, alg)
	}
	block, _ := pem.Decode([]byte(pk.GetPem()))
	if block == nil {
		return nil, fmt.Errorf("gcpkms: public key of %s is not PEM", name)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("gcpkms: public key of %s: %w", name, err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("gcpkms: key %s is %T, want RSA", name, pub)
	}
	return signer.New(kid, alg, &kmsSigner{api: api, name: name, pub: rsaPub, hash: alg.Hash(), timeout: timeout}, "gcpkms")
}

type kmsSigner struct {
	api  API
	name string
	pub  *rsa.PublicKey
	hash crypto.Hash

	timeout time.Duration
}

func (s *kmsSigner) Public() crypto.PublicKey { return s.pub }

// Close closes the KMS client when it has a Close.
func (s *kmsSigner) Close() error {
	if c, ok := s.api.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

func (s *kmsSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != s.hash {
		return nil, fmt.Errorf("gcpkms: key %s signs %v digests, not %v", s.name, s.hash, opts.HashFunc())
	}
	d := &kmspb.Digest{}
	switch s.hash {
	case crypto.SHA256:
		d.Digest = &kmspb.Digest_Sha256{Sha256: digest}
	case crypto.SHA384:
		d.Digest = &kmspb.Digest_Sha384{Sha384: digest}
	case crypto.SHA512:
		d.Digest = &kmspb.Digest_Sha512{Sha512: digest}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	resp, err := s.api.AsymmetricSign(ctx, &kmspb.AsymmetricSignRequest{Name: s.name, Digest: d})
	if err != nil {
		return nil, fmt.Errorf("gcpkms: sign with %s: %w", s.name, err)
	}
	return resp.GetSignature(), nil
}
