package keymaker_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// hsmObjects counts the objects labelled label on the SoftHSM token
// labelled token, asking the module itself, and returns the boolean
// attributes of the private key when there is one. The PKCS#11 tests do
// not run in parallel: the module is initialised here when no key has it
// open, and a key opened meanwhile would find it initialised by another.
func hsmObjects(t *testing.T, token, label string) (privs, pubs int, attrs map[uint]bool) {
	t.Helper()
	p := pkcs11.New(signertest.SoftHSMModule)
	if p == nil {
		t.Fatal("load the module")
	}
	switch err := p.Initialize(); {
	case err == nil:
		defer p.Finalize()
	case !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, slot := range slots {
		ti, err := p.GetTokenInfo(slot)
		if err != nil || strings.TrimSpace(ti.Label) != token {
			continue
		}
		s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		defer p.CloseSession(s)
		if err := p.Login(s, pkcs11.CKU_USER, signertest.SoftHSMPin); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			t.Fatal(err)
		}
		find := func(class uint) []pkcs11.ObjectHandle {
			if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}); err != nil {
				t.Fatal(err)
			}
			hs, _, err := p.FindObjects(s, 10)
			if err != nil {
				t.Fatal(err)
			}
			p.FindObjectsFinal(s)
			return hs
		}
		priv, pub := find(pkcs11.CKO_PRIVATE_KEY), find(pkcs11.CKO_PUBLIC_KEY)
		if len(priv) > 0 {
			attrs = map[uint]bool{}
			want := []*pkcs11.Attribute{}
			for _, a := range []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP} {
				want = append(want, pkcs11.NewAttribute(a, nil))
			}
			got, err := p.GetAttributeValue(s, priv[0], want)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range got {
				attrs[a.Type] = len(a.Value) == 1 && a.Value[0] == 1
			}
		}
		return len(priv), len(pub), attrs
	}
	t.Fatalf("no token %q", token)
	return 0, 0, nil
}

// TestPKCS11Maker: a key pair made on a SoftHSM token opens with keys.Open
// and gets a token; its private key stays in the token; making the kid
// again finds it instead of making a second pair; Destroy deletes both
// objects, and again is fine.
func TestPKCS11Maker(t *testing.T) {
	loc := signertest.SoftHSMToken(t, "maker")
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: loc, Algorithm: signer.RS512})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(spec.URI, ";object="+kid+";id="+kid+"?") || spec.KeyID != kid || spec.Algorithm != signer.RS512 {
		t.Errorf("spec %+v", spec)
	}
	key := open(t, spec)
	if bits(key) != 2048 || key.Backend != "pkcs11" {
		t.Errorf("%d-bit %s key", bits(key), key.Backend)
	}
	signertest.Conformance(t, key)
	privs, pubs, attrs := hsmObjects(t, "tbt-maker", kid)
	if privs != 1 || pubs != 1 {
		t.Fatalf("%d private and %d public objects, want one each", privs, pubs)
	}
	for a, want := range map[uint]bool{pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true,
		pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_SIGN: true, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false} {
		if attrs[a] != want {
			t.Errorf("private key attribute %#x is %v, want %v", a, attrs[a], want)
		}
	}

	again, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	if again != spec || !samePublic(open(t, again), key) {
		t.Errorf("second Make gave %+v, another key", again)
	}
	if privs, pubs, _ := hsmObjects(t, "tbt-maker", kid); privs != 1 || pubs != 1 {
		t.Fatalf("after the second Make: %d private and %d public objects, want one each", privs, pubs)
	}

	for name, bad := range map[string]signer.Spec{
		"other kid":    {URI: spec.URI, KeyID: "other"},
		"other object": {URI: strings.Replace(spec.URI, "object="+kid, "object=x", 1), KeyID: kid},
		"other token":  {URI: strings.Replace(spec.URI, "token=tbt-maker", "token=tb-rsa-a", 1), KeyID: kid},
		"other module": {URI: strings.Replace(spec.URI, "module-path=", "module-path=/x", 1), KeyID: kid},
		"not pkcs11":   {URI: "file:x.pem", KeyID: kid},
	} {
		if err := m.Destroy(context.Background(), bad); err == nil {
			t.Errorf("Destroy %s accepted", name)
		}
	}
	if privs, pubs, _ := hsmObjects(t, "tbt-maker", kid); privs != 1 || pubs != 1 {
		t.Fatalf("a refused Destroy deleted objects: %d private, %d public", privs, pubs)
	}
	for range 2 {
		if err := m.Destroy(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
	}
	if privs, pubs, _ := hsmObjects(t, "tbt-maker", kid); privs != 0 || pubs != 0 {
		t.Errorf("after Destroy: %d private and %d public objects", privs, pubs)
	}
	if k, err := keys.Open(context.Background(), spec); err == nil {
		k.Close()
		t.Error("the destroyed key still opens")
	}
}

// TestPKCS11MakerFindsOnlyItsOwn: a key pair already under the kid's label
// with another CKA_ID is refused, not returned and not doubled.
func TestPKCS11MakerFindsOnlyItsOwn(t *testing.T) {
	loc := signertest.SoftHSMToken(t, "foreign")
	pem := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(pem, signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o600)
	if out, err := exec.Command("softhsm2-util", "--import", pem, "--token", "tbt-foreign", "--label", kid, "--id", "01", "--pin", signertest.SoftHSMPin).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: loc})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Make(context.Background(), kid)
	wantErr(t, "Make over a foreign key", err, "not the kid")
	if privs, pubs, _ := hsmObjects(t, "tbt-foreign", kid); privs != 1 || pubs != 1 {
		t.Errorf("%d private and %d public objects, want the foreign pair alone", privs, pubs)
	}
	_, err = m.Make(context.Background(), "../x")
	wantErr(t, "bad kid", err, "kid")
}

func TestPKCS11MakerRefuses(t *testing.T) {
	t.Parallel()
	pin := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pin, []byte("1234\n"), 0o600)
	for _, tc := range []struct{ loc, want string }{
		{"pkcs11:token=t?module-path=/m.so&pin-value=1234", "location: pin-value"},
		{"pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:" + pin, "location: pkcs11 location: names a token, not a key"},
		{"pkcs11:token=t?pin-source=file:" + pin, "location: pkcs11 URI: module-path is required"},
		{"pkcs11:object=o?module-path=/m.so", "location: pkcs11 URI: name the token"},
		{"pkcs11:token=t?module-path=/m.so&pin-source=file:/nonexistent", "location: pkcs11 URI: pin-source"},
	} {
		_, err := keymaker.NewMaker(keymaker.MakerConfig{Location: tc.loc})
		wantErr(t, tc.loc, err, tc.want)
		if err != nil && strings.Contains(err.Error(), "1234") {
			t.Errorf("%s: the error shows the PIN: %v", tc.loc, err)
		}
	}
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "pkcs11:token=t?module-path=/nonexistent.so&pin-source=file:" + pin})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Make(context.Background(), kid)
	wantErr(t, "missing module", err, "pkcs11: open /nonexistent.so")
}
