// Package awskmssigner signs with an RSA key held in AWS KMS: the private key
// never leaves KMS, which signs the digest (MessageType DIGEST, PKCS#1 v1.5).
// The key is named by a URI:
//
//	awskms:<key id, alias/... or ARN>?region=eu-north-1[&endpoint=http://127.0.0.1:8080]
//
// Credentials come from the AWS SDK's default chain (environment, shared
// config, instance or pod identity). endpoint overrides the KMS endpoint (a
// local emulator, a VPC endpoint).
package awskmssigner

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// API is the part of the KMS client this package uses.
type API interface {
	GetPublicKey(context.Context, *kms.GetPublicKeyInput, ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
	Sign(context.Context, *kms.SignInput, ...func(*kms.Options)) (*kms.SignOutput, error)
}

var _ API = (*kms.Client)(nil)

// URI is a parsed awskms: URI.
type URI struct {
	KeyID, Region, Endpoint string
}

// ParseURI parses an awskms: URI.
func ParseURI(raw string) (*URI, error) {
	rest, ok := strings.CutPrefix(raw, "awskms:")
	if !ok {
		return nil, errors.New("not an awskms: URI")
	}
	id, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, errors.New("awskms URI: malformed query")
	}
	for k := range q {
		if k != "region" && k != "endpoint" {
			return nil, fmt.Errorf("awskms URI: unknown query attribute %q", k)
		}
	}
	u := &URI{KeyID: id, Region: q.Get("region"), Endpoint: q.Get("endpoint")}
	if u.KeyID == "" {
		return nil, errors.New("awskms URI: no key id (awskms:<key id or ARN>?region=...)")
	}
	if u.Endpoint != "" {
		if e, err := url.Parse(u.Endpoint); err != nil || (e.Scheme != "https" && e.Scheme != "http") || e.Host == "" {
			return nil, fmt.Errorf("awskms URI: endpoint %q is not an http(s) URL", u.Endpoint)
		}
	}
	return u, nil
}

// Check parses the spec's awskms: URI without calling KMS.
func Check(s signer.Spec) error {
	_, err := ParseURI(s.URI)
	return err
}

// Open builds a KMS client for the spec's URI, fetches the public key
// (failing at once for a wrong key id, region or credentials) and returns a
// signer.Key whose calls to KMS are bounded by the spec's call timeout. The
// SDK client holds no connection that needs closing.
func Open(ctx context.Context, s signer.Spec) (*signer.Key, error) {
	u, err := ParseURI(s.URI)
	if err != nil {
		return nil, err
	}
	if s.KeyID == "" {
		return nil, errors.New("kid: required for an awskms key")
	}
	var opts []func(*config.LoadOptions) error
	if u.Region != "" {
		opts = append(opts, config.WithRegion(u.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awskms: %w", err)
	}
	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
		if u.Endpoint != "" {
			o.BaseEndpoint = aws.String(u.Endpoint)
		}
	})
	return New(ctx, client, u.KeyID, s.KeyID, s.Algorithm, s.Timeout())
}

// New returns a signer.Key signing with keyID through api; timeout bounds
// each call (zero means signer.DefaultCallTimeout).
func New(ctx context.Context, api API, keyID, kid string, alg signer.Algorithm, timeout time.Duration) (*signer.Key, error) {
	alg, err := signer.ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	timeout = signer.Spec{CallTimeout: timeout}.Timeout()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := api.GetPublicKey(cctx, &kms.GetPublicKeyInput{KeyId: aws.String(keyID)})
	if err != nil {
		return nil, fmt.Errorf("awskms: public key of %s: %w", keyID, err)
	}
	if out.KeyUsage != types.KeyUsageTypeSignVerify {
		return nil, fmt.Errorf("awskms: key %s has usage %s, want SIGN_VERIFY", keyID, out.KeyUsage)
	}
	pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("awskms: public key of %s: %w", keyID, err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("awskms: key %s is %T, want RSA", keyID, pub)
	}
	return signer.New(kid, alg, &kmsSigner{api: api, keyID: keyID, pub: rsaPub, timeout: timeout}, "awskms")
}

type kmsSigner struct {
	api     API
	keyID   string
	pub     *rsa.PublicKey
	timeout time.Duration
}

func (s *kmsSigner) Public() crypto.PublicKey { return s.pub }

func (s *kmsSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg types.SigningAlgorithmSpec
	switch opts.HashFunc() {
	case crypto.SHA256:
		alg = types.SigningAlgorithmSpecRsassaPkcs1V15Sha256
	case crypto.SHA384:
		alg = types.SigningAlgorithmSpecRsassaPkcs1V15Sha384
	case crypto.SHA512:
		alg = types.SigningAlgorithmSpecRsassaPkcs1V15Sha512
	default:
		return nil, fmt.Errorf("awskms: unsupported hash %v", opts.HashFunc())
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	out, err := s.api.Sign(ctx, &kms.SignInput{KeyId: aws.String(s.keyID), Message: digest,
		MessageType: types.MessageTypeDigest, SigningAlgorithm: alg})
	if err != nil {
		return nil, fmt.Errorf("awskms: sign with %s: %w", s.keyID, err)
	}
	return out.Signature, nil
}
