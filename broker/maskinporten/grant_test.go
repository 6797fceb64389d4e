package maskinporten_test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

func newTestClient(tb testing.TB, mutate func(*maskinporten.Config)) *maskinporten.Client {
	tb.Helper()
	cfg := maskinporten.Config{
		ClientID:    "7ee41fce-9f6e-4c32-8195-0fe2c1517f43",
		Key:         signertest.Key(tb, signertest.KeyA, "kid-a"),
		Environment: maskinporten.Test,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := maskinporten.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// decode splits a compact JWS, verifies it with key and returns header and
// claims as generic JSON objects.
func decode(t *testing.T, compact string, k *signer.Key) (map[string]any, map[string]any) {
	t.Helper()
	pub, err := k.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	payload, err := jws.Verify([]byte(compact), jws.WithKey(k.Algorithm.JWA(), pub))
	if err != nil {
		t.Fatalf("grant does not verify with the public key: %v", err)
	}
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		t.Fatalf("grant has %d parts", len(parts))
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr, claims map[string]any
	if err := json.Unmarshal(hb, &hdr); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return hdr, claims
}

func TestGrantClaims(t *testing.T) {
	t.Parallel()
	now := time.Unix(1718124715, 0)
	c := newTestClient(t, nil)
	cl, err := c.Grant(maskinporten.Request{
		Scopes:      []string{"altinn:a", "skatteetaten:b"},
		CustomerOrg: "310904473",
		ExternalRef: "tenant-1",
		Resource:    "https://api.example/",
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	compact, err := c.Sign(cl)
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := decode(t, compact, signertest.Key(t, signertest.KeyA, "kid-a"))

	if len(hdr) != 2 || hdr["alg"] != "RS256" || hdr["kid"] != "kid-a" {
		t.Errorf("header = %v, want exactly alg RS256 and kid kid-a", hdr)
	}
	want := map[string]any{
		"aud":   "https://test.maskinporten.no/",
		"iss":   "7ee41fce-9f6e-4c32-8195-0fe2c1517f43",
		"iat":   float64(1718124715),
		"exp":   float64(1718124715 + 60),
		"scope": "altinn:a skatteetaten:b",
		"resource": []any{
			"https://api.example/",
		},
		"authorization_details": []any{map[string]any{
			"type":           "urn:altinn:systemuser",
			"systemuser_org": map[string]any{"authority": "iso6523-actorid-upis", "ID": "0192:310904473"},
			"externalRef":    "tenant-1",
		}},
	}
	documented := map[string]bool{"aud": true, "iss": true, "iat": true, "exp": true, "jti": true, "scope": true,
		"resource": true, "pid": true, "consumer_org": true, "authorization_details": true}
	for name := range claims {
		if !documented[name] {
			t.Errorf("undocumented claim %q in grant", name)
		}
	}
	for name, w := range want {
		gj, err := json.Marshal(claims[name])
		if err != nil {
			t.Fatal(err)
		}
		wj, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		if string(gj) != string(wj) {
			t.Errorf("claim %s = %s, want %s", name, gj, wj)
		}
	}
	if jti, _ := claims["jti"].(string); len(jti) != 36 {
		t.Errorf("jti = %v, want a UUID", claims["jti"])
	}
	if len(claims) != len(want)+1 {
		t.Errorf("grant has %d claims, want %d: %v", len(claims), len(want)+1, claims)
	}
}

func TestGrantOmitsOptionalClaims(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, nil)
	cl, err := c.Grant(maskinporten.Request{Scopes: []string{"altinn:a"}, CustomerOrg: "310904473"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	compact, err := c.Sign(cl)
	if err != nil {
		t.Fatal(err)
	}
	_, claims := decode(t, compact, signertest.Key(t, signertest.KeyA, "kid-a"))
	if _, ok := claims["resource"]; ok {
		t.Error("resource present without a resource in the request")
	}
	ad := claims["authorization_details"].([]any)[0].(map[string]any)
	if _, ok := ad["externalRef"]; ok {
		t.Error("externalRef present without an external ref in the request")
	}
	if len(ad) != 2 {
		t.Errorf("authorization_details element = %v, want type and systemuser_org only", ad)
	}
}

func TestGrantResourceAsString(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, func(cfg *maskinporten.Config) { cfg.ResourceAsString = true })
	cl, err := c.Grant(maskinporten.Request{Scopes: []string{"a:b"}, Resource: "https://x.example/"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if cl.Resource != "https://x.example/" {
		t.Errorf("resource = %#v, want a string", cl.Resource)
	}
	if cl.AuthorizationDetails != nil {
		t.Errorf("authorization_details without customer org: %v", cl.AuthorizationDetails)
	}
}

func TestGrantLifetimeAndAlgorithm(t *testing.T) {
	t.Parallel()
	for _, alg := range []signer.Algorithm{signer.RS256, signer.RS384, signer.RS512} {
		key, err := signer.New("kid-b", alg, signertest.RSA(t, signertest.KeyB), "memory")
		if err != nil {
			t.Fatal(err)
		}
		c := newTestClient(t, func(cfg *maskinporten.Config) {
			cfg.Key = key
			cfg.GrantLifetime = 120 * time.Second
			cfg.Environment = maskinporten.Prod
		})
		cl, err := c.Grant(maskinporten.Request{Scopes: []string{"a:b"}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		compact, err := c.Sign(cl)
		if err != nil {
			t.Fatal(err)
		}
		hdr, claims := decode(t, compact, key)
		if hdr["alg"] != string(alg) {
			t.Errorf("alg = %v, want %s", hdr["alg"], alg)
		}
		if got := claims["exp"].(float64) - claims["iat"].(float64); got != 120 {
			t.Errorf("exp - iat = %v, want 120", got)
		}
		if claims["aud"] != "https://maskinporten.no/" {
			t.Errorf("aud = %v, want the prod issuer", claims["aud"])
		}
	}
	if _, err := maskinporten.New(maskinporten.Config{
		ClientID: "x", Key: signertest.Key(t, signertest.KeyA, "k"), Environment: maskinporten.Test,
		GrantLifetime: 121 * time.Second,
	}); err == nil {
		t.Error("grant lifetime of 121s accepted")
	}
}

func TestGrantUniqueJTI(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, nil)
	seen := map[string]bool{}
	now := time.Now()
	for i := 0; i < 1000; i++ {
		cl, err := c.Grant(maskinporten.Request{Scopes: []string{"a:b"}, CustomerOrg: "310904473"}, now)
		if err != nil {
			t.Fatal(err)
		}
		if seen[cl.JWTID] {
			t.Fatalf("jti %q repeated after %d grants", cl.JWTID, i)
		}
		seen[cl.JWTID] = true
	}
}

func TestGrantNeedsScope(t *testing.T) {
	t.Parallel()
	if _, err := newTestClient(t, nil).Grant(maskinporten.Request{}, time.Now()); err == nil {
		t.Error("grant without scope accepted")
	}
}
