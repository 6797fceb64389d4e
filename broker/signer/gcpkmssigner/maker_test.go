package gcpkmssigner_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/gcpkmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// ringKMS stands in for a Cloud KMS key ring: crypto keys with one version
// each, all holding test key A, each version first PENDING_GENERATION for
// one look.
type ringKMS struct {
	key *rsa.PrivateKey

	mu       sync.Mutex
	keys     map[string]*kmspb.CryptoKey
	versions map[string]*kmspb.CryptoKeyVersion
	looks    map[string]int
	creates  int
}

var _ gcpkmssigner.MakerAPI = (*ringKMS)(nil)
var _ gcpkmssigner.API = (*ringKMS)(nil)

func newRingKMS(t *testing.T) *ringKMS {
	return &ringKMS{key: signertest.RSA(t, signertest.KeyA), keys: map[string]*kmspb.CryptoKey{},
		versions: map[string]*kmspb.CryptoKeyVersion{}, looks: map[string]int{}}
}

func (f *ringKMS) CreateCryptoKey(_ context.Context, r *kmspb.CreateCryptoKeyRequest, _ ...gax.CallOption) (*kmspb.CryptoKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := r.GetParent() + "/cryptoKeys/" + r.GetCryptoKeyId()
	if _, ok := f.keys[name]; ok {
		return nil, status.Error(codes.AlreadyExists, "exists")
	}
	f.creates++
	ck := r.GetCryptoKey()
	ck.Name = name
	f.keys[name] = ck
	f.versions[name+"/cryptoKeyVersions/1"] = &kmspb.CryptoKeyVersion{Name: name + "/cryptoKeyVersions/1",
		State: kmspb.CryptoKeyVersion_PENDING_GENERATION, Algorithm: ck.GetVersionTemplate().GetAlgorithm(),
		ProtectionLevel: ck.GetVersionTemplate().GetProtectionLevel()}
	return ck, nil
}

func (f *ringKMS) GetCryptoKey(_ context.Context, r *kmspb.GetCryptoKeyRequest, _ ...gax.CallOption) (*kmspb.CryptoKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ck, ok := f.keys[r.GetName()]; ok {
		return ck, nil
	}
	return nil, status.Error(codes.NotFound, "no key")
}

func (f *ringKMS) GetCryptoKeyVersion(_ context.Context, r *kmspb.GetCryptoKeyVersionRequest, _ ...gax.CallOption) (*kmspb.CryptoKeyVersion, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.versions[r.GetName()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no version")
	}
	if f.looks[r.GetName()]++; f.looks[r.GetName()] > 1 && v.State == kmspb.CryptoKeyVersion_PENDING_GENERATION {
		v.State = kmspb.CryptoKeyVersion_ENABLED
	}
	return v, nil
}

func (f *ringKMS) DestroyCryptoKeyVersion(_ context.Context, r *kmspb.DestroyCryptoKeyVersionRequest, _ ...gax.CallOption) (*kmspb.CryptoKeyVersion, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.versions[r.GetName()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no version")
	}
	if v.State != kmspb.CryptoKeyVersion_ENABLED && v.State != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Error(codes.FailedPrecondition, "not enabled or disabled")
	}
	v.State = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED
	return v, nil
}

func (f *ringKMS) GetPublicKey(_ context.Context, r *kmspb.GetPublicKeyRequest, _ ...gax.CallOption) (*kmspb.PublicKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.versions[r.GetName()]
	if !ok || v.State != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Error(codes.FailedPrecondition, "no enabled version")
	}
	der, err := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	return &kmspb.PublicKey{Name: r.GetName(), Algorithm: v.Algorithm, Pem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, err
}

func (f *ringKMS) AsymmetricSign(_ context.Context, r *kmspb.AsymmetricSignRequest, _ ...gax.CallOption) (*kmspb.AsymmetricSignResponse, error) {
	f.mu.Lock()
	v, ok := f.versions[r.GetName()]
	enabled := ok && v.State == kmspb.CryptoKeyVersion_ENABLED
	f.mu.Unlock()
	if !enabled {
		return nil, status.Error(codes.FailedPrecondition, "no enabled version")
	}
	d := r.GetDigest().GetSha256()
	if d == nil {
		return nil, status.Error(codes.InvalidArgument, "fake: want a SHA-256 digest")
	}
	sig, err := rsa.SignPKCS1v15(rand.Reader, f.key, signer.RS256.Hash(), d)
	return &kmspb.AsymmetricSignResponse{Signature: sig, Name: r.GetName()}, err
}

const ring = "projects/p/locations/europe-north1/keyRings/tb"
const kid = "0b9d5f7e-3c1a-4e2b-9f6d-8a7c5e4d3b2a"

