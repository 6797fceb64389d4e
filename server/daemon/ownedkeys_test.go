package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
)

// A rotation state names each key the rotation made by its URI; whoever
// can write the state must not be able to make the broker open a key
// outside the client's rotation.new_keys: a file elsewhere, or a pkcs11:
// key with another module-path (which would load that module). The key
// ring and the rotator refuse such a key, naming the client and the kid,
// never a PIN.
func TestRotationStateKeysMustBeInNewKeys(t *testing.T) {
	base := t.TempDir()
	if err := os.Mkdir(filepath.Join(base, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(base, "pin")
	if err := os.WriteFile(pinFile, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const module = "/usr/lib/softhsm/libsofthsm2.so"
	hsm := "pkcs11:token=tb?module-path=" + module + "&pin-source=file:" + pinFile
	const pin = "98765-secret-pin"
	for _, tc := range []struct {
		name, newKeys, uri, want string // want "" means accepted
	}{
		{"file inside", "file:keys/", "file://" + filepath.Join(base, "keys", madeKID+".pem"), ""},
		{"file outside", "file:keys/", "file:///tmp/elsewhere/" + madeKID + ".pem", "not " + filepath.Join(base, "keys", madeKID+".pem")},
		{"file climbing out", "file:keys/", "file:keys/../" + madeKID + ".pem", "is not in its rotation.new_keys"},
		{"file under another name", "file:keys/", "file://" + filepath.Join(base, "keys", "other.pem"), "is not in its rotation.new_keys"},
		{"pkcs11 for files", "file:keys/", "pkcs11:token=tb;object=" + madeKID + "?module-path=/evil.so&pin-value=" + pin, "not a file: key"},
		{"pkcs11 same token", hsm, "pkcs11:token=tb;object=" + madeKID + ";id=" + madeKID + "?module-path=" + module + "&pin-source=file:" + pinFile, ""},
		{"pkcs11 other module", hsm, "pkcs11:token=tb;object=" + madeKID + "?module-path=/tmp/evil.so&pin-value=" + pin, "is not a key pair this maker makes"},
		{"pkcs11 other token", hsm, "pkcs11:token=other;object=" + madeKID + "?module-path=" + module + "&pin-value=" + pin, "is not a key pair this maker makes"},
		{"file for pkcs11", hsm, "file://" + filepath.Join(base, "keys", madeKID+".pem"), "not a pkcs11: key"},
		{"awskms other region", "awskms:?region=eu-north-1", "awskms:alias/tokenbroker/" + madeKID + "?region=eu-west-1", "is not a key this maker makes"},
		{"awskms other endpoint", "awskms:?region=eu-north-1", "awskms:alias/tokenbroker/" + madeKID + "?region=eu-north-1&endpoint=https://kms.evil.example", "is not a key this maker makes"},
		{"awskms same region", "awskms:?region=eu-north-1", "awskms:alias/tokenbroker/" + madeKID + "?region=eu-north-1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			maker, err := keymaker.NewMaker(keymaker.MakerConfig{Location: tc.newKeys, BaseDir: base})
			if err != nil {
				t.Fatal(err)
			}
			kr := &keyRotation{makers: map[string]keymaker.Maker{"smartcloud": maker}}
			cfg, err := Parse([]byte(rotationConfig(okSelfService, "    rotation:\n      new_keys: \""+tc.newKeys+"\"\n")))
			if err != nil {
				t.Fatal(err)
			}
			st := rotation.State{Active: madeKID, Keys: []rotation.ManagedKey{{KID: madeKID, URI: tc.uri, Algorithm: signer.RS256}}}
			_, ringErr := ringClients(cfg, base, map[string]rotation.State{"smartcloud": st}, kr.owns)
			opened := false
			_, openErr := kr.ownedOpen("smartcloud", func(context.Context, signer.Spec) (*signer.Key, error) {
				opened = true
				return nil, nil
			})(context.Background(), signer.Spec{URI: tc.uri, KeyID: madeKID, BaseDir: base})
			if tc.want == "" {
				if ringErr != nil || openErr != nil || !opened {
					t.Fatalf("refused a key in new_keys: %v / %v", ringErr, openErr)
				}
				return
			}
			if opened {
				t.Error("the rotator opened the key")
			}
			for _, err := range []error{ringErr, openErr} {
				if err == nil {
					t.Fatal("accepted")
				}
				msg := err.Error()
				for _, want := range []string{tc.want, "client smartcloud", "key " + madeKID, "refusing to open it"} {
					if !strings.Contains(msg, want) {
						t.Errorf("error lacks %q: %s", want, msg)
					}
				}
				if strings.Contains(msg, pin) || strings.Contains(msg, "1234") {
					t.Errorf("error shows a PIN: %s", msg)
				}
			}
		})
	}
}
