package daemon

import (
	"context"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// rotationConfig is baseConfig with a self_service section and a rotation
// section for its client, each line replaceable by the tests.
func rotationConfig(selfService, rotation string) string {
	cfg := strings.Replace(baseConfig, "clients:\n", selfService+"clients:\n", 1)
	return cfg + rotation
}

const (
	okSelfService = "self_service:\n  client_id: admin\n  key: {signer: \"file:business.p12\", password_file: business.pw}\n  state_dir: state\n"
	okRotation    = "    rotation:\n      new_keys: file:keys/\n"
)

// TestRotationConfigChecks: every mistake in a rotation or self_service
// section is refused at start with the field named.
func TestRotationConfigChecks(t *testing.T) {
	if _, err := Parse([]byte(rotationConfig(okSelfService, okRotation))); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	cfg, err := Parse([]byte(rotationConfig(okSelfService, okRotation+"      every: 120d\n      grace: 2h\n")))
	if err != nil || time.Duration(cfg.Clients[0].Rotation.Every) != 120*24*time.Hour {
		t.Fatalf("every: 120d: %v", err)
	}
	for _, tc := range []struct{ selfService, rotation, want string }{
		{"", okRotation, "self_service: required when a client has a rotation section"},
		{strings.Replace(okSelfService, "  client_id: admin\n", "", 1), okRotation, "self_service.client_id: required"},
		{strings.Replace(okSelfService, "  state_dir: state\n", "", 1), okRotation, "self_service.state_dir: required without cache.shared"},
		{strings.Replace(okSelfService, `signer: "file:business.p12", `, "", 1), okRotation, "self_service.key.signer: required"},
		{strings.Replace(okSelfService, `file:business.p12`, "vault:x", 1), okRotation, "self_service.key.signer:"},
		{okSelfService + "  follow_every: 100ms\n", okRotation, "self_service.follow_every: at least 1s"},
		{okSelfService + "  check_every: 1s\n", okRotation, "self_service.check_every: at least 10s"},
		{okSelfService, "    rotation:\n      every: 90d\n", "clients[0].rotation.new_keys: required"},
		{okSelfService, okRotation + "      every: 360d\n", "clients[0].rotation.every: 8640h0m0s, want at least 1d and less than a year minus renew_before"},
		{okSelfService, okRotation + "      every: 1h\n", "clients[0].rotation.every:"},
		{okSelfService, okRotation + "      renew_before: 200d\n", "clients[0].rotation.renew_before:"},
		{okSelfService, okRotation + "      grace: 30s\n", "clients[0].rotation.grace: 30s, want at least 4 × self_service.follow_every (15s)"},
		{okSelfService, okRotation + "      prove_timeout: 10s\n", "clients[0].rotation.prove_timeout: at least 1m"},
		{okSelfService, okRotation + "      kid_prefix: \"a/b\"\n", "clients[0].rotation.kid_prefix:"},
		{okSelfService, okRotation + "      kid_prefix: \"sc.2026-\"\n", "clients[0].rotation.kid_prefix:"},
		{okSelfService, okRotation + "      kid_prefix: \"smartcloud-2026-\"\n", "clients[0].rotation.kid_prefix:"},
		{okSelfService, okRotation + "      algorithm: RS512\n", `unknown key "algorithm"`},
		{okSelfService, okRotation + "      bits: 1024\n", "clients[0].rotation.bits: 1024"},
		{okSelfService, okRotation + "      every: 90 days\n", "is not a duration such as 30s or 90d"},
	} {
		_, err := Parse([]byte(rotationConfig(tc.selfService, tc.rotation)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q / %q: err = %v, want %q", tc.selfService, tc.rotation, err, tc.want)
		}
	}
}

// TestOpenAdminKey: the self-service client's key carries its certificate
// chain, from a PKCS#12 file or from self_service.certificate for a key
// without one; a certificate for another key, or none, is refused.
func TestOpenAdminKey(t *testing.T) {
	dir := t.TempDir()
	p12, _ := signertest.EnterpriseCert(t, "991825827", "pw")
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("business.p12", p12)
	write("business.pw", []byte("pw\n"))
	write("a.pem", signertest.PEM(t, "rsa-a.pkcs8.pem"))
	write("b.pem", signertest.PEM(t, "rsa-b.pkcs8.pem"))
	// The chain of the PKCS#12 file (key A), as PEM.
	ek, _ := signertest.EnterpriseKey(t, "991825827")
	var chain []byte
	for _, c := range ek.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	write("chain.pem", chain)
	write("other.pem", tlstest.NewCA(t, "other").PEM)
	env := rotationEnv{cfg: &Config{}, baseDir: dir, open: keys.Open}
	open := func(ss SelfServiceConfig) error {
		key, err := openAdminKey(context.Background(), &ss, env)
		if err == nil {
			if len(key.Chain) != 2 {
				t.Errorf("%+v: chain of %d", ss, len(key.Chain))
			}
			key.Close()
		}
		return err
	}
	for _, tc := range []struct {
		ss   SelfServiceConfig
		want string
	}{
		{SelfServiceConfig{Key: KeyConfig{Signer: "file:business.p12", PasswordFile: "business.pw"}}, ""},
		{SelfServiceConfig{Key: KeyConfig{Signer: "file:a.pem"}, Certificate: "chain.pem"}, ""},
		{SelfServiceConfig{Key: KeyConfig{Signer: "file:b.pem"}, Certificate: "chain.pem"}, "self_service.certificate: its first certificate is not for self_service.key"},
		{SelfServiceConfig{Key: KeyConfig{Signer: "file:a.pem"}, Certificate: "other.pem"}, "self_service.certificate: its first certificate is not for self_service.key"},
		{SelfServiceConfig{Key: KeyConfig{Signer: "file:a.pem"}, Certificate: "a.pem"}, "self_service.certificate: no PEM certificate"},
		{SelfServiceConfig{Key: KeyConfig{Signer: "file:a.pem"}}, "self_service.key: no certificate"},
	} {
		err := open(tc.ss)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: err = %v, want %q", tc.ss, err, tc.want)
		}
	}
}

// TestRingClientsFollowRotationState: after a rotation the ring holds the
// key the rotation made, active, with its registered expiry, and no longer
// the config's key once it is retired; a state naming an active key that
// neither the config nor the rotation holds is refused.
func TestRingClientsFollowRotationState(t *testing.T) {
	cfg, err := Parse([]byte(rotationConfig(okSelfService, okRotation)))
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2027, 11, 1, 0, 0, 0, 0, time.UTC)
	made := rotation.ManagedKey{KID: "k-new", URI: "file:///keys/k-new.pem", Algorithm: signer.RS256}
	during := rotation.State{Active: "k-new", Keys: []rotation.ManagedKey{made},
		Registered: []rotation.RegisteredInfo{{KID: "smartcloud-2026", Expires: exp.AddDate(0, -3, 0)}, {KID: "k-new", Expires: exp}}}
	after := during
	after.Retired = []string{"smartcloud-2026"}
	for _, tc := range []struct {
		name  string
		st    rotation.State
		want  []string // kids, the active one first
		errIs string
	}{
		{"no state", rotation.State{}, []string{"smartcloud-2026"}, ""},
		{"during grace", during, []string{"k-new", "smartcloud-2026"}, ""},
		{"after retire", after, []string{"k-new"}, ""},
		{"unknown active", rotation.State{Active: "elsewhere"}, nil, `makes "elsewhere" active`},
	} {
		rcs, err := ringClients(cfg, "/etc/tb", map[string]rotation.State{"smartcloud": tc.st}, func(string, signer.Spec) error { return nil })
		if tc.errIs != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errIs) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.errIs)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, k := range rcs[0].Keys {
			if k.Active {
				got = append([]string{k.KeyID}, got...)
			} else {
				got = append(got, k.KeyID)
			}
			if k.KeyID == "k-new" && (!k.Expires.Equal(exp) || k.URI != made.URI) {
				t.Errorf("%s: the rotation's key is %+v", tc.name, k)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: ring keys %v, want %v (active first)", tc.name, got, tc.want)
		}
	}
}

