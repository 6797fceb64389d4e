package maskinportentest_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const (
	clientID = "client-1"
	scope    = "altinn:systembruker.demo"
	org      = "310904473"
)

type fixture struct {
	emu *maskinportentest.Emulator
	url string
	now time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	now := time.Unix(1_800_000_000, 0)
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{
		SigningKey: signertest.RSA(t, signertest.KeyB),
		Now:        func() time.Time { return now },
	})
	pub, err := signertest.Key(t, signertest.KeyA, "kid-a").PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.AddClient(maskinportentest.Client{ID: clientID, Org: "991825827", SystemID: "991825827_x", Scopes: []string{scope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser(clientID, org, "")
	emu.ApproveSystemUser(clientID, org, "ref-1")
	return &fixture{emu: emu, url: srv.URL, now: now}
}

// claims returns a valid system user grant body.
func (f *fixture) claims() map[string]any {
	return map[string]any{
		"aud":   f.emu.Issuer(),
		"iss":   clientID,
		"iat":   f.now.Unix(),
		"exp":   f.now.Unix() + 60,
		"jti":   "jti-" + time.Now().Format(time.RFC3339Nano),
		"scope": scope,
		"authorization_details": []any{map[string]any{
			"type":           "urn:altinn:systemuser",
			"systemuser_org": map[string]any{"authority": "iso6523-actorid-upis", "ID": "0192:" + org},
		}},
	}
}

func sign(t *testing.T, claims map[string]any, alg jwa.SignatureAlgorithm, kid string, keyName string) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	hdr := jws.NewHeaders()
	if kid != "" {
		if err := hdr.Set(jws.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
	}
	out, err := jws.Sign(payload, jws.WithKey(alg, signertest.RSA(t, keyName), jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// post sends assertion and returns the status and the decoded answer.
func (f *fixture) post(t *testing.T, assertion string) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(f.url+"/token", url.Values{
		"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"},
		"assertion":  {assertion},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("answer not JSON: %v", err)
	}
	return resp.StatusCode, body
}

func TestEmulatorAcceptsValidGrant(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	status, body := f.post(t, sign(t, f.claims(), jwa.RS256, "kid-a", signertest.KeyA))
	if status != 200 {
		t.Fatalf("status %d: %v", status, body)
	}
	if body["token_type"] != "Bearer" || body["expires_in"] != float64(120) || body["scope"] != scope {
		t.Errorf("answer = %v", body)
	}
	tok, _ := body["access_token"].(string)
	payload, err := jws.Verify([]byte(tok), jws.WithKeySet(f.emu.PublicJWKS(), jws.WithInferAlgorithmFromKey(true)))
	if err != nil {
		t.Fatalf("issued token does not verify with the emulator's JWKS: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	ad := claims["authorization_details"].([]any)[0].(map[string]any)
	if ad["systemuser_org"].(map[string]any)["ID"] != "0192:"+org || len(ad["systemuser_id"].([]any)) != 1 {
		t.Errorf("authorization_details = %v", ad)
	}
	if claims["consumer"].(map[string]any)["ID"] != "0192:991825827" || claims["client_id"] != clientID {
		t.Errorf("token claims = %v", claims)
	}
	if f.emu.Issued() != 1 || f.emu.Requests() != 1 {
		t.Errorf("issued %d requests %d, want 1 1", f.emu.Issued(), f.emu.Requests())
	}
}

func TestEmulatorRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(f *fixture, c map[string]any)
		alg    jwa.SignatureAlgorithm
		kid    string
		key    string
		code   string
		mpCode string
	}{
		{name: "unknown_claim", mutate: func(f *fixture, c map[string]any) { c["sub"] = clientID }, code: "invalid_grant", mpCode: "Invalid assertion"},
		{name: "aud_token_url", mutate: func(f *fixture, c map[string]any) { c["aud"] = f.url + "/token" }, code: "invalid_grant", mpCode: "MP-110"},
		{name: "aud_array", mutate: func(f *fixture, c map[string]any) { c["aud"] = []string{f.emu.Issuer()} }, code: "invalid_grant", mpCode: "MP-110"},
		{name: "lifetime_121s", mutate: func(f *fixture, c map[string]any) { c["exp"] = f.now.Unix() + 121 }, code: "invalid_grant", mpCode: "exceeds 120"},
		{name: "iat_11s_ahead", mutate: func(f *fixture, c map[string]any) {
			c["iat"] = f.now.Unix() + 11
			c["exp"] = f.now.Unix() + 60
		}, code: "invalid_grant", mpCode: "Issue time is after now"},
		{name: "expired", mutate: func(f *fixture, c map[string]any) {
			c["iat"] = f.now.Unix() - 100
			c["exp"] = f.now.Unix() - 20
		}, code: "invalid_grant", mpCode: "MP-130"},
		{name: "unknown_client", mutate: func(f *fixture, c map[string]any) { c["iss"] = "nobody" }, code: "invalid_grant", mpCode: "MP-100"},
		{name: "scope_not_registered", mutate: func(f *fixture, c map[string]any) { c["scope"] = scope + " other:scope" }, code: "invalid_scope", mpCode: "MP-200"},
		{name: "no_scope", mutate: func(f *fixture, c map[string]any) { delete(c, "scope") }, code: "invalid_scope", mpCode: "MP-200"},
		{name: "wrong_kid", kid: "kid-z", code: "invalid_grant", mpCode: "Unknown key identifier (kid) for client"},
		{name: "no_kid", kid: "-", code: "invalid_grant", mpCode: "MP-124"},
		{name: "wrong_key", key: signertest.KeyB, code: "invalid_grant", mpCode: "MP-124"},
		{name: "hs256", alg: jwa.HS256, code: "invalid_grant", mpCode: "MP-124"},
		{name: "details_unknown_type", mutate: func(f *fixture, c map[string]any) {
			c["authorization_details"].([]any)[0].(map[string]any)["type"] = "urn:altinn:other"
		}, code: "invalid_authorization_details", mpCode: "MP-301"},
		{name: "details_unknown_field", mutate: func(f *fixture, c map[string]any) {
			c["authorization_details"].([]any)[0].(map[string]any)["resource"] = "x"
		}, code: "invalid_authorization_details", mpCode: "MP-302"},
		{name: "details_two_elements", mutate: func(f *fixture, c map[string]any) {
			d := c["authorization_details"].([]any)
			c["authorization_details"] = append(d, d[0])
		}, code: "invalid_authorization_details", mpCode: "MP-303"},
		{name: "details_lowercase_id", mutate: func(f *fixture, c map[string]any) {
			c["authorization_details"].([]any)[0].(map[string]any)["systemuser_org"] = map[string]any{"authority": "iso6523-actorid-upis", "id": "0192:" + org}
		}, code: "invalid_authorization_details", mpCode: "MP-302"},
		{name: "no_system_user", mutate: func(f *fixture, c map[string]any) {
			c["authorization_details"].([]any)[0].(map[string]any)["systemuser_org"] = map[string]any{"authority": "iso6523-actorid-upis", "ID": "0192:314250052"}
		}, code: "invalid_altinn_customer_configuration", mpCode: "MP-303"},
		{name: "wrong_external_ref", mutate: func(f *fixture, c map[string]any) {
			c["authorization_details"].([]any)[0].(map[string]any)["externalRef"] = "ref-2"
		}, code: "invalid_altinn_customer_configuration", mpCode: "MP-303"},
		{name: "invalid_org", mutate: func(f *fixture, c map[string]any) {
			c["authorization_details"].([]any)[0].(map[string]any)["systemuser_org"] = map[string]any{"authority": "iso6523-actorid-upis", "ID": "0192:123456789"}
		}, code: "invalid_altinn_customer_configuration", mpCode: "MP-303"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			c := f.claims()
			if tc.mutate != nil {
				tc.mutate(f, c)
			}
			alg, kid, key := jwa.RS256, "kid-a", signertest.KeyA
			if tc.kid != "" {
				kid = strings.TrimPrefix(tc.kid, "-")
			}
			if tc.key != "" {
				key = tc.key
			}
			var assertion string
			if tc.alg == jwa.HS256 {
				payload, _ := json.Marshal(c)
				out, err := jws.Sign(payload, jws.WithKey(jwa.HS256, []byte("secret-secret-secret-secret-1234")))
				if err != nil {
					t.Fatal(err)
				}
				assertion = string(out)
			} else {
				assertion = sign(t, c, alg, kid, key)
			}
			status, body := f.post(t, assertion)
			if status != 400 || body["error"] != tc.code || !strings.Contains(body["error_description"].(string), tc.mpCode) {
				t.Errorf("status %d body %v; want 400 %s with %q", status, body, tc.code, tc.mpCode)
			}
			if f.emu.Issued() != 0 {
				t.Errorf("issued %d tokens", f.emu.Issued())
			}
		})
	}
}

func TestEmulatorExternalRefMatches(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.claims()
	c["authorization_details"].([]any)[0].(map[string]any)["externalRef"] = "ref-1"
	if status, body := f.post(t, sign(t, c, jwa.RS256, "kid-a", signertest.KeyA)); status != 200 {
		t.Fatalf("status %d: %v", status, body)
	}
	// An explicit externalRef equal to the org number is the default one.
	c = f.claims()
	c["authorization_details"].([]any)[0].(map[string]any)["externalRef"] = org
	if status, body := f.post(t, sign(t, c, jwa.RS256, "kid-a", signertest.KeyA)); status != 200 {
		t.Fatalf("status %d: %v", status, body)
	}
}

func TestEmulatorReplay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := sign(t, f.claims(), jwa.RS256, "kid-a", signertest.KeyA)
	if status, body := f.post(t, a); status != 200 {
		t.Fatalf("first use: %d %v", status, body)
	}
	status, body := f.post(t, a)
	if status != 400 || !strings.Contains(body["error_description"].(string), "MP-012") {
		t.Errorf("replay: %d %v; want MP-012", status, body)
	}
}

func TestEmulatorRequestShape(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := sign(t, f.claims(), jwa.RS256, "kid-a", signertest.KeyA)
	// A JSON body, as some Altinn pages wrongly show, is refused.
	resp, err := http.Post(f.url+"/token", "application/json", strings.NewReader(`{"grant_type":"urn:ietf:params:oauth:grant-type:jwt-bearer","assertion":"`+a+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("JSON body: status %d, want 400", resp.StatusCode)
	}
	resp, err = http.PostForm(f.url+"/token", url.Values{"grant_type": {"client_credentials"}, "assertion": {a}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("wrong grant type: status %d, want 400", resp.StatusCode)
	}
	resp, err = http.Get(f.url + "/token")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: status %d, want 405", resp.StatusCode)
	}
	if f.emu.Issued() != 0 || f.emu.Requests() != 3 {
		t.Errorf("issued %d requests %d, want 0 and 3", f.emu.Issued(), f.emu.Requests())
	}
}
