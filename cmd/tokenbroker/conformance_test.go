package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestBackendConformance runs every signing backend through the same
// steps: `jwks` exports its public key, that key is registered at the
// emulator, and the broker gets a token with grants the emulator verifies.
func TestBackendConformance(t *testing.T) {
	jwkA, err := jwk.FromRaw(signertest.RSA(t, signertest.KeyA))
	if err != nil {
		t.Fatal(err)
	}
	jwkJSON, err := json.Marshal(jwkA)
	if err != nil {
		t.Fatal(err)
	}
	backends := []struct {
		name   string
		signer func(t *testing.T, dir string) string
	}{
		{"file_pem", func(t *testing.T, dir string) string {
			writeSecret(t, filepath.Join(dir, "k.pem"), signertest.PEM(t, "rsa-a.pkcs1.pem"))
			return "file:k.pem"
		}},
		{"file_jwk", func(t *testing.T, dir string) string {
			writeSecret(t, filepath.Join(dir, "k.json"), jwkJSON)
			return "file:k.json"
		}},
		{"pkcs11_softhsm", func(t *testing.T, _ string) string { return signertest.SoftHSM(t, signertest.KeyA) }},
		{"awskms_local", func(t *testing.T, _ string) string { return signertest.LocalKMS(t) }},
		{"grpc_signer_over_pkcs11", func(t *testing.T, _ string) string {
			sockDir, err := os.MkdirTemp("", "tbconf")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(sockDir) })
			sock := filepath.Join(sockDir, "s.sock")
			startSigner(t, "--key", signertest.SoftHSM(t, signertest.KeyA), "--kid", "hsm-a", "--listen", "unix:"+sock)
			return "grpc:unix:" + sock
		}},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
			emu.Record()
			path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
			dir := filepath.Dir(path)
			cfg := readFile(t, path)
			cfg = bytes.Replace(cfg, []byte("signer: file:mp-key.pem"), []byte("signer: \""+be.signer(t, dir)+"\""), 1)
			writeSecret(t, path, cfg)

			var set, errOut bytes.Buffer
			if err := run(context.Background(), []string{"jwks", "--config", path}, &set, &errOut); err != nil {
				t.Fatalf("jwks: %v", err)
			}
			keys, err := jwk.Parse(set.Bytes())
			if err != nil || keys.Len() != 1 {
				t.Fatalf("jwks output: %v\n%s", err, set.String())
			}
			pub, ok := keys.Key(0)
			if !ok {
				t.Fatal("jwks output has no key")
			}
			if pub.KeyID() != "smartcloud-2026" {
				t.Errorf("kid %q", pub.KeyID())
			}
			if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
				SystemID: "991825827_x", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
				t.Fatal(err)
			}
			emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")

			addr, stderr, stop := startServe(t, path, serveHooks{})
			rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer rcancel()
			resp, err := dial(t, addr).GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{demoScope}})
			if err != nil || resp.GetKeyId() != "smartcloud-2026" {
				t.Fatalf("GetToken: %v %v", resp, err)
			}
			if emu.Issued() != 1 {
				t.Errorf("emulator issued %d tokens", emu.Issued())
			}
			if err := stop(); err != nil {
				t.Errorf("serve: %v", err)
			}
			emu.CheckNoLeaks(t, "the log", stderr.String())
		})
	}
}

// writeSecret replaces the file at path with data (mode 0600) in one step,
// as a Kubernetes secret or config map update does: a watcher reading it
// sees the old content or the new, never half of the new.
func writeSecret(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
