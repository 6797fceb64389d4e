package gcpkmssigner_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/gcpkmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// fakeKMS stands in for Cloud KMS, which cannot run here: it holds test key
// A as a RSA_SIGN_PKCS1_2048_SHA256 key version.
type fakeKMS struct {
	key   *rsa.PrivateKey
	algo  kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	calls int
	// deadline is the deadline of the last AsymmetricSign's context.
	deadline time.Time
}

var _ gcpkmssigner.API = (*fakeKMS)(nil)

func (f *fakeKMS) GetPublicKey(_ context.Context, r *kmspb.GetPublicKeyRequest, _ ...gax.CallOption) (*kmspb.PublicKey, error) {
	der, err := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &kmspb.PublicKey{Name: r.GetName(), Algorithm: f.algo, Pem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil
}

func (f *fakeKMS) AsymmetricSign(ctx context.Context, r *kmspb.AsymmetricSignRequest, _ ...gax.CallOption) (*kmspb.AsymmetricSignResponse, error) {
	f.calls++
	f.deadline, _ = ctx.Deadline()
	d := r.GetDigest().GetSha256()
	if d == nil {
		return nil, errors.New("fake: want a SHA-256 digest")
	}
	sig, err := rsa.SignPKCS1v15(rand.Reader, f.key, crypto.SHA256, d)
	return &kmspb.AsymmetricSignResponse{Signature: sig, Name: r.GetName()}, err
}

const name = "projects/p/locations/europe-north1/keyRings/r/cryptoKeys/mp/cryptoKeyVersions/1"

func TestParseURI(t *testing.T) {
	t.Parallel()
	if got, err := gcpkmssigner.ParseURI("gcpkms:" + name); err != nil || got != name {
		t.Fatalf("ParseURI = %q, %v", got, err)
	}
	for _, bad := range []string{"file:x", "gcpkms:", "gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k", "gcpkms:projects//locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"} {
		if _, err := gcpkmssigner.ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) accepted", bad)
		}
	}
}

func TestSignsThroughKMS(t *testing.T) {
	t.Parallel()
	f := &fakeKMS{key: signertest.RSA(t, signertest.KeyA), algo: kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256}
	key, err := gcpkmssigner.New(context.Background(), f, name, "gcp-a", signer.RS256, 0)
	if err != nil {
		t.Fatal(err)
	}
	signertest.Conformance(t, key)
	if f.calls != 1 || key.Backend != "gcpkms" {
		t.Errorf("%d sign calls, backend %q", f.calls, key.Backend)
	}
	if _, err := gcpkmssigner.New(context.Background(), f, name, "gcp-a", signer.RS512, 0); err == nil {
		t.Error("a SHA256 key version accepted for RS512")
	}
	f.algo = kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256
	if _, err := gcpkmssigner.New(context.Background(), f, name, "gcp-a", signer.RS256, 0); err == nil {
		t.Error("an EC key version accepted")
	}
}

// TestCallTimeout: the configured call timeout, not a built-in one, bounds
// each signature: an hour-long timeout gives the call a deadline further
// away than any default.
func TestCallTimeout(t *testing.T) {
	f := &fakeKMS{key: signertest.RSA(t, signertest.KeyA), algo: kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256}
	key, err := gcpkmssigner.New(context.Background(), f, "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1", "gcp-a", signer.RS256, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d := crypto.SHA256.New().Sum(nil)
	if _, err := key.Sign(rand.Reader, d); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(f.deadline); left < 30*time.Minute {
		t.Errorf("sign deadline %v away, want the configured hour", left)
	}
	if err := key.Close(); err != nil {
		t.Errorf("Close of a key whose client has no Close: %v", err)
	}
}
