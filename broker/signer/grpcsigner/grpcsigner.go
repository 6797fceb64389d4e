// Package grpcsigner connects the broker to an external signer process
// over the tokenbroker.signer.v1.SignerService protocol, and provides the
// server side of that protocol for any crypto.Signer. The key never leaves
// the signer process; a new key store needs only a SignerService.
//
// Signer URIs:
//
//	grpc:unix:/run/tokenbroker/signer.sock
//	grpc:signer.internal:7443?ca=ca.pem&cert=broker.pem&key=broker-key.pem[&key-id=mp-key]
//
// A unix socket is protected by its file mode; TCP requires mutual TLS.
package grpcsigner

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	signerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/signer/v1"
)

// Target is a parsed grpc: signer URI.
type Target struct {
	// Address is the gRPC target: "unix:/path" or "host:port".
	Address string
	// KeyID is the key's id at the signer; empty for its only key.
	KeyID string
	// CA, Cert and Key are files for mutual TLS (TCP only).
	CA, Cert, Key string
}

// ParseURI parses a grpc: signer URI. Relative file paths are resolved
// against baseDir.
func ParseURI(raw, baseDir string) (*Target, error) {
	rest, ok := strings.CutPrefix(raw, "grpc:")
	if !ok {
		return nil, errors.New("not a grpc: URI")
	}
	addr, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, errors.New("grpc signer URI: malformed query")
	}
	for k := range q {
		switch k {
		case "ca", "cert", "key", "key-id":
		default:
			return nil, fmt.Errorf("grpc signer URI: unknown query attribute %q", k)
		}
	}
	t := &Target{Address: addr, KeyID: q.Get("key-id"), CA: resolve(baseDir, q.Get("ca")), Cert: resolve(baseDir, q.Get("cert")), Key: resolve(baseDir, q.Get("key"))}
	switch {
	case addr == "":
		return nil, errors.New("grpc signer URI: no address (grpc:unix:/path or grpc:host:port)")
	case strings.HasPrefix(addr, "unix:"):
		if t.CA != "" || t.Cert != "" {
			return nil, errors.New("grpc signer URI: TLS files make no sense on a unix socket")
		}
		if p := strings.TrimPrefix(addr, "unix:"); p != "" && !strings.HasPrefix(p, "/") && baseDir != "" {
			t.Address = "unix:" + resolve(baseDir, p)
		}
	case t.CA == "" || t.Cert == "" || t.Key == "":
		return nil, errors.New("grpc signer URI: TCP needs mutual TLS: ca=, cert= and key=")
	}
	return t, nil
}

func resolve(baseDir, p string) string {
	if p == "" || strings.HasPrefix(p, "/") || baseDir == "" {
		return p
	}
	return baseDir + "/" + p
}

// Check parses the spec's grpc: URI without connecting.
func Check(s signer.Spec) error {
	_, err := ParseURI(s.URI, s.BaseDir)
	return err
}

// Open connects to the signer the spec's URI names; see Dial.
func Open(ctx context.Context, s signer.Spec) (*signer.Key, error) {
	t, err := ParseURI(s.URI, s.BaseDir)
	if err != nil {
		return nil, err
	}
	if s.KeyID == "" {
		return nil, errors.New("kid: required for a grpc signer key")
	}
	return Dial(ctx, t, s.KeyID, s.Algorithm, s.Timeout())
}

// Dial connects to the signer, fetches the public key (failing at once if
// the signer is unreachable or the key is not RSA) and returns a signer.Key
// that signs through it, each call bounded by timeout (zero means
// signer.DefaultCallTimeout). The connection reconnects by itself when the
// signer process restarts; the key's Close closes it.
func Dial(ctx context.Context, t *Target, kid string, alg signer.Algorithm, timeout time.Duration) (*signer.Key, error) {
	timeout = signer.Spec{CallTimeout: timeout}.Timeout()
	alg, err := signer.ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if t.CA != "" {
		if creds, err = clientTLS(t); err != nil {
			return nil, err
		}
	}
	conn, err := grpc.NewClient(t.Address,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("grpc signer %s: %w", t.Address, err)
	}
	c := &client{conn: conn, api: signerv1.NewSignerServiceClient(conn), keyID: t.KeyID, addr: t.Address, timeout: timeout}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.api.GetPublicKey(cctx, &signerv1.GetPublicKeyRequest{KeyId: t.KeyID}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("grpc signer %s: public key: %v", t.Address, status.Convert(err).Message())
	}
	pub, err := x509.ParsePKIXPublicKey(resp.GetPublicKeyDer())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("grpc signer %s: public key: %w", t.Address, err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("grpc signer %s: key is %T, want RSA", t.Address, pub)
	}
	c.pub = rsaPub
	k, err := signer.New(kid, alg, c, "grpc")
	if err != nil {
		conn.Close()
		return nil, err
	}
	return k, nil
}

