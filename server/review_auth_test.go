package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// chainCert is a certificate of a test chain with its key.
type chainCert struct {
	der  []byte
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// mkCert makes a certificate named cn, signed by parent (self-signed when
// parent is nil), a CA or a client leaf.
func mkCert(t *testing.T, cn string, parent *chainCert, ca bool) *chainCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	} else {
		tmpl.KeyUsage, tmpl.ExtKeyUsage = x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{cn}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &chainCert{der: der, cert: c, key: key}
}

func ders(cs ...*chainCert) [][]byte {
	var out [][]byte
	for _, c := range cs {
		out = append(out, c.der)
	}
	return out
}

// TestPeerChainNeverVerifiedWithPeerKeys (review): chain building checks
// a signature with every candidate parent whose name matches. A peer with
// no certificate of ours sent intermediates named like our CA (or like
// the issuer of its own leaf), and each of its calls, refused or not,
// made the broker check signatures with the peer's keys: a hundred of them
// per call (the x509 limit), and with P-521 keys about half a second of
// CPU per call for a few bytes of HEADERS. Intermediates are now taken
// only when they chain to the callers' CA, found from the CA down, and a
// chain has at most MaxClientChain certificates. Real chains with
// intermediates, in any order, still work.
func TestPeerChainNeverVerifiedWithPeerKeys(t *testing.T) {
	t.Parallel()
	root := mkCert(t, "callers", nil, true)
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	auth := MTLS(roots)
	authWith := func(chain [][]byte) (string, error) {
		ctx, err := peerWith(chain...)
		if err != nil {
			t.Fatal(err)
		}
		id, err := auth(ctx)
		return id.String(), err
	}

	// A leaf "issued by" our CA's name, signed by the peer's own key,
	// with 150 intermediates of that name.
	fakeCA := mkCert(t, "callers", nil, true)
	leaf := mkCert(t, "mallory.example", fakeCA, false)
	chain := ders(leaf)
	for range 150 {
		chain = append(chain, mkCert(t, "callers", nil, true).der)
	}
	if _, err := authWith(chain); err == nil {
		t.Fatal("forged chain accepted")
	} else if strings.Contains(err.Error(), "signature check attempts limit") {
		t.Errorf("the broker checked signatures with the peer's keys until the x509 limit: %v", err)
	}

	// A few intermediates named like the issuer of the peer's leaf: not
	// one of their keys is tried (x509 names the candidate it tried in
	// "possibly because of ...").
	evil := mkCert(t, "evil", nil, true)
	leaf = mkCert(t, "mallory.example", evil, false)
	chain = ders(leaf)
	for range 3 {
		chain = append(chain, mkCert(t, "evil", nil, true).der)
	}
	if _, err := authWith(chain); err == nil {
		t.Fatal("foreign chain accepted")
	} else if strings.Contains(err.Error(), "possibly because of") {
		t.Errorf("a signature was checked with a key the peer sent: %v", err)
	}

	// Real chains: root -> int1 -> int2 -> leaf, intermediates in either
	// order, with a decoy named like int2 among them.
	int1 := mkCert(t, "int1", root, true)
	int2 := mkCert(t, "int2", int1, true)
	billing := mkCert(t, "billing.example", int2, false)
	decoy := mkCert(t, "int2", nil, true)
	for name, c := range map[string][][]byte{
		"in order":   ders(billing, int2, int1),
		"reversed":   ders(billing, int1, int2),
		"with decoy": ders(billing, decoy, int1, int2),
	} {
		if id, err := authWith(c); err != nil || id != "dns:billing.example" {
			t.Errorf("%s: %q, %v; want dns:billing.example", name, id, err)
		}
	}
	// An intermediate of another CA does not help.
	other := mkCert(t, "other", nil, true)
	otherInt := mkCert(t, "int2", other, true)
	if _, err := authWith(ders(mkCert(t, "x.example", otherInt, false), otherInt)); err == nil {
		t.Error("chain through another CA's intermediate accepted")
	}
}

// TestUnauthenticatedReasonBounded (review): the reason of an
// authentication refusal quoted the peer's certificate as x509 reported
// it (the name of a candidate issuer, of any length), so a peer could
// make the answer to each of its refused calls as large as it liked.
func TestUnauthenticatedReasonBounded(t *testing.T) {
	t.Parallel()
	root := mkCert(t, "callers", nil, true)
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	long := strings.Repeat("\x01", 8<<10)
	fake := mkCert(t, long, nil, true)
	leaf := mkCert(t, "mallory.example", fake, false)
	// A decoy of the same name with another key: x509 names it in its
	// error.
	decoy := mkCert(t, long, nil, true)
	ctx, err := peerWith(leaf.der, decoy.der)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{authenticate: MTLS(roots)}
	_, err = s.tap(ctx, &tap.Info{FullMethodName: "/tokenbroker.v1.TokenBrokerService/GetToken"})
	st := status.Convert(err)
	if st.Code() != codes.Unauthenticated {
		t.Fatalf("tap: %v, want Unauthenticated", err)
	}
	if n := len(st.Message()); n > 512 {
		t.Errorf("the refusal's message is %d bytes, want at most 512", n)
	}
}

// TestConstrainedCAMintsNoCommonName (review): X.509 name constraints
// bound DNS names, IP addresses, e-mail addresses and URIs, not the
// subject CN, and Go's verifier checks no constraint against it. A CA
// the callers' CA constrained to the names of one team (say DNS names
// under billing.example) could issue a certificate with no SAN at all
// and any CN, and the broker took that CN as the identity "cn:NAME". A CN
// is now an identity only when no certificate of the chain carries name
// constraints.
func TestConstrainedCAMintsNoCommonName(t *testing.T) {
	t.Parallel()
	root := mkCert(t, "callers", nil, true)
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	auth := MTLS(roots)

	// The team CA, constrained to billing.example.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "billing team CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		PermittedDNSDomainsCritical: true, PermittedDNSDomains: []string{"billing.example"},
		PermittedURIDomains: []string{"billing.example"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, &key.PublicKey, root.key)
	if err != nil {
		t.Fatal(err)
	}
	teamCert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	team := &chainCert{der: der, cert: teamCert, key: key}

	// Its own names are fine.
	ctx, err := peerWith(mkCert(t, "api.billing.example", team, false).der, team.der)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err != nil || id.String() != "dns:api.billing.example" {
		t.Errorf("a name the team CA may issue: %q, %v", id, err)
	}
	// A DNS name outside is refused by the verifier.
	ctx, err = peerWith(mkCert(t, "payroll.example", team, false).der, team.der)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err == nil {
		t.Errorf("a DNS name outside the team CA's constraints accepted as %q", id)
	}
	// A certificate with no SAN and the CN of another team.
	lk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(8), Subject: pkix.Name{CommonName: "payroll"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, team.cert, &lk.PublicKey, team.key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err = peerWith(leafDER, team.der)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err == nil {
		t.Errorf("a name-constrained CA minted the identity %q from a CN", id)
	}
	// Without constraints in the chain, a CN is still an identity.
	plain, err := x509.CreateCertificate(rand.Reader, leafTmpl, root.cert, &lk.PublicKey, root.key)
	if err != nil {
		t.Fatal(err)
	}
	if ctx, err = peerWith(plain); err != nil {
		t.Fatal(err)
	}
	if id, err := auth(ctx); err != nil || id.String() != "cn:payroll" {
		t.Errorf("a CN from the callers' CA itself: %q, %v; want cn:payroll", id, err)
	}
}
