package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestKeyRotation: add key B, make it active, reload: new grants carry B's
// kid, cached tokens survive reloads, and removing the active key is
// refused.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	const clientID = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	emu.Record()
	pubA := publicJWK(t, signertest.Key(t, signertest.KeyA, "key-a"))
	pubB := publicJWK(t, signertest.Key(t, signertest.KeyB, "key-b"))
	if err := emu.AddClient(maskinportentest.Client{ID: clientID, Org: "991825827", SystemID: "991825827_x",
		Scopes: []string{demoScope}, Keys: []jwk.Key{pubA, pubB}}); err != nil {
		t.Fatal(err)
	}
	for _, org := range []string{"310904473", "314250052", "313775429"} {
		emu.ApproveSystemUser(clientID, org, "")
	}
	dir := t.TempDir()
	for name, file := range map[string]string{"a.pem": "rsa-a.pkcs8.pem", "b.pem": "rsa-b.pkcs1.pem"} {
		if err := os.WriteFile(filepath.Join(dir, name), signertest.PEM(t, file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "tokenbroker.yaml")
	writeKeys := func(keys string) {
		t.Helper()
		cfg := fmt.Sprintf(`listen: 127.0.0.1:0
insecure: true
http_listen: 127.0.0.1:0
policy:
  - {callers: [local:insecure], clients: ["*"], scopes: ["*"], customer_orgs: ["*"]}
maskinporten: {environment: test, issuer: %q, token_url: %q}
clients:
  - name: smartcloud
    client_id: %s
    scopes: [%s]
    keys:
%s`, emu.Issuer(), srv.URL+"/token", clientID, demoScope, keys)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	keyA := "      - {kid: key-a, signer: file:a.pem%s}\n"
	keyB := "      - {kid: key-b, signer: file:b.pem%s}\n"
	active := ", active: true"
	writeKeys(fmt.Sprintf(keyA, active))

	reload := make(chan struct{})
	addr, stderr, stop := startServe(t, path, serveHooks{reload: reload})
	ctx := context.Background()
	c := dial(t, addr)
	get := func(org string) *tokenbrokerv1.GetTokenResponse {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		resp, err := c.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: org, Scopes: []string{demoScope}})
		if err != nil {
			t.Fatalf("GetToken(%s): %v", org, err)
		}
		return resp
	}
	doReload := func(want string) {
		t.Helper()
		before := strings.Count(stderr.String(), want)
		reload <- struct{}{}
		waitUntil(t, want, func() bool { return strings.Count(stderr.String(), want) > before })
	}

	if r := get("310904473"); r.GetKeyId() != "key-a" {
		t.Fatalf("first token signed with %q, want key-a", r.GetKeyId())
	}
	// Add B, inactive: nothing changes, the cached token survives.
	writeKeys(fmt.Sprintf(keyA, active) + fmt.Sprintf(keyB, ""))
	doReload("config reloaded")
	if r := get("310904473"); !r.GetCached() || r.GetKeyId() != "key-a" {
		t.Errorf("after adding key B: cached %v kid %q, want the cached key-a token", r.GetCached(), r.GetKeyId())
	}
	// Make B active: new grants carry B's kid.
	writeKeys(fmt.Sprintf(keyA, "") + fmt.Sprintf(keyB, active))
	doReload("active key changed")
	for _, org := range []string{"310904473", "314250052"} {
		if r := get(org); r.GetKeyId() != "key-b" || r.GetCached() {
			t.Errorf("%s after making B active: kid %q cached %v, want a fresh key-b token", org, r.GetKeyId(), r.GetCached())
		}
	}
	// The metrics follow the reloads: both keys, B the active one.
	scrape := scrapeMetrics(t, stderr.String())
	for _, want := range []string{
		`tokenbroker_key_active{client="smartcloud",kid="key-a"} 0`,
		`tokenbroker_key_active{client="smartcloud",kid="key-b"} 1`,
		`tokenbroker_key_up{backend="file",client="smartcloud",kid="key-b"} 1`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics after making B active lack %s", want)
		}
	}
	// Removing the active key B is refused; B keeps signing.
	writeKeys(fmt.Sprintf(keyA, active))
	doReload("reload failed")
	if !strings.Contains(stderr.String(), `the active key \"key-b\" was removed`) {
		t.Errorf("refusal does not say why:\n%s", stderr.String())
	}
	if r := get("313775429"); r.GetKeyId() != "key-b" {
		t.Errorf("after a refused removal: kid %q, want key-b", r.GetKeyId())
	}
	// Removing the inactive key A is fine.
	writeKeys(fmt.Sprintf(keyB, active))
	doReload("config reloaded")
	if scrape := scrapeMetrics(t, stderr.String()); strings.Contains(scrape, `kid="key-a"`) {
		t.Error("the metrics still show key A after it was removed")
	}

	kids := map[string]int{}
	for _, a := range emu.Assertions() {
		raw, err := base64.RawURLEncoding.DecodeString(strings.SplitN(a, ".", 2)[0])
		if err != nil {
			t.Fatal(err)
		}
		var hdr struct {
			Kid string `json:"kid"`
		}
		if err := json.Unmarshal(raw, &hdr); err != nil {
			t.Fatal(err)
		}
		kids[hdr.Kid]++
	}
	if kids["key-a"] != 1 || kids["key-b"] != 3 {
		t.Errorf("grants by kid = %v, want key-a 1, key-b 3", kids)
	}
	if err := stop(); err != nil {
		t.Error(err)
	}
}
