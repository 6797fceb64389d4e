package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestEnterpriseCertificate: a PKCS#12 key with its password in a file;
// grants carry x5c (an array of base64 DER certificates) and no kid, and the
// emulator accepts them for the client whose organisation the certificate
// names.
func TestEnterpriseCertificate(t *testing.T) {
	t.Parallel()
	const clientID = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"
	p12, cas := signertest.EnterpriseCert(t, "991825827", "pw-123")
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.Record()
	if err := emu.AddClient(maskinportentest.Client{ID: clientID, Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{demoScope}, CertificateCAs: cas}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser(clientID, "310904473", "")
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	dir := filepath.Dir(path)
	writeSecret(t, filepath.Join(dir, "vs.p12"), p12)
	writeSecret(t, filepath.Join(dir, "vs.pw"), []byte("pw-123\n"))
	cfg := readFile(t, path)
	cfg = bytes.Replace(cfg, []byte("      signer: file:mp-key.pem\n"), []byte("      signer: file:vs.p12\n      password_file: vs.pw\n"), 1)
	writeSecret(t, path, cfg)

	// serveOnce serves the config, makes one GetToken call and stops.
	serveOnce := func() (string, error) {
		addr, stderr, stop := startServe(t, path, serveHooks{})
		rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer rcancel()
		_, err := dial(t, addr).GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{demoScope}})
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
		return stderr.String(), err
	}
	log, err := serveOnce()
	if err != nil {
		t.Fatalf("GetToken with an enterprise certificate: %v", err)
	}
	as := emu.Assertions()
	if len(as) != 1 {
		t.Fatalf("%d grants", len(as))
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.SplitN(as[0], ".", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr map[string]any
	if err := json.Unmarshal(raw, &hdr); err != nil {
		t.Fatal(err)
	}
	x5c, ok := hdr["x5c"].([]any)
	if !ok || len(x5c) != 2 || hdr["kid"] != nil {
		t.Errorf("grant header %v: want x5c as an array of 2 and no kid", hdr)
	}
	if strings.Contains(log, "pw-123") {
		t.Error("the PKCS#12 password reached the log")
	}

	// A certificate naming another organisation is refused (MP-122).
	other, _ := signertest.EnterpriseCert(t, "314250052", "pw-123")
	writeSecret(t, filepath.Join(dir, "vs.p12"), other)
	if _, err := serveOnce(); err == nil || !strings.Contains(err.Error(), "MP-122") {
		t.Errorf("certificate of another organisation: %v, want MP-122", err)
	}
	// A wrong password stops the broker at start, without showing it.
	writeSecret(t, filepath.Join(dir, "vs.pw"), []byte("wrong-pw\n"))
	var out bytes.Buffer
	err = run(context.Background(), []string{"check", "--config", path}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "PKCS#12") || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("wrong password: %v", err)
	}
}
