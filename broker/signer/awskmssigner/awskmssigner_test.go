package awskmssigner_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/awskmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

func TestParseURI(t *testing.T) {
	t.Parallel()
	u, err := awskmssigner.ParseURI("awskms:arn:aws:kms:eu-north-1:111122223333:key/abc?region=eu-north-1&endpoint=https://kms.internal")
	if err != nil || u.KeyID != "arn:aws:kms:eu-north-1:111122223333:key/abc" || u.Region != "eu-north-1" || u.Endpoint != "https://kms.internal" {
		t.Fatalf("ParseURI = %+v, %v", u, err)
	}
	for _, bad := range []string{"file:x", "awskms:", "awskms:k?colour=red", "awskms:k?endpoint=ftp://x", "awskms:k?endpoint=%zz"} {
		if _, err := awskmssigner.ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) accepted", bad)
		}
	}
}

func TestLocalKMS(t *testing.T) {
	uri := signertest.LocalKMS(t)
	for _, alg := range []signer.Algorithm{signer.RS256, signer.RS512} {
		key, err := awskmssigner.Open(context.Background(), uri, "kms-a", alg)
		if err != nil {
			t.Fatal(err)
		}
		if key.Backend != "awskms" {
			t.Errorf("backend %q", key.Backend)
		}
		h := alg.Hash().New()
		h.Write([]byte("grant"))
		digest := h.Sum(nil)
		sig, err := key.Sign(rand.Reader, digest)
		if err != nil {
			t.Fatalf("%s: sign: %v", alg, err)
		}
		if err := rsa.VerifyPKCS1v15(key.Signer.Public().(*rsa.PublicKey), alg.Hash(), digest, sig); err != nil {
			t.Errorf("%s: signature does not verify with the KMS public key: %v", alg, err)
		}
	}
	key, err := awskmssigner.Open(context.Background(), uri, "kms-a", "")
	if err != nil {
		t.Fatal(err)
	}
	d := sha512.Sum512_224([]byte("x"))
	if _, err := key.Signer.Sign(nil, d[:], crypto.SHA512_224); err == nil {
		t.Error("unsupported hash accepted")
	}
	bad := strings.Replace(uri, "awskms:", "awskms:00000000-0000-0000-0000-000000000000-nope", 1)
	if _, err := awskmssigner.Open(context.Background(), bad, "k", ""); err == nil {
		t.Error("unknown key id opened")
	}
}