// TestKIDPrefixMakesValidKIDs: every prefix the config takes, with a UUID
// after it, is a kid every backend can name a key after.
func TestKIDPrefixMakesValidKIDs(t *testing.T) {
	for _, p := range []string{"", "a", "smartcloud-", "sc-2026-", "ABCDEFGHIJKL"} {
		if !kidPrefixRE.MatchString(p) {
			t.Errorf("prefix %q refused", p)
			continue
		}
		if err := signer.CheckMadeKID(p + "0b6f7f4e-8f1c-4d0a-9d5e-2f1e6c3b7a90"); err != nil {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
}

// A state the store lost (or an older one put back) must not reach the
// states a reload builds the key ring from: the ring would go back to the
// config's key, which the first rotation removed from the registration.
func TestRotationStateThatWentBackKeepsTheKeys(t *testing.T) {
	kr := &keyRotation{states: map[string]rotation.State{}}
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	kr.setState("c", rotation.State{Active: "k1", Keys: []rotation.ManagedKey{{KID: "k1", URI: "file:///k/k1.pem"}},
		Retired: []string{"config-kid"}, LastRotation: now})
	kr.setState("c", rotation.State{LastOutcome: rotation.OutcomeFailed, LastError: "gone", LastAttempt: now.Add(time.Hour)})
	st := kr.snapshot()["c"]
	if st.Active != "k1" || len(st.Keys) != 1 || len(st.Retired) != 1 {
		t.Fatalf("the keys went back with the state: %+v", st)
	}
	if st.LastOutcome != rotation.OutcomeFailed || st.LastError != "gone" {
		t.Fatalf("the failure is not shown: %+v", st)
	}
}

// TestSwitchKeepsTheOldKeyAsFallback: after the active key changes, the
// Maskinporten client falls back to the key it switched from for as long
// as the ring holds it, and to nothing once a reload drops it.
func TestSwitchKeepsTheOldKeyAsFallback(t *testing.T) {
	dir := t.TempDir()
	for name, file := range map[string]string{"a.pem": "rsa-a.pkcs8.pem", "b.pem": "rsa-b.pkcs8.pem"} {
		if err := os.WriteFile(filepath.Join(dir, name), signertest.PEM(t, file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config := func(keys string) *Config {
		cfg, err := Parse([]byte(strings.Replace(baseConfig, "    key:\n      kid: smartcloud-2026\n      signer: file:mp-key.pem\n", keys, 1)))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	both := "    keys:\n      - {kid: old, signer: file:a.pem, active: %v}\n      - {kid: new, signer: file:b.pem, active: %v}\n"
	ctx := context.Background()
	rt, err := buildBroker(ctx, config(fmt.Sprintf(both, true, false)), dir, slog.New(slog.DiscardHandler), telemetry{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.ring.Close()
	defer rt.broker.Close()
	rt.ring.Notify(rt.setKey, nil)
	mp := rt.clients["smartcloud"]
	if mp.FallbackKey() != nil {
		t.Fatal("a fallback before any switch")
	}
	if err := rt.reload(ctx, config(fmt.Sprintf(both, false, true)), dir); err != nil {
		t.Fatal(err)
	}
	if mp.Key().KeyID != "new" || mp.FallbackKey() == nil || mp.FallbackKey().KeyID != "old" {
		t.Fatalf("after the switch: key %v, fallback %v", mp.Key().KeyID, mp.FallbackKey())
	}
	// A reload that keeps both keeps the fallback, with the ring's new handle.
	if err := rt.reload(ctx, config(fmt.Sprintf(both, false, true)), dir); err != nil {
		t.Fatal(err)
	}
	if fb := mp.FallbackKey(); fb == nil || fb != rt.ring.Key("smartcloud", "old") {
		t.Fatalf("after a reload: fallback %v, want the ring's handle of old", fb)
	}
	if err := rt.reload(ctx, config("    keys:\n      - {kid: new, signer: file:b.pem, active: true}\n"), dir); err != nil {
		t.Fatal(err)
	}
	if mp.FallbackKey() != nil {
		t.Fatalf("the old key was dropped but is still the fallback")
	}
}
