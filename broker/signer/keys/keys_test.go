package keys_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// TestCheckPicksTheBackend: each scheme reaches its own backend's parser
// (the error is the backend's), and anything else is refused by name.
func TestCheckPicksTheBackend(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ uri, want string }{
		{"mp-key.pem", "is not a URI such as file:mp-key.pem"},
		{"vault:secret/mp", `unsupported signer scheme "vault" (supported: awskms, azurekv, file, gcpkms, grpc, pkcs11)`},
		{"file:", "file: URI without a path"},
		{"file://host/x.pem", `file URI with host "host"`},
		{"pkcs11:token=t;object=o", "module-path is required"},
		{"awskms:", "no key id"},
		{"gcpkms:projects/p", "is not projects/P/locations/L"},
		{"azurekv:http://v/keys/k", "is not https://"},
		{"grpc:", "no address"},
	} {
		err := keys.Check(signer.Spec{URI: tc.uri})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%q) = %v, want %q", tc.uri, err, tc.want)
		}
	}
	if err := keys.Check(signer.Spec{URI: "file:k.pem", Algorithm: "ES256"}); err == nil || !strings.Contains(err.Error(), "unsupported algorithm") {
		t.Errorf("Check with ES256 = %v", err)
	}
	for _, ok := range []string{"file:k.pem", "file:///etc/k.pem", "awskms:alias/mp?region=eu-north-1",
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
		"azurekv:https://v.vault.azure.net/keys/k", "grpc:unix:/run/s.sock",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-value=1"} {
		if err := keys.Check(signer.Spec{URI: ok}); err != nil {
			t.Errorf("Check(%q) = %v", ok, err)
		}
	}
}

// TestOpenFile opens a key file relative to the base directory; the key
// closes (twice) without error, and a password for a PEM file is refused.
func TestOpenFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.pem"), signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := keys.Open(context.Background(), signer.Spec{URI: "file:a.pem", KeyID: "a", BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyID != "a" || k.Backend != "file" || k.Algorithm != signer.RS256 {
		t.Errorf("opened %v", k)
	}
	if err := k.Close(); err != nil {
		t.Error(err)
	}
	if err := k.Close(); err != nil {
		t.Error(err)
	}
	_, err = keys.Open(context.Background(), signer.Spec{URI: "file:a.pem", KeyID: "a", BaseDir: dir,
		Password: signer.PasswordSource{Env: "NOPE"}})
	if err == nil || !strings.Contains(err.Error(), "only PKCS#12") {
		t.Errorf("password for a PEM file: %v", err)
	}
}

// TestKIDRequired: backends whose key carries no kid of its own refuse a
// spec without one before reaching the backend.
func TestKIDRequired(t *testing.T) {
	t.Parallel()
	for _, uri := range []string{"pkcs11:token=t;object=o?module-path=/nonexistent.so", "awskms:alias/mp",
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
		"azurekv:https://v.vault.azure.net/keys/k", "grpc:unix:/nonexistent.sock"} {
		_, err := keys.Open(context.Background(), signer.Spec{URI: uri})
		if err == nil || !strings.Contains(err.Error(), "kid: required") {
			t.Errorf("Open(%q) without kid = %v", uri, err)
		}
	}
}
