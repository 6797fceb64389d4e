package azurekvsigner_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/azurekvsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const vault = "https://tb.vault.azure.net"

// keyVault stands in for a vault: named keys with versions, all holding
// test key A, answering 404 as Key Vault does.
type keyVault struct {
	key      *rsa.PrivateKey
	versions map[string][]string // name -> versions, newest last
	params   map[string]azkeys.CreateKeyParameters
	deleted  map[string]bool
}

var _ azurekvsigner.MakerAPI = (*keyVault)(nil)
var _ azurekvsigner.API = (*keyVault)(nil)

func newKeyVault(t *testing.T) *keyVault {
	return &keyVault{key: signertest.RSA(t, signertest.KeyA), versions: map[string][]string{},
		params: map[string]azkeys.CreateKeyParameters{}, deleted: map[string]bool{}}
}

func notFound() error {
	return &azcore.ResponseError{StatusCode: http.StatusNotFound, ErrorCode: "KeyNotFound"}
}

func (f *keyVault) jwk(name, version string) *azkeys.JSONWebKey {
	kty := *f.params[name].Kty
	id := azkeys.ID(vault + "/keys/" + name + "/" + version)
	return &azkeys.JSONWebKey{KID: &id, Kty: &kty, N: f.key.N.Bytes(), E: big.NewInt(int64(f.key.E)).Bytes()}
}

func (f *keyVault) GetKey(_ context.Context, name, version string, _ *azkeys.GetKeyOptions) (azkeys.GetKeyResponse, error) {
	vs := f.versions[name]
	if len(vs) == 0 || f.deleted[name] {
		return azkeys.GetKeyResponse{}, notFound()
	}
	if version == "" {
		version = vs[len(vs)-1]
	}
	var r azkeys.GetKeyResponse
	r.Key = f.jwk(name, version)
	r.Tags = f.params[name].Tags
	return r, nil
}

func (f *keyVault) CreateKey(_ context.Context, name string, p azkeys.CreateKeyParameters, _ *azkeys.CreateKeyOptions) (azkeys.CreateKeyResponse, error) {
	if f.deleted[name] {
		return azkeys.CreateKeyResponse{}, &azcore.ResponseError{StatusCode: http.StatusConflict}
	}
	f.params[name] = p
	f.versions[name] = append(f.versions[name], fmt.Sprintf("v%d", len(f.versions[name])+1))
	var r azkeys.CreateKeyResponse
	r.Key = f.jwk(name, f.versions[name][len(f.versions[name])-1])
	return r, nil
}

func (f *keyVault) DeleteKey(_ context.Context, name string, _ *azkeys.DeleteKeyOptions) (azkeys.DeleteKeyResponse, error) {
	if len(f.versions[name]) == 0 || f.deleted[name] {
		return azkeys.DeleteKeyResponse{}, notFound()
	}
	f.deleted[name] = true
	return azkeys.DeleteKeyResponse{}, nil
}

func (f *keyVault) Sign(_ context.Context, name, version string, p azkeys.SignParameters, _ *azkeys.SignOptions) (azkeys.SignResponse, error) {
	if f.deleted[name] {
		return azkeys.SignResponse{}, notFound()
	}
	sig, err := rsa.SignPKCS1v15(rand.Reader, f.key, crypto.SHA256, p.Value)
	var r azkeys.SignResponse
	r.Result = sig
	return r, err
}

