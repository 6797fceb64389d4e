package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestFailedReloadChangesNothing: for every way a reload can fail (the
// file, a value, the policy, a key of the second client while the first
// rotates, the shape of the clients), /healthz, the key metrics, the
// policy and the key that signs new grants stay as they were, and the log
// says the running keys were kept.
func TestFailedReloadChangesNothing(t *testing.T) {
	t.Parallel()
	const id1, id2 = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "0b0e3c1a-64a4-4d43-8a5d-2ed5f84cbd45"
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{})
	pubA := publicJWK(t, signertest.Key(t, signertest.KeyA, "key-a"))
	pubB := publicJWK(t, signertest.Key(t, signertest.KeyB, "key-b"))
	pubB2 := publicJWK(t, signertest.Key(t, signertest.KeyB, "key-b2"))
	ids := map[string]string{"one": id1, "two": id2}
	for _, c := range ids {
		if err := emu.AddClient(maskinportentest.Client{ID: c, Org: "991825827", SystemID: "991825827_x",
			Scopes: []string{demoScope}, Keys: []jwk.Key{pubA, pubB, pubB2}}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	for name, file := range map[string]string{"a.pem": "rsa-a.pkcs8.pem", "b.pem": "rsa-b.pkcs1.pem", "b2.pem": "rsa-b.pkcs8.pem"} {
		if err := os.WriteFile(filepath.Join(dir, name), signertest.PEM(t, file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "tokenbroker.yaml")
	type cfgParts struct{ top, policyOrgs, keys1, keys2, extraClient string }
	render := func(p cfgParts) []byte {
		return []byte(fmt.Sprintf(`listen: 127.0.0.1:0
insecure: true
http_listen: 127.0.0.1:0
%spolicy:
  - {callers: [local:insecure], clients: ["*"], scopes: ["*"], customer_orgs: [%s]}
maskinporten: {environment: test, issuer: %q, token_url: %q}
clients:
  - name: one
    client_id: %s
    scopes: [%s]
    keys:
%s  - name: two
    client_id: %s
    scopes: [%s]
    keys:
%s%s`, p.top, p.policyOrgs, emu.Issuer(), srv.URL+"/token", id1, demoScope, p.keys1, id2, demoScope, p.keys2, p.extraClient))
	}
	start := cfgParts{
		policyOrgs: `"*"`,
		keys1:      "      - {kid: key-a, signer: file:a.pem, active: true}\n",
		keys2:      "      - {kid: key-b2, signer: file:b2.pem, active: true}\n",
	}
	writeSecret(t, path, render(start))
	reload := make(chan struct{})
	addr, stderr, stop := startServe(t, path, serveHooks{reload: reload})
	c := dial(t, addr)
	next := 0
	// grant gets a fresh token (a new external_ref each time, so never
	// cached) and returns the kid it was signed with, or the error.
	const org = "310904473"
	grant := func(client string) (string, error) {
		t.Helper()
		next++
		emu.ApproveSystemUser(ids[client], org, fmt.Sprint(next))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Client: client, CustomerOrg: org, Scopes: []string{demoScope}, ExternalRef: fmt.Sprint(next)})
		return r.GetKeyId(), err
	}
	keyLines := regexp.MustCompile(`(?m)^tokenbroker_key_\S+ \S+$`)
	observe := func() string {
		t.Helper()
		var health struct {
			Keys json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal([]byte(getURL(t, stderr.String(), "healthz")), &health); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		b.Write(health.Keys)
		for _, l := range keyLines.FindAllString(scrapeMetrics(t, stderr.String()), -1) {
			b.WriteString("\n" + l)
		}
		return b.String()
	}
	before := observe()
	if !strings.Contains(before, "key-b2") || !strings.Contains(before, `tokenbroker_key_active{client="one",kid="key-a"} 1`) {
		t.Fatalf("unexpected start state:\n%s", before)
	}

	// Each broken config also narrows the policy and makes key B client
	// one's active key, so that anything applied in part would show.
	rotated := "      - {kid: key-a, signer: file:a.pem}\n      - {kid: key-b, signer: file:b.pem, active: true}\n"
	broken := func(p cfgParts) []byte {
		p.policyOrgs = `"314250052"`
		p.keys1 = rotated
		return render(p)
	}
	for _, tc := range []struct {
		name string
		cfg  []byte
		want string
	}{
		{"yaml_syntax", append(broken(start), "  - [\n"...), "config"},
		{"unknown_key", broken(cfgParts{top: "bogus: 1\n", keys2: start.keys2}), `unknown key \"bogus\"`},
		{"bad_value", broken(cfgParts{top: "cache: {refresh_fraction: 0.9}\n", keys2: start.keys2}), "cache.refresh_fraction"},
		{"bad_policy", []byte(strings.Replace(string(broken(start)), "callers: [local:insecure]", "callers: [billing]", 1)), "policy[0].callers[0]"},
		{"missing_key_file", broken(cfgParts{keys2: "      - {kid: key-b2, signer: file:gone.pem, active: true}\n"}), "gone.pem"},
		{"active_key_removed", broken(cfgParts{keys2: "      - {kid: key-a2, signer: file:a.pem, active: true}\n"}), `the active key \"key-b2\" was removed`},
		{"client_added", broken(cfgParts{keys2: start.keys2, extraClient: fmt.Sprintf(
			"  - {name: three, client_id: %s, scopes: [%s], key: {kid: key-a, signer: file:a.pem}}\n", id1, demoScope)}), "adding a client needs a restart"},
	} {
		writeSecret(t, path, tc.cfg)
		failed := strings.Count(stderr.String(), `"msg":"reload failed`)
		reload <- struct{}{}
		waitUntil(t, tc.name+" reload failure", func() bool { return strings.Count(stderr.String(), `"msg":"reload failed`) > failed })
		if last := stderr.String()[strings.LastIndex(stderr.String(), `"msg":"reload failed`):]; !strings.Contains(strings.SplitN(last, "\n", 2)[0], tc.want) {
			t.Errorf("%s: the failure does not say %q: %s", tc.name, tc.want, strings.SplitN(last, "\n", 2)[0])
		}
		if after := observe(); after != before {
			t.Errorf("%s: /healthz or the key metrics changed:\nbefore %s\nafter  %s", tc.name, before, after)
		}
		for _, client := range []string{"one", "two"} {
			kid, err := grant(client)
			want := map[string]string{"one": "key-a", "two": "key-b2"}[client]
			if err != nil || kid != want {
				t.Errorf("%s: client %s after the failed reload: kid %q, %v; want %s under the old policy", tc.name, client, kid, err, want)
			}
		}
	}
	if n := strings.Count(stderr.String(), "config reloaded"); n != 0 {
		t.Errorf("%d reloads reported as applied", n)
	}
	// The same change without the fault applies whole.
	writeSecret(t, path, broken(start))
	reload <- struct{}{}
	waitUntil(t, "the good reload", func() bool { return strings.Contains(stderr.String(), "config reloaded") })
	if kid, err := grant("one"); err == nil {
		t.Errorf("after the good reload: kid %q granted outside the narrowed policy", kid)
	}
	if after := observe(); !strings.Contains(after, `tokenbroker_key_active{client="one",kid="key-b"} 1`) {
		t.Errorf("after the good reload, key-b is not active:\n%s", after)
	}
	if err := stop(); err != nil {
		t.Error(err)
	}
}

// getURL fetches the operator endpoint named in the serve log ("healthz",
// "metrics", "readyz") and returns the body.
func getURL(t *testing.T, log, name string) string {
	t.Helper()
	m := regexp.MustCompile(`"` + name + `":"(http://[^"]+)"`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no %s URL in the log:\n%s", name, log)
	}
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
