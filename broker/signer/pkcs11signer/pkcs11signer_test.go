package pkcs11signer_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/pkcs11signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

func TestParseURI(t *testing.T) {
	t.Parallel()
	pin := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pin, []byte("9999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := pkcs11signer.ParseURI("pkcs11:token=tb%20one;object=mp-key;id=%01%02?module-path=/m.so&pin-source=file:" + pin)
	if err != nil {
		t.Fatal(err)
	}
	if u.Token != "tb one" || u.Object != "mp-key" || string(u.ID) != "\x01\x02" || u.ModulePath != "/m.so" {
		t.Errorf("parsed %+v", u)
	}
	for _, bad := range []string{
		"file:x",
		"pkcs11:token=t;object=o",           // no module
		"pkcs11:object=o?module-path=/m.so", // no token
		"pkcs11:token=t;serial=1;object=o?module-path=/m.so",   // two tokens
		"pkcs11:token=t?module-path=/m.so",                     // no key
		"pkcs11:token=t;object=o;colour=red?module-path=/m.so", // unknown attribute
		"pkcs11:token=t;object=o?module-path=/m.so&pin-value=1&pin-source=file:/x",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=/x", // not file:
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:/nonexistent/pin",
		"pkcs11:token=t;slot-id=x;object=o?module-path=/m.so",
	} {
		if _, err := pkcs11signer.ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) accepted", bad)
		}
	}
}

func TestSoftHSM(t *testing.T) {
	uri := signertest.SoftHSM(t, signertest.KeyA)
	key, err := pkcs11signer.Open(context.Background(), signer.Spec{URI: uri, KeyID: "hsm-a", Algorithm: signer.RS256})
	if err != nil {
		t.Fatal(err)
	}
	want := signertest.RSA(t, signertest.KeyA)
	if !key.Signer.Public().(*rsa.PublicKey).Equal(&want.PublicKey) || key.Backend != "pkcs11" {
		t.Fatalf("opened %v, want test key A", key)
	}
	verify := func() {
		t.Helper()
		digest := sha256.Sum256([]byte("grant"))
		sig, err := key.Sign(rand.Reader, digest[:])
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		if err := rsa.VerifyPKCS1v15(&want.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("signature does not verify: %v", err)
		}
	}
	verify()

	// Lose every session, as an HSM restart would: the next signature
	// reopens and succeeds.
	p := pkcs11.New(signertest.SoftHSMModule)
	if err := p.Initialize(); err != nil && !strings.Contains(err.Error(), "CKR_CRYPTOKI_ALREADY_INITIALIZED") {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	closed := 0
	for _, s := range slots {
		if info, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(info.Label) == "tb-"+signertest.KeyA {
			if err := p.CloseAllSessions(s); err != nil {
				t.Fatal(err)
			}
			closed++
		}
	}
	if closed != 1 {
		t.Fatalf("closed the sessions of %d tokens, want 1", closed)
	}
	verify()
	verify()
}

func TestOpenFailsFast(t *testing.T) {
	// Key B's token is logged into by no other test of this process (a
	// token stays logged in for the whole process once a PIN worked).
	uriB := signertest.SoftHSM(t, signertest.KeyB)
	if _, err := pkcs11signer.Open(context.Background(), signer.Spec{URI: strings.Replace(uriB, "pin-value="+signertest.SoftHSMPin, "pin-value=0000", 1), KeyID: "k", Algorithm: ""}); err == nil {
		t.Error("wrong PIN: opened")
	} else if strings.Contains(err.Error(), "0000") {
		t.Errorf("wrong PIN: error shows the PIN: %v", err)
	}
	uri := signertest.SoftHSM(t, signertest.KeyA)
	for name, bad := range map[string]string{
		"wrong_object": strings.Replace(strings.Replace(uri, "object=mp-key", "object=nope", 1), ";id=%01", "", 1),
		"wrong_token":  strings.Replace(uri, "token=tb-", "token=none-", 1),
		"wrong_module": strings.Replace(uri, signertest.SoftHSMModule, "/nonexistent.so", 1),
	} {
		_, err := pkcs11signer.Open(context.Background(), signer.Spec{URI: bad, KeyID: "k", Algorithm: ""})
		if err == nil {
			t.Errorf("%s: opened", name)
			continue
		}
	}
}
