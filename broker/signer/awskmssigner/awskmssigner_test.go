package awskmssigner_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

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
		key, err := awskmssigner.Open(context.Background(), signer.Spec{URI: uri, KeyID: "kms-a", Algorithm: alg})
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
	key, err := awskmssigner.Open(context.Background(), signer.Spec{URI: uri, KeyID: "kms-a", Algorithm: ""})
	if err != nil {
		t.Fatal(err)
	}
	d := sha512.Sum512_224([]byte("x"))
	if _, err := key.Signer.Sign(nil, d[:], crypto.SHA512_224); err == nil {
		t.Error("unsupported hash accepted")
	}
	bad := strings.Replace(uri, "awskms:", "awskms:00000000-0000-0000-0000-000000000000-nope", 1)
	if _, err := awskmssigner.Open(context.Background(), signer.Spec{URI: bad, KeyID: "k", Algorithm: ""}); err == nil {
		t.Error("unknown key id opened")
	}
}

// deadlineKMS is a fake KMS that records the deadline of each Sign.
type deadlineKMS struct {
	key      *rsa.PrivateKey
	deadline time.Time
}

func (f *deadlineKMS) GetPublicKey(context.Context, *kms.GetPublicKeyInput, ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	der, err := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	return &kms.GetPublicKeyOutput{PublicKey: der, KeyUsage: types.KeyUsageTypeSignVerify}, err
}

func (f *deadlineKMS) Sign(ctx context.Context, in *kms.SignInput, _ ...func(*kms.Options)) (*kms.SignOutput, error) {
	f.deadline, _ = ctx.Deadline()
	sig, err := rsa.SignPKCS1v15(rand.Reader, f.key, crypto.SHA256, in.Message)
	return &kms.SignOutput{Signature: sig}, err
}

// TestCallTimeout: the configured call timeout, not a built-in one, bounds
// each signature.
func TestCallTimeout(t *testing.T) {
	f := &deadlineKMS{key: signertest.RSA(t, signertest.KeyA)}
	key, err := awskmssigner.New(context.Background(), f, "k", "kms-a", signer.RS256, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := key.Sign(rand.Reader, crypto.SHA256.New().Sum(nil)); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(f.deadline); left < 30*time.Minute {
		t.Errorf("sign deadline %v away, want the configured hour", left)
	}
}
