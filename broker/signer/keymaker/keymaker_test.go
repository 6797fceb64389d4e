package keymaker_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/awskmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/azurekvsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/filesigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/gcpkmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/pkcs11signer"
)

const kid = "0b9d5f7e-3c1a-4e2b-9f6d-8a7c5e4d3b2a"

// open opens spec with keys.Open, signs with it and checks the signature
// against its public key, and returns the key (closed when the test ends).
func open(t *testing.T, spec signer.Spec) *signer.Key {
	t.Helper()
	key, err := keys.Open(context.Background(), spec)
	if err != nil {
		t.Fatalf("open the made key: %v", err)
	}
	t.Cleanup(func() { key.Close() })
	if key.KeyID != spec.KeyID {
		t.Errorf("kid %q, want %q", key.KeyID, spec.KeyID)
	}
	h := key.Algorithm.Hash().New()
	h.Write([]byte("grant"))
	d := h.Sum(nil)
	sig, err := key.Sign(rand.Reader, d)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	if err := rsa.VerifyPKCS1v15(key.Signer.Public().(*rsa.PublicKey), key.Algorithm.Hash(), d, sig); err != nil {
		t.Fatalf("the signature does not verify: %v", err)
	}
	return key
}

// samePublic reports whether a and b have the same public key.
func samePublic(a, b *signer.Key) bool {
	return a.Signer.Public().(*rsa.PublicKey).Equal(b.Signer.Public())
}

// bits returns the modulus size of key.
func bits(key *signer.Key) int { return key.Signer.Public().(*rsa.PublicKey).N.BitLen() }

// wantErr fails unless err holds want.
func wantErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %v, want one with %q", what, err, want)
	}
}

func TestNewMakerRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		cfg  keymaker.MakerConfig
		want string
	}{
		{keymaker.MakerConfig{Location: "keys"}, "location:"},
		{keymaker.MakerConfig{Location: ""}, "location:"},
		{keymaker.MakerConfig{Location: "grpc:unix:/run/signer.sock"}, "location: an external grpc: signer owns its keys"},
		{keymaker.MakerConfig{Location: "vault:x"}, `location: scheme "vault" cannot make keys`},
		{keymaker.MakerConfig{Location: "file:" + dir, Algorithm: "ES256"}, "algorithm:"},
		{keymaker.MakerConfig{Location: "file:" + dir, Bits: 1024}, "bits: 1024"},
		{keymaker.MakerConfig{Location: "file:" + dir, CallTimeout: -1}, "call_timeout:"},
	} {
		if _, err := keymaker.NewMaker(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMaker(%+v) = %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
}

// TestNewMakerPicks: each scheme that can make keys gets its backend's
// maker, built without reaching the backend; the backend's own checks
// apply.
func TestNewMakerPicks(t *testing.T) {
	t.Parallel()
	pin := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pin, []byte("1234"), 0o600)
	for _, tc := range []struct {
		loc  string
		want any
	}{
		{"file:" + t.TempDir(), (*filesigner.Maker)(nil)},
		{"pkcs11:token=t?module-path=/m.so&pin-source=file:" + pin, (*pkcs11signer.Maker)(nil)},
		{"awskms:?region=eu-north-1", (*awskmssigner.Maker)(nil)},
		{"gcpkms:projects/p/locations/l/keyRings/r", (*gcpkmssigner.Maker)(nil)},
		{"azurekv:https://tb.vault.azure.net", (*azurekvsigner.Maker)(nil)},
	} {
		m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: tc.loc})
		if err != nil {
			t.Errorf("NewMaker(%q): %v", tc.loc, err)
			continue
		}
		if reflect.TypeOf(m) != reflect.TypeOf(tc.want) {
			t.Errorf("NewMaker(%q) = %T, want %T", tc.loc, m, tc.want)
		}
	}
	_, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "gcpkms:projects/p/locations/l/keyRings/r", Algorithm: signer.RS384})
	wantErr(t, "gcpkms RS384", err, "algorithm: Cloud KMS cannot make RS384")
	_, err = keymaker.NewMaker(keymaker.MakerConfig{Location: "azurekv:https://tb.vault.azure.net/keys/k"})
	wantErr(t, "azurekv key", err, "location:")
}
