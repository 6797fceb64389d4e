package signertest

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// EnterpriseCert makes an enterprise certificate ("virksomhetssertifikat")
// for key A naming organisation org in its subject serialNumber, issued by a
// CA whose key is key B, and returns it as a PKCS#12 file encrypted with
// password, together with a pool holding the CA.
func EnterpriseCert(tb testing.TB, org, password string) ([]byte, *x509.CertPool) {
	tb.Helper()
	caKey, leafKey := RSA(tb, KeyB), RSA(tb, KeyA)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Enterprise CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "TEST VENDOR AS", SerialNumber: org, Organization: []string{"TEST VENDOR AS"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	p12, err := pkcs12.Modern.Encode(leafKey, leaf, []*x509.Certificate{ca}, password)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return p12, pool
}

// EnterpriseKey makes an enterprise certificate for org as EnterpriseCert
// does and returns it as a signer.Key (key A, RS256, with the chain, leaf
// first, so that grants carry x5c), together with a pool holding the CA.
func EnterpriseKey(tb testing.TB, org string) (*signer.Key, *x509.CertPool) {
	tb.Helper()
	p12, pool := EnterpriseCert(tb, org, "signertest")
	priv, leaf, cas, err := pkcs12.DecodeChain(p12, "signertest")
	if err != nil {
		tb.Fatal(err)
	}
	k, err := signer.New("cert-"+org, signer.RS256, priv.(crypto.Signer), "memory")
	if err != nil {
		tb.Fatal(err)
	}
	k.Chain = append([]*x509.Certificate{leaf}, cas...)
	return k, pool
}
