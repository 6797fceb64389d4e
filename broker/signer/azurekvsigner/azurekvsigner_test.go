package azurekvsigner_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/azurekvsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// fakeVault stands in for Azure Key Vault, which cannot run here.
type fakeVault struct {
	key   *rsa.PrivateKey
	calls int
	// deadline is the deadline of the last Sign's context.
	deadline time.Time
}

var _ azurekvsigner.API = (*fakeVault)(nil)

func (f *fakeVault) GetKey(_ context.Context, name, version string, _ *azkeys.GetKeyOptions) (azkeys.GetKeyResponse, error) {
	kty := azkeys.KeyTypeRSAHSM
	var r azkeys.GetKeyResponse
	r.Key = &azkeys.JSONWebKey{Kty: &kty, N: f.key.N.Bytes(), E: big.NewInt(int64(f.key.E)).Bytes()}
	return r, nil
}

func (f *fakeVault) Sign(ctx context.Context, name, version string, p azkeys.SignParameters, _ *azkeys.SignOptions) (azkeys.SignResponse, error) {
	f.calls++
	f.deadline, _ = ctx.Deadline()
	if p.Algorithm == nil || *p.Algorithm != azkeys.SignatureAlgorithmRS256 {
		return azkeys.SignResponse{}, fmt.Errorf("fake: want RS256, got %v", p.Algorithm)
	}
	sig, err := rsa.SignPKCS1v15(rand.Reader, f.key, crypto.SHA256, p.Value)
	var r azkeys.SignResponse
	r.Result = sig
	return r, err
}

func TestParseURI(t *testing.T) {
	t.Parallel()
	u, err := azurekvsigner.ParseURI("azurekv:https://tb.vault.azure.net/keys/mp-key/0123abc")
	if err != nil || u.VaultURL != "https://tb.vault.azure.net" || u.Name != "mp-key" || u.Version != "0123abc" {
		t.Fatalf("ParseURI = %+v, %v", u, err)
	}
	if u, err := azurekvsigner.ParseURI("azurekv:https://tb.vault.azure.net/keys/mp-key"); err != nil || u.Version != "" {
		t.Fatalf("without version: %+v, %v", u, err)
	}
	for _, bad := range []string{"file:x", "azurekv:http://tb.vault.azure.net/keys/k", "azurekv:https://tb.vault.azure.net/secrets/k", "azurekv:https://tb.vault.azure.net/keys/"} {
		if _, err := azurekvsigner.ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) accepted", bad)
		}
	}
}

func TestSignsThroughKeyVault(t *testing.T) {
	t.Parallel()
	f := &fakeVault{key: signertest.RSA(t, signertest.KeyA)}
	key, err := azurekvsigner.New(context.Background(), f, "mp-key", "", "az-a", signer.RS256, 0)
	if err != nil {
		t.Fatal(err)
	}
	signertest.Conformance(t, key)
	if f.calls != 1 || key.Backend != "azurekv" {
		t.Errorf("%d sign calls, backend %q", f.calls, key.Backend)
	}
}

// TestCallTimeout: the configured call timeout, not a built-in one, bounds
// each signature.
func TestCallTimeout(t *testing.T) {
	f := &fakeVault{key: signertest.RSA(t, signertest.KeyA)}
	key, err := azurekvsigner.New(context.Background(), f, "mp-key", "", "az-a", signer.RS256, time.Hour)
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
}
