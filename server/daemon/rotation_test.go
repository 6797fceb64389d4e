package daemon

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
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