// TestMaker: Make creates one crypto key per kid and waits for its version;
// the Spec it returns opens and signs; making the kid again creates
// nothing; Destroy schedules the version's destruction, once.
func TestMaker(t *testing.T) {
	t.Parallel()
	f := newRingKMS(t)
	m, err := gcpkmssigner.NewMakerWithAPI(f, "gcpkms:"+ring+"?protection=software", signer.MakeOptions{Bits: 3072})
	if err != nil {
		t.Fatal(err)
	}
	m.Poll = 0
	spec, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	want := ring + "/cryptoKeys/tokenbroker-" + kid + "/cryptoKeyVersions/1"
	if spec.URI != "gcpkms:"+want || spec.KeyID != kid || spec.Algorithm != signer.RS256 {
		t.Errorf("spec %+v", spec)
	}
	ck := f.keys[ring+"/cryptoKeys/tokenbroker-"+kid]
	if ck.GetPurpose() != kmspb.CryptoKey_ASYMMETRIC_SIGN || ck.GetLabels()[gcpkmssigner.KIDLabel] != kid ||
		ck.GetVersionTemplate().GetAlgorithm() != kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_3072_SHA256 ||
		ck.GetVersionTemplate().GetProtectionLevel() != kmspb.ProtectionLevel_SOFTWARE {
		t.Errorf("crypto key %v", ck)
	}
	name, err := gcpkmssigner.ParseURI(spec.URI)
	if err != nil {
		t.Fatal(err)
	}
	key, err := gcpkmssigner.New(context.Background(), f, name, spec.KeyID, spec.Algorithm, spec.CallTimeout)
	if err != nil {
		t.Fatal(err)
	}
	signertest.Conformance(t, key)

	if again, err := m.Make(context.Background(), kid); err != nil || again != spec {
		t.Errorf("second Make = %+v, %v", again, err)
	}
	if f.creates != 1 {
		t.Errorf("%d crypto keys created, want 1", f.creates)
	}

	for name, bad := range map[string]signer.Spec{
		"other kid":     {URI: spec.URI, KeyID: "other"},
		"other version": {URI: strings.Replace(spec.URI, "Versions/1", "Versions/2", 1), KeyID: kid},
		"other ring":    {URI: strings.Replace(spec.URI, "keyRings/tb", "keyRings/x", 1), KeyID: kid},
	} {
		if err := m.Destroy(context.Background(), bad); err == nil {
			t.Errorf("Destroy %s accepted", name)
		}
	}
	for range 2 {
		if err := m.Destroy(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
	}
	if s := f.versions[want].State; s != kmspb.CryptoKeyVersion_DESTROY_SCHEDULED {
		t.Errorf("after Destroy the version is %s", s)
	}
	if _, err := gcpkmssigner.New(context.Background(), f, name, kid, signer.RS256, 0); err == nil {
		t.Error("the destroyed key still opens")
	}
	if err := m.Destroy(context.Background(), m2spec(t, "1"+kid[1:])); err != nil {
		t.Errorf("Destroy of a key never made: %v", err)
	}
}

func m2spec(t *testing.T, kid string) signer.Spec {
	t.Helper()
	return signer.Spec{URI: "gcpkms:" + ring + "/cryptoKeys/tokenbroker-" + kid + "/cryptoKeyVersions/1", KeyID: kid}
}

// TestMakerRefuses: locations that are no key ring, and algorithm and size
// pairs Cloud KMS has no key for.
func TestMakerRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		loc  string
		opts signer.MakeOptions
		want string
	}{
		{"gcpkms:projects/p/locations/l", signer.MakeOptions{}, "location:"},
		{"gcpkms:" + ring + "/cryptoKeys/k", signer.MakeOptions{}, "location:"},
		{"gcpkms:" + ring + "?protection=external", signer.MakeOptions{}, "location: protection"},
		{"gcpkms:" + ring + "?colour=red", signer.MakeOptions{}, "location: unknown query"},
		{"gcpkms:" + ring, signer.MakeOptions{Algorithm: signer.RS384}, "algorithm: Cloud KMS cannot make RS384"},
		{"gcpkms:" + ring, signer.MakeOptions{Algorithm: signer.RS512, Bits: 2048}, "algorithm: Cloud KMS cannot make RS512 keys of 2048 bits"},
		{"gcpkms:" + ring, signer.MakeOptions{Bits: 1000}, "bits:"},
	} {
		if _, err := gcpkmssigner.NewMakerWithAPI(nil, tc.loc, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMaker(%q, %+v) = %v, want %q", tc.loc, tc.opts, err, tc.want)
		}
	}
	if _, err := gcpkmssigner.NewMakerWithAPI(nil, "gcpkms:"+ring, signer.MakeOptions{Algorithm: signer.RS512, Bits: 4096}); err != nil {
		t.Errorf("RS512 at 4096 bits: %v", err)
	}
	m, err := gcpkmssigner.NewMakerWithAPI(newRingKMS(t), "gcpkms:"+ring, signer.MakeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Make(context.Background(), "a_b"); err == nil || !strings.Contains(err.Error(), "kid") {
		t.Errorf("Make of a bad kid: %v", err)
	}
}
