package signer_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

func TestParseAlgorithm(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]signer.Algorithm{"": signer.RS256, "RS256": signer.RS256, "rs384": signer.RS384, " RS512 ": signer.RS512} {
		if got, err := signer.ParseAlgorithm(in); err != nil || got != want {
			t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"ES256", "PS256", "HS256", "none", "RS1"} {
		if got, err := signer.ParseAlgorithm(in); err == nil {
			t.Errorf("ParseAlgorithm(%q) = %q, want refused", in, got)
		}
	}
	for alg, h := range map[signer.Algorithm]crypto.Hash{signer.RS256: crypto.SHA256, signer.RS384: crypto.SHA384, signer.RS512: crypto.SHA512} {
		if alg.Hash() != h || string(alg.JWA()) != string(alg) {
			t.Errorf("%s: hash %v, JWA %v", alg, alg.Hash(), alg.JWA())
		}
	}
}

func parsePKCS8(t *testing.T, file string) crypto.Signer {
	t.Helper()
	block, _ := pem.Decode(signertest.PEM(t, file))
	if block == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

func TestNewRefusesWeakOrForeignKeys(t *testing.T) {
	t.Parallel()
	rsaA := signertest.RSA(t, signertest.KeyA)
	for name, tc := range map[string]struct {
		kid string
		alg signer.Algorithm
		s   crypto.Signer
	}{
		"empty_kid": {" ", signer.RS256, rsaA},
		"bad_alg":   {"k", "ES256", rsaA},
		"ec_key":    {"k", signer.RS256, parsePKCS8(t, "ec-p256.pkcs8.pem")},
		"rsa_1024":  {"k", signer.RS256, parsePKCS8(t, "rsa-1024.pem")},
	} {
		if k, err := signer.New(tc.kid, tc.alg, tc.s, "memory"); err == nil {
			t.Errorf("%s: New accepted %v", name, k)
		}
	}
	k, err := signer.New("kid-a", "", rsaA, "memory")
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyID != "kid-a" || k.Algorithm != signer.RS256 || k.Backend != "memory" || !k.NotAfter().IsZero() {
		t.Errorf("key = %+v", k)
	}
}

func TestSignVerifiesWithTheAlgorithmsHash(t *testing.T) {
	t.Parallel()
	priv := signertest.RSA(t, signertest.KeyA)
	for _, alg := range []signer.Algorithm{signer.RS256, signer.RS384, signer.RS512} {
		k, err := signer.New("k", alg, priv, "memory")
		if err != nil {
			t.Fatal(err)
		}
		h := alg.Hash().New()
		h.Write([]byte("grant"))
		digest := h.Sum(nil)
		sig, err := k.Sign(rand.Reader, digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(&priv.PublicKey, alg.Hash(), digest, sig); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
	}
}

// TestPublicJWKHoldsNoPrivatePart: the JWK registered at Maskinporten has
// kid, alg and use, and none of the private key's members.
func TestPublicJWKHoldsNoPrivatePart(t *testing.T) {
	t.Parallel()
	k, err := signer.New("kid-x", signer.RS384, signertest.RSA(t, signertest.KeyB), "memory")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["kid"] != "kid-x" || m["alg"] != "RS384" || m["use"] != "sig" || m["kty"] != "RSA" || m["n"] == nil {
		t.Errorf("public JWK = %s", b)
	}
	for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
		if _, ok := m[private]; ok {
			t.Errorf("public JWK holds %q", private)
		}
	}
}

// TestKeyFormatsNothingSecret: printing a key names it, never its private
// numbers.
func TestKeyFormatsNothingSecret(t *testing.T) {
	t.Parallel()
	priv := signertest.RSA(t, signertest.KeyA)
	k, err := signer.New("kid-a", signer.RS256, priv, "file")
	if err != nil {
		t.Fatal(err)
	}
	s := k.String()
	if s != `file key "kid-a" (RS256)` {
		t.Errorf("String() = %q", s)
	}
	d := priv.D.String()
	for _, f := range []string{fmt.Sprint(k), fmt.Sprintf("%v", k), fmt.Sprintf("%s", k)} { //nolint:staticcheck // S1025: the %s verb itself is what is tested
		if strings.Contains(f, d[:20]) || strings.Contains(f, priv.D.Text(16)[:20]) {
			t.Errorf("formatting the key prints its private exponent: %s", f)
		}
	}
}

func TestNotAfterIsTheLeafs(t *testing.T) {
	t.Parallel()
	k := signertest.Key(t, signertest.KeyA, "k")
	leafEnd := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	k.Chain = []*x509.Certificate{{NotAfter: leafEnd, SerialNumber: big.NewInt(1)}, {NotAfter: leafEnd.AddDate(5, 0, 0)}}
	if got := k.NotAfter(); !got.Equal(leafEnd) {
		t.Errorf("NotAfter = %v, want the leaf's %v", got, leafEnd)
	}
}

// blockingSigner signs only once release is closed; it records that it was
// called.
type blockingSigner struct {
	crypto.Signer
	release chan struct{}
	fail    error
	instant atomic.Bool // answer at once with a dummy signature
}

func (b *blockingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if b.instant.Load() {
		return []byte("sig"), nil
	}
	<-b.release
	if b.fail != nil {
		return nil, b.fail
	}
	return b.Signer.Sign(r, d, o)
}

// TestGuardTimesOutAndTracksHealth: a backend that does not answer within
// the timeout fails the signature with ErrTimeout and marks the key
// unhealthy; the next good signature marks it healthy again. onChange is
// called once per change.
func TestGuardTimesOutAndTracksHealth(t *testing.T) {
	t.Parallel()
	priv := signertest.RSA(t, signertest.KeyA)
	bs := &blockingSigner{Signer: priv, release: make(chan struct{})}
	var mu sync.Mutex
	var changes []bool
	g := signer.Guard(bs, time.Millisecond, func(ok bool) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, ok)
	})
	if !g.Healthy() {
		t.Fatal("a new guard is unhealthy")
	}
	digest := make([]byte, 32)
	// The backend cannot answer before release closes, which is after
	// Sign returned: the timeout must have fired.
	if _, err := g.Sign(nil, digest, crypto.SHA256); !errors.Is(err, signer.ErrTimeout) {
		t.Fatalf("hanging backend: %v, want ErrTimeout", err)
	}
	if g.Healthy() {
		t.Error("healthy after a timeout")
	}
	if err := g.Probe(crypto.SHA256); !errors.Is(err, signer.ErrTimeout) {
		t.Fatalf("probe of a hanging backend: %v", err)
	}
	close(bs.release)
	g2 := signer.Guard(bs, time.Hour, nil)
	sig, err := g2.Sign(nil, digest, crypto.SHA256)
	if err != nil || rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA256, digest, sig) != nil {
		t.Fatalf("released backend: %v", err)
	}
	// The first guard recovers on its next good signature.
	bs.instant.Store(true)
	if err := waitHealthy(g); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 2 || changes[0] || !changes[1] {
		t.Errorf("onChange calls %v, want [false true]", changes)
	}
}

// waitHealthy signs until the guard's timeout no longer fires first (the
// released backend answers at once, but a 1 ms timer may still win a race
// on a loaded machine): a good signature must come, and turn it healthy.
func waitHealthy(g *signer.Guarded) error {
	for i := 0; i < 10_000; i++ {
		if err := g.Probe(crypto.SHA256); err == nil {
			if !g.Healthy() {
				return errors.New("a good signature left the guard unhealthy")
			}
			return nil
		} else if !errors.Is(err, signer.ErrTimeout) {
			return err
		}
	}
	return errors.New("no signature within the timeout in 10,000 tries")
}

func TestGuardPassesBackendErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("HSM says no")
	bs := &blockingSigner{Signer: signertest.RSA(t, signertest.KeyA), release: make(chan struct{}), fail: boom}
	close(bs.release)
	g := signer.Guard(bs, 0, nil)
	if _, err := g.Sign(nil, make([]byte, 32), crypto.SHA256); !errors.Is(err, boom) {
		t.Errorf("error = %v, want the backend's", err)
	}
	if g.Healthy() {
		t.Error("healthy after a failed signature")
	}
}
