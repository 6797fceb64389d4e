package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// TestConfigCheckRefusesAmbiguity: parsing alone (as `tokenbroker check`
// does) refuses a config whose clients or keys are ambiguous, naming the
// field.
func TestConfigCheckRefusesAmbiguity(t *testing.T) {
	t.Parallel()
	base := readString(t, writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token"))
	if _, err := daemon.Parse([]byte(base)); err != nil {
		t.Fatalf("the base config: %v", err)
	}
	single := regexp.MustCompile(`    key:\n(      .*\n)+`).FindString(base)
	if single == "" {
		t.Fatalf("the base config has no single key block:\n%s", base)
	}
	keys := func(list string) string {
		return strings.Replace(base, single, "    keys:\n"+list, 1)
	}
	clients := base[strings.Index(base, "clients:\n")+len("clients:\n"):]
	for _, tc := range []struct{ name, cfg, want string }{
		{"two_active_keys", keys("      - {kid: a, signer: 'file:mp-key.pem', active: true}\n      - {kid: b, signer: 'file:mp-key.pem', active: true}\n"), "exactly one key must be active"},
		{"no_active_key", keys("      - {kid: a, signer: 'file:mp-key.pem'}\n      - {kid: b, signer: 'file:mp-key.pem'}\n"), "exactly one key must be active"},
		{"duplicate_kid", keys("      - {kid: a, signer: 'file:mp-key.pem', active: true}\n      - {kid: a, signer: 'file:mp-key.pem'}\n"), `clients[0].keys[1].kid: "a" used twice`},
		{"keys_without_kid", keys("      - {signer: 'file:mp-key.pem', active: true}\n      - {kid: b, signer: 'file:mp-key.pem'}\n"), "kid: required"},
		{"duplicate_client", base + clients, `clients[1].name: "smartcloud" used twice`},
	} {
		_, err := daemon.Parse([]byte(tc.cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	good := keys("      - {kid: a, signer: 'file:mp-key.pem'}\n      - {kid: b, signer: 'file:mp-key.pem', active: true}\n")
	if _, err := daemon.Parse([]byte(good)); err != nil {
		t.Errorf("two keys, one active: %v", err)
	}
}

// TestConfigCheckTransportAndPolicy: parsing alone refuses plaintext
// mixed with TLS, TLS without the callers' CA, and a policy rule missing
// a required list.
func TestConfigCheckTransportAndPolicy(t *testing.T) {
	t.Parallel()
	base := readString(t, writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token"))
	tls := "tls:\n  cert: server.pem\n  key: server-key.pem\n  client_ca: callers-ca.pem\n"
	secure := strings.Replace(base, "insecure: true\n", tls, 1)
	if _, err := daemon.Parse([]byte(secure)); err != nil {
		t.Fatalf("the TLS config: %v", err)
	}
	for _, tc := range []struct{ name, cfg, want string }{
		{"insecure_and_tls", strings.Replace(base, "insecure: true\n", "insecure: true\n"+tls, 1), "choose one"},
		{"tls_without_client_ca", strings.Replace(secure, "  client_ca: callers-ca.pem\n", "", 1), "client_ca"},
		{"tls_without_key", strings.Replace(secure, "  key: server-key.pem\n", "", 1), "tls: cert, key and client_ca are required"},
		{"policy_without_scopes", strings.Replace(base, "    scopes: [\"*\"]\n", "", 1), "policy[0].scopes"},
	} {
		_, err := daemon.Parse([]byte(tc.cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
