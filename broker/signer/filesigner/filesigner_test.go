package filesigner_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/filesigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// privateJWK returns key A as a private JWK in JSON, with kid if not empty.
func privateJWK(t *testing.T, kid string) []byte {
	t.Helper()
	k, err := jwk.FromRaw(signertest.RSA(t, signertest.KeyA))
	if err != nil {
		t.Fatal(err)
	}
	if kid != "" {
		if err := k.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFormats(t *testing.T) {
	t.Parallel()
	jwkA := privateJWK(t, "mp-kid")
	set, err := json.Marshal(map[string]any{"keys": []json.RawMessage{jwkA}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		data    []byte
		kid     string
		wantKID string
	}{
		{"pkcs1", signertest.PEM(t, "rsa-a.pkcs1.pem"), "k1", "k1"},
		{"pkcs8", signertest.PEM(t, "rsa-a.pkcs8.pem"), "k1", "k1"},
		{"jwk_own_kid", jwkA, "", "mp-kid"},
		{"jwk_same_kid", jwkA, "mp-kid", "mp-kid"},
		{"jwk_config_kid", privateJWK(t, ""), "k2", "k2"},
		{"jwk_set", set, "", "mp-kid"},
		{"base64_jwk", []byte(base64.StdEncoding.EncodeToString(jwkA) + "\n"), "", "mp-kid"},
		{"base64url_jwk", []byte(base64.RawURLEncoding.EncodeToString(jwkA)), "", "mp-kid"},
	}
	want := signertest.RSA(t, signertest.KeyA)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k, err := filesigner.Load(writeFile(t, tc.data), tc.kid, "")
			if err != nil {
				t.Fatal(err)
			}
			if k.KeyID != tc.wantKID || k.Algorithm != signer.RS256 || k.Backend != "file" {
				t.Errorf("key = %v, want kid %q RS256 file", k, tc.wantKID)
			}
			if !k.Signer.Public().(*rsa.PublicKey).Equal(&want.PublicKey) {
				t.Error("loaded a different key")
			}
			digest := sha256.Sum256([]byte("grant"))
			sig, err := k.Sign(nil, digest[:])
			if err != nil {
				t.Fatal(err)
			}
			if err := rsa.VerifyPKCS1v15(&want.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
				t.Errorf("signature does not verify: %v", err)
			}
		})
	}
}

func TestLoadRefuses(t *testing.T) {
	t.Parallel()
	pub, err := jwk.FromRaw(&signertest.RSA(t, signertest.KeyA).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubJSON, err := json.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	encrypted := "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
	tests := []struct {
		name string
		data []byte
		kid  string
		alg  signer.Algorithm
		want string
	}{
		{"empty", nil, "k", "", "empty"},
		{"garbage", []byte("not a key at all!"), "k", "", "neither PEM"},
		{"no_kid", signertest.PEM(t, "rsa-a.pkcs1.pem"), "", "", "no key id"},
		{"kid_mismatch", privateJWK(t, "mp-kid"), "other", "", "differs"},
		{"public_jwk", pubJSON, "k", "", "public JWK cannot sign"},
		{"ec_key", signertest.PEM(t, "ec-p256.pkcs8.pem"), "k", "", "want RSA"},
		{"small_key", signertest.PEM(t, "rsa-1024.pem"), "k", "", "at least 2048"},
		{"encrypted", []byte(encrypted), "k", "", "encrypted"},
		{"certificate", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), "k", "", "not a private key"},
		{"bad_alg", signertest.PEM(t, "rsa-a.pkcs1.pem"), "k", "ES256", "unsupported algorithm"},
		{"bad_base64_content", []byte(base64.StdEncoding.EncodeToString([]byte("hello"))), "k", "", "not a JWK"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, tc.data)
			_, err := filesigner.Load(path, tc.kid, tc.alg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error = %v, want one containing %q", err, tc.want)
			}
			if tc.name != "bad_alg" && !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), "MII") {
				t.Errorf("error %q leaks key bytes", err)
			}
		})
	}
}

func TestLoadPermissions(t *testing.T) {
	t.Parallel()
	path := writeFile(t, signertest.PEM(t, "rsa-a.pkcs8.pem"))
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := filesigner.Load(path, "k", ""); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: error %v, want a refusal", mode, err)
		}
		if _, err := filesigner.Load(path, "k", "", filesigner.AllowLoosePermissions()); err != nil {
			t.Errorf("mode %04o with AllowLoosePermissions: %v", mode, err)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := filesigner.Load(path, "k", ""); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := filesigner.Load(filepath.Join(t.TempDir(), "nope.pem"), "k", "")
	if err == nil || !strings.Contains(err.Error(), "nope.pem") {
		t.Fatalf("error = %v, want one naming the file", err)
	}
	_, err = filesigner.Load(t.TempDir(), "k", "")
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: error = %v", err)
	}
}

func TestPublicJWK(t *testing.T) {
	t.Parallel()
	k, err := filesigner.Load(writeFile(t, signertest.PEM(t, "rsa-a.pkcs8.pem")), "kid-x", signer.RS512)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["kid"] != "kid-x" || m["alg"] != "RS512" || m["use"] != "sig" || m["kty"] != "RSA" {
		t.Errorf("public JWK = %s", b)
	}
	if _, ok := m["d"]; ok {
		t.Errorf("public JWK holds the private exponent: %s", b)
	}
}

func TestLoadPKCS12(t *testing.T) {
	t.Parallel()
	p12, _ := signertest.EnterpriseCert(t, "991825827", "s3cret-pw")
	path := writeFile(t, p12)
	k, err := filesigner.LoadPKCS12(path, "s3cret-pw", "", signer.RS256)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Chain) != 2 || k.Chain[0].Subject.SerialNumber != "991825827" || !strings.HasPrefix(k.KeyID, "cert-") || k.NotAfter().IsZero() {
		t.Errorf("key %v chain %d", k, len(k.Chain))
	}
	if !k.Signer.Public().(*rsa.PublicKey).Equal(&signertest.RSA(t, signertest.KeyA).PublicKey) {
		t.Error("wrong key")
	}
	_, err = filesigner.LoadPKCS12(path, "wrong-pw", "", "")
	if err == nil || strings.Contains(err.Error(), "wrong-pw") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("wrong password: %v (must fail without showing a password)", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := filesigner.LoadPKCS12(path, "s3cret-pw", "", ""); err == nil {
		t.Error("a world-readable PKCS#12 file loaded")
	}
}