// TestMaker: Make creates the key tokenbroker-<kid> once, with the size,
// type, operations and tag asked for, and returns its version; the Spec
// opens and signs; making the kid again adds no version; Destroy deletes
// the key, and again is fine.
func TestMaker(t *testing.T) {
	t.Parallel()
	const kid = "0b9d5f7e-3c1a-4e2b-9f6d-8a7c5e4d3b2a"
	f := newKeyVault(t)
	m, err := azurekvsigner.NewMakerWithAPI(f, "azurekv:"+vault+"/", signer.MakeOptions{Bits: 4096})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	name := "tokenbroker-" + kid
	if spec.URI != "azurekv:"+vault+"/keys/"+name+"/v1" || spec.KeyID != kid || spec.Algorithm != signer.RS256 {
		t.Errorf("spec %+v", spec)
	}
	p := f.params[name]
	if *p.Kty != azkeys.KeyTypeRSAHSM || *p.KeySize != 4096 || len(p.KeyOps) != 2 || *p.KeyOps[0] != azkeys.KeyOperationSign ||
		*p.KeyOps[1] != azkeys.KeyOperationVerify || *p.Tags[azurekvsigner.KIDTag] != kid {
		t.Errorf("created with %+v", p)
	}
	u, err := azurekvsigner.ParseURI(spec.URI)
	if err != nil {
		t.Fatal(err)
	}
	key, err := azurekvsigner.New(context.Background(), f, u.Name, u.Version, spec.KeyID, spec.Algorithm, spec.CallTimeout)
	if err != nil {
		t.Fatal(err)
	}
	signertest.Conformance(t, key)

	if again, err := m.Make(context.Background(), kid); err != nil || again != spec {
		t.Errorf("second Make = %+v, %v", again, err)
	}
	if n := len(f.versions[name]); n != 1 {
		t.Errorf("%d versions after two Makes, want 1", n)
	}

	for what, bad := range map[string]signer.Spec{
		"other kid":   {URI: spec.URI, KeyID: "other"},
		"other vault": {URI: strings.Replace(spec.URI, "tb.vault", "x.vault", 1), KeyID: kid},
		"other name":  {URI: strings.Replace(spec.URI, name, "mp-key", 1), KeyID: kid},
	} {
		if err := m.Destroy(context.Background(), bad); err == nil {
			t.Errorf("Destroy %s accepted", what)
		}
	}
	for range 2 {
		if err := m.Destroy(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
	}
	if !f.deleted[name] {
		t.Error("Destroy did not delete the key")
	}
	if _, err := azurekvsigner.New(context.Background(), f, u.Name, u.Version, kid, signer.RS256, 0); err == nil {
		t.Error("the destroyed key still opens")
	}
}

// TestMakerRefuses: locations that are no vault, and a key under the name
// that tokenbroker did not make.
func TestMakerRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ loc, want string }{
		{"azurekv:http://tb.vault.azure.net", "location:"},
		{"azurekv:" + vault + "/keys/k", "location:"},
		{"azurekv:" + vault + "?protection=cloud", "location: protection"},
		{"azurekv:" + vault + "?colour=red", "location: unknown query"},
	} {
		if _, err := azurekvsigner.NewMakerWithAPI(nil, tc.loc, signer.MakeOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMaker(%q) = %v, want %q", tc.loc, err, tc.want)
		}
	}
	f := newKeyVault(t)
	kty := azkeys.KeyTypeRSA
	f.CreateKey(context.Background(), "tokenbroker-foreign", azkeys.CreateKeyParameters{Kty: &kty}, nil)
	m, err := azurekvsigner.NewMakerWithAPI(f, "azurekv:"+vault+"?protection=software", signer.MakeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Make(context.Background(), "foreign"); err == nil || !strings.Contains(err.Error(), "did not make it") {
		t.Errorf("Make over a foreign key: %v", err)
	}
	if n := len(f.versions["tokenbroker-foreign"]); n != 1 {
		t.Errorf("%d versions of the foreign key, want 1", n)
	}
	if _, err := m.Make(context.Background(), "a.b"); err == nil || !strings.Contains(err.Error(), "kid") {
		t.Errorf("Make of a bad kid: %v", err)
	}
	if _, err := m.Make(context.Background(), "soft"); err != nil || *f.params["tokenbroker-soft"].Kty != azkeys.KeyTypeRSA {
		t.Errorf("protection=software made %+v, %v", f.params["tokenbroker-soft"], err)
	}
}
