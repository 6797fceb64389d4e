// Package signertest hands tests pre-generated RSA keys, so that no test
// spends time generating keys and every run signs with the same material.
// The keys in testdata/ are test keys only; they are registered nowhere.
package signertest

import (
	"crypto/rsa"
	"crypto/x509"
	"embed"
	"encoding/pem"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

//go:embed testdata/*.pem
var files embed.FS

// Names of the 2048-bit RSA keys in testdata.
const (
	KeyA = "rsa-a"
	KeyB = "rsa-b"
)

// PEM returns the content of testdata/<file>.
func PEM(tb testing.TB, file string) []byte {
	tb.Helper()
	b, err := files.ReadFile("testdata/" + file)
	if err != nil {
		tb.Fatalf("signertest: %v", err)
	}
	return b
}

// RSA returns the private key called name (KeyA or KeyB).
func RSA(tb testing.TB, name string) *rsa.PrivateKey {
	tb.Helper()
	block, _ := pem.Decode(PEM(tb, name+".pkcs1.pem"))
	if block == nil {
		tb.Fatalf("signertest: %s: no PEM block", name)
	}
	k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		tb.Fatalf("signertest: %s: %v", name, err)
	}
	return k
}

// Key returns the key called name as a RS256 signer.Key with the given kid.
func Key(tb testing.TB, name, kid string) *signer.Key {
	tb.Helper()
	k, err := signer.New(kid, signer.RS256, RSA(tb, name), "memory")
	if err != nil {
		tb.Fatalf("signertest: %v", err)
	}
	return k
}