func clientTLS(t *Target) (credentials.TransportCredentials, error) {
	caPEM, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("grpc signer ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("grpc signer ca: %s holds no PEM certificate", t.CA)
	}
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("grpc signer cert/key: %w", err)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), nil
}

// client is a crypto.Signer backed by a SignerService.
type client struct {
	conn  *grpc.ClientConn
	api   signerv1.SignerServiceClient
	keyID string
	addr  string
	pub   *rsa.PublicKey

	timeout time.Duration
}

func (c *client) Public() crypto.PublicKey { return c.pub }

// Close closes the connection to the signer.
func (c *client) Close() error { return c.conn.Close() }

func (c *client) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h, err := hashOf(opts.HashFunc())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	resp, err := c.api.Sign(ctx, &signerv1.SignRequest{KeyId: c.keyID, Digest: digest, Hash: h})
	if err != nil {
		return nil, fmt.Errorf("grpc signer %s: %s: %s", c.addr, status.Code(err), status.Convert(err).Message())
	}
	return resp.GetSignature(), nil
}

func hashOf(h crypto.Hash) (signerv1.Hash, error) {
	switch h {
	case crypto.SHA256:
		return signerv1.Hash_HASH_SHA256, nil
	case crypto.SHA384:
		return signerv1.Hash_HASH_SHA384, nil
	case crypto.SHA512:
		return signerv1.Hash_HASH_SHA512, nil
	default:
		return 0, fmt.Errorf("grpc signer: unsupported hash %v", h)
	}
}

// Service serves SignerService for one key.
type Service struct {
	signerv1.UnimplementedSignerServiceServer
	key *signer.Key
}

// NewService returns a SignerService signing with key; requests must name
// key.KeyID or no key.
func NewService(key *signer.Key) *Service { return &Service{key: key} }

func (s *Service) check(keyID string) error {
	if keyID != "" && keyID != s.key.KeyID {
		return status.Errorf(codes.NotFound, "key_id: no key %q here", keyID)
	}
	return nil
}

// GetPublicKey returns the key's public half as PKIX DER.
func (s *Service) GetPublicKey(_ context.Context, r *signerv1.GetPublicKeyRequest) (*signerv1.GetPublicKeyResponse, error) {
	if err := s.check(r.GetKeyId()); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(s.key.Signer.Public())
	if err != nil {
		return nil, status.Error(codes.Internal, "public key cannot be encoded")
	}
	return &signerv1.GetPublicKeyResponse{PublicKeyDer: der}, nil
}

// Sign signs the digest with PKCS#1 v1.5.
func (s *Service) Sign(_ context.Context, r *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	if err := s.check(r.GetKeyId()); err != nil {
		return nil, err
	}
	var h crypto.Hash
	switch r.GetHash() {
	case signerv1.Hash_HASH_SHA256:
		h = crypto.SHA256
	case signerv1.Hash_HASH_SHA384:
		h = crypto.SHA384
	case signerv1.Hash_HASH_SHA512:
		h = crypto.SHA512
	default:
		return nil, status.Error(codes.InvalidArgument, "hash: want SHA256, SHA384 or SHA512")
	}
	if len(r.GetDigest()) != h.Size() {
		return nil, status.Errorf(codes.InvalidArgument, "digest: %d bytes, want %d for %v", len(r.GetDigest()), h.Size(), h)
	}
	sig, err := s.key.Signer.Sign(nil, r.GetDigest(), h)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "signing failed: "+err.Error())
	}
	return &signerv1.SignResponse{Signature: sig}, nil
}
