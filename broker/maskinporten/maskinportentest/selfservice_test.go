package maskinportentest_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const (
	vendorOrg   = "991825827"
	otherOrg    = "314250052"
	targetID    = "target-1"
	otherID     = "other-1"
	suppliedID  = "supplied-1"
	adminID     = "admin-1"
	otherAdmin  = "admin-2"
	kidAdminID  = "admin-kid"
	targetScope = "altinn:systembruker.demo"
	allDCR      = "idporten:dcr.read idporten:dcr.write"
)

// ssFixture is an emulator with a vendor's admin client (enterprise
// certificate), the vendor's target client with key A as kid-a, a client
// of another organisation and an admin client of that organisation.
type ssFixture struct {
	emu   *maskinportentest.Emulator
	url   string
	clock atomic.Int64 // unix seconds
	start time.Time
	admin *signer.Key
	other *signer.Key
}

func (f *ssFixture) now() time.Time { return time.Unix(f.clock.Load(), 0) }

func (f *ssFixture) advance(d time.Duration) { f.clock.Add(int64(d / time.Second)) }

func newSSFixture(t *testing.T) *ssFixture {
	t.Helper()
	f := &ssFixture{start: time.Unix(1_800_000_000, 0)}
	f.clock.Store(f.start.Unix())
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{
		SigningKey: signertest.RSA(t, signertest.KeyB),
		Now:        f.now,
	})
	f.emu, f.url = emu, srv.URL
	admin, pool := signertest.EnterpriseKey(t, vendorOrg)
	other, otherPool := signertest.EnterpriseKey(t, otherOrg)
	f.admin, f.other = admin, other
	pubA, err := signertest.Key(t, signertest.KeyA, "kid-a").PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	pubB, err := signertest.Key(t, signertest.KeyB, "kid-other").PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	dcr := []string{maskinportentest.ScopeDCRRead, maskinportentest.ScopeDCRWrite, maskinportentest.ScopeDCRModify, maskinportentest.ScopeDCRSupplier}
	for _, c := range []maskinportentest.Client{
		{ID: adminID, Org: vendorOrg, Scopes: dcr, CertificateCAs: pool},
		{ID: otherAdmin, Org: otherOrg, Scopes: dcr, CertificateCAs: otherPool},
		{ID: kidAdminID, Org: vendorOrg, Scopes: dcr, Keys: []jwk.Key{mustPub(t, signertest.KeyB, "kid-admin")}},
		{ID: targetID, Org: vendorOrg, Scopes: []string{targetScope}, Keys: []jwk.Key{pubA}},
		{ID: otherID, Org: otherOrg, Scopes: []string{targetScope}, Keys: []jwk.Key{pubB}},
		{ID: suppliedID, Org: otherOrg, Supplier: vendorOrg, Scopes: []string{targetScope}},
	} {
		if err := emu.AddClient(c); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func mustPub(t *testing.T, name, kid string) jwk.Key {
	t.Helper()
	pub, err := signertest.Key(t, name, kid).PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// token gets an access token for clientID signed with key, asking for
// scope.
func (f *ssFixture) token(t *testing.T, clientID string, key *signer.Key, scope string) (string, error) {
	t.Helper()
	c, err := maskinporten.New(maskinporten.Config{ClientID: clientID, Key: key, Now: f.now,
		Environment: maskinporten.Environment{Name: "emulator", Issuer: f.emu.Issuer(), TokenURL: f.url + "/token"},
		Retry:       maskinporten.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(context.Background(), maskinporten.Request{Scopes: strings.Fields(scope)})
	if err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}

func (f *ssFixture) adminToken(t *testing.T, scope string) string {
	t.Helper()
	tok, err := f.token(t, adminID, f.admin, scope)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// call sends a request to the API and returns the status and the body.
func (f *ssFixture) call(t *testing.T, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, f.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(raw) > 0 && json.Unmarshal(raw, &out) != nil {
		out = map[string]any{"text": string(raw)} // not JSON (a plain 404)
	}
	return resp.StatusCode, out
}

// grant posts a plain grant for clientID signed by key keyName under kid
// and returns the status and answer.
func (f *ssFixture) grant(t *testing.T, clientID, kid, keyName string) (int, map[string]any) {
	t.Helper()
	claims := map[string]any{
		"aud": f.emu.Issuer(), "iss": clientID, "iat": f.now().Unix(), "exp": f.now().Unix() + 60,
		"jti": "jti-" + time.Now().Format(time.RFC3339Nano), "scope": targetScope,
	}
	fx := &fixture{emu: f.emu, url: f.url, now: f.now()}
	return fx.post(t, sign(t, claims, jwa.RS256, kid, keyName))
}

func jwkOf(t *testing.T, name, kid string) map[string]any {
	t.Helper()
	raw, err := rotation.PublicJWK(kid, signer.RS256, &signertest.RSA(t, name).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func keysOf(t *testing.T, body map[string]any) []map[string]any {
	t.Helper()
	list, ok := body["keys"].([]any)
	if !ok {
		t.Fatalf("answer without keys: %v", body)
	}
	out := make([]map[string]any, len(list))
	for i, k := range list {
		out[i] = k.(map[string]any)
	}
	return out
}

const jwksPath = "/api/v1/clients/" + targetID + "/jwks"

func TestSelfServiceReadsKeysAndClient(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	tok := f.adminToken(t, allDCR)
	status, body := f.call(t, http.MethodGet, jwksPath, tok, nil)
	if status != http.StatusOK {
		t.Fatalf("GET jwks: %d %v", status, body)
	}
	keys := keysOf(t, body)
	if len(keys) != 1 || keys[0]["kid"] != "kid-a" || keys[0]["kty"] != "RSA" {
		t.Fatalf("keys = %v", keys)
	}
	// exp in unix seconds, one year after AddClient; created and
	// last_updated once for the set.
	if exp, _ := keys[0]["exp"].(float64); int64(exp) != f.start.Add(maskinportentest.KeyLifetime).Unix() {
		t.Errorf("exp = %v, want AddClient + 1 year", keys[0]["exp"])
	}
	if _, err := time.Parse(time.RFC3339, body["created"].(string)); err != nil {
		t.Errorf("created = %v", body["created"])
	}
	if body["last_updated"] == nil {
		t.Errorf("no last_updated: %v", body)
	}
	status, body = f.call(t, http.MethodGet, "/api/v1/clients/"+targetID, tok, nil)
	if status != http.StatusOK || body["client_id"] != targetID || body["client_orgno"] != vendorOrg {
		t.Errorf("GET client: %d %v", status, body)
	}
}

func TestSelfServiceAdminTokenNeedsCertificate(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	// A client that signs with a registered key (kid) gets no dcr scope.
	_, err := f.token(t, kidAdminID, signertest.Key(t, signertest.KeyB, "kid-admin"), allDCR)
	var me *maskinporten.Error
	if !errors.As(err, &me) || me.Code != "invalid_scope" || me.MPCode != "MP-201" {
		t.Fatalf("kid-signed admin grant: %v, want invalid_scope MP-201", err)
	}
	// The certificate-bound admin gets one, marked virksomhetssertifikat.
	tok := f.adminToken(t, allDCR)
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	_ = json.Unmarshal(payload, &claims)
	if claims["client_amr"] != "virksomhetssertifikat" {
		t.Errorf("client_amr = %v", claims["client_amr"])
	}
}

func TestSelfServiceAuthorisation(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	all := f.adminToken(t, allDCR+" idporten:dcr.supplier")
	readOnly := f.adminToken(t, "idporten:dcr.read")
	writeOnly := f.adminToken(t, "idporten:dcr.write")
	modifyOnly := f.adminToken(t, "idporten:dcr.read idporten:dcr.modify")
	noSupplier := f.adminToken(t, allDCR)
	otherTok, err := f.token(t, otherAdmin, f.other, allDCR)
	if err != nil {
		t.Fatal(err)
	}
	// A plain token of the target client (kid-signed, no dcr scope).
	plain, err := f.token(t, targetID, signertest.Key(t, signertest.KeyA, "kid-a"), targetScope)
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"keys": []any{jwkOf(t, signertest.KeyA, "kid-a")}}
	tests := []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"no_token", http.MethodGet, jwksPath, "", nil, 401},
		{"garbage_token", http.MethodGet, jwksPath, "not.a.token", nil, 401},
		{"kid_signed_token", http.MethodGet, jwksPath, plain, nil, 401},
		{"read_without_dcr_read", http.MethodGet, jwksPath, writeOnly, nil, 403},
		{"write_with_read_only", http.MethodPost, jwksPath, readOnly, body, 403},
		{"write_with_modify_only", http.MethodPost, jwksPath, modifyOnly, body, 403},
		{"delete_with_read_only", http.MethodDelete, jwksPath, readOnly, nil, 403},
		{"client_of_other_org", http.MethodGet, "/api/v1/clients/" + otherID + "/jwks", all, nil, 403},
		{"other_org_admin", http.MethodGet, jwksPath, otherTok, nil, 403},
		{"supplier_without_scope", http.MethodGet, "/api/v1/clients/" + suppliedID + "/jwks", noSupplier, nil, 403},
		{"supplier", http.MethodGet, "/api/v1/clients/" + suppliedID + "/jwks", all, nil, 200},
		{"unknown_client", http.MethodGet, "/api/v1/clients/nobody/jwks", all, nil, 404},
		{"old_path", http.MethodGet, "/clients/" + targetID + "/jwks", all, nil, 404},
		{"patch", http.MethodPatch, jwksPath, all, nil, 405},
		{"post_client", http.MethodPost, "/api/v1/clients/" + targetID, all, body, 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, answer := f.call(t, tc.method, tc.path, tc.token, tc.body)
			if status != tc.want {
				t.Fatalf("%s %s: %d %v, want %d", tc.method, tc.path, status, answer, tc.want)
			}
			if status >= 400 && tc.path != "/clients/"+targetID+"/jwks" {
				if answer["status"] != float64(status) || answer["correlation_id"] == "" || answer["timestamp"] == nil ||
					answer["error_description"] == nil || answer["error"] == nil {
					t.Errorf("error answer not in Digdir's shape: %v", answer)
				}
				if errs, _ := answer["errors"].([]any); len(errs) == 0 || errs[0].(map[string]any)["errorMessage"] == "" {
					t.Errorf("errors[] = %v", answer["errors"])
				}
			}
		})
	}
	if f.emu.JWKSWrites() != 0 {
		t.Errorf("%d writes went through", f.emu.JWKSWrites())
	}
	// An expired token is refused: exactly at its exp.
	f.advance(120 * time.Second)
	if status, _ := f.call(t, http.MethodGet, jwksPath, all, nil); status != 401 {
		t.Errorf("expired token: %d, want 401", status)
	}
}

func TestSelfServiceForeignToken(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	g := newSSFixture(t) // same issuer shape, another signing key
	tok := g.adminToken(t, allDCR)
	if status, _ := f.call(t, http.MethodGet, jwksPath, tok, nil); status != 401 {
		t.Errorf("token of another emulator: %d, want 401", status)
	}
}

func TestSelfServiceRefusesBadSets(t *testing.T) {
	t.Parallel()
	big1024 := new(big.Int).Lsh(big.NewInt(1), 1023)
	big1024.Add(big1024, big.NewInt(12345))
	tests := []struct {
		name   string
		mutate func(t *testing.T, keys []map[string]any) any
		ctype  string
		want   int
		field  string
	}{
		{name: "empty_set", mutate: func(t *testing.T, k []map[string]any) any { return map[string]any{"keys": []any{}} }, want: 400},
		{name: "six_keys", mutate: func(t *testing.T, k []map[string]any) any {
			var six []any
			for i := range 6 {
				six = append(six, jwkOf(t, signertest.KeyB, "six-"+string(rune('a'+i))))
			}
			return map[string]any{"keys": six}
		}, want: 400, field: "keys"},
		{name: "not_an_array", mutate: func(t *testing.T, k []map[string]any) any { return map[string]any{"keys": k[0]} }, want: 400},
		{name: "bare_array", mutate: func(t *testing.T, k []map[string]any) any { return k }, want: 400},
		{name: "unknown_top_member", mutate: func(t *testing.T, k []map[string]any) any { return map[string]any{"keys": k, "x": 1} }, want: 400},
		{name: "kty_ec", mutate: func(t *testing.T, k []map[string]any) any { k[0]["kty"] = "EC"; return map[string]any{"keys": k} }, want: 400, field: "kty"},
		{name: "rsa_1024", mutate: func(t *testing.T, k []map[string]any) any {
			k[0]["n"] = base64.RawURLEncoding.EncodeToString(big1024.Bytes())
			return map[string]any{"keys": k}
		}, want: 400, field: "n"},
		{name: "no_e", mutate: func(t *testing.T, k []map[string]any) any { delete(k[0], "e"); return map[string]any{"keys": k} }, want: 400, field: "e"},
		{name: "alg_rs512", mutate: func(t *testing.T, k []map[string]any) any { k[0]["alg"] = "RS512"; return map[string]any{"keys": k} }, want: 400, field: "alg"},
		{name: "no_alg", mutate: func(t *testing.T, k []map[string]any) any { delete(k[0], "alg"); return map[string]any{"keys": k} }, want: 400, field: "alg"},
		{name: "use_enc", mutate: func(t *testing.T, k []map[string]any) any { k[0]["use"] = "enc"; return map[string]any{"keys": k} }, want: 400, field: "use"},
		{name: "no_use", mutate: func(t *testing.T, k []map[string]any) any { delete(k[0], "use"); return map[string]any{"keys": k} }, want: 400, field: "use"},
		{name: "empty_kid", mutate: func(t *testing.T, k []map[string]any) any { k[0]["kid"] = ""; return map[string]any{"keys": k} }, want: 400, field: "kid"},
		{name: "private_d", mutate: func(t *testing.T, k []map[string]any) any { k[0]["d"] = "AQAB"; return map[string]any{"keys": k} }, want: 400, field: "d"},
		{name: "private_qi", mutate: func(t *testing.T, k []map[string]any) any { k[0]["qi"] = "AQAB"; return map[string]any{"keys": k} }, want: 400, field: "qi"},
		{name: "x5c", mutate: func(t *testing.T, k []map[string]any) any {
			k[0]["x5c"] = []string{"MII"}
			return map[string]any{"keys": k}
		}, want: 400, field: "x5c"},
		{name: "kid_twice", mutate: func(t *testing.T, k []map[string]any) any {
			return map[string]any{"keys": []any{k[0], jwkOf(t, signertest.KeyB, "kid-new")}}
		}, want: 400, field: "kid"},
		{name: "kid_of_other_client", mutate: func(t *testing.T, k []map[string]any) any {
			return map[string]any{"keys": []any{k[0], jwkOf(t, signertest.KeyB, "kid-other")}}
		}, want: 409, field: "kid"},
		{name: "same_kid_other_material", mutate: func(t *testing.T, k []map[string]any) any {
			return map[string]any{"keys": []any{jwkOf(t, signertest.KeyB, "kid-a")}}
		}, want: 409, field: "kid"},
		{name: "not_json_content", ctype: "text/plain", mutate: func(t *testing.T, k []map[string]any) any { return map[string]any{"keys": k} }, want: 415},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newSSFixture(t)
			tok := f.adminToken(t, allDCR)
			before := f.emu.RegisteredKeys(targetID)
			keys := []map[string]any{jwkOf(t, signertest.KeyA, "kid-a")}
			if tc.name == "kid_twice" {
				keys[0] = jwkOf(t, signertest.KeyA, "kid-new")
			}
			body := tc.mutate(t, keys)
			raw, _ := json.Marshal(body)
			req, _ := http.NewRequest(http.MethodPost, f.url+jwksPath, bytes.NewReader(raw))
			ct := tc.ctype
			if ct == "" {
				ct = "application/json"
			}
			req.Header.Set("Content-Type", ct)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var answer map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&answer)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d %v, want %d", resp.StatusCode, answer, tc.want)
			}
			if tc.field != "" {
				found := false
				for _, e := range answer["errors"].([]any) {
					em := e.(map[string]any)
					// Private members are refused as such, not just as
					// unknown members.
					private := tc.field == "d" || tc.field == "qi"
					if em["fieldIdentifier"] == tc.field && (!private || strings.Contains(em["errorMessage"].(string), "private")) {
						found = true
					}
				}
				if !found {
					t.Errorf("no error on field %q: %v", tc.field, answer["errors"])
				}
			}
			if f.emu.JWKSWrites() != 0 {
				t.Error("a refused write was counted")
			}
			after := f.emu.RegisteredKeys(targetID)
			if len(after) != len(before) || after[0].KID != before[0].KID || !after[0].Expires.Equal(before[0].Expires) {
				t.Errorf("a refused write changed the registration: %v", after)
			}
		})
	}
}

func TestSelfServicePostReplacesWholeSet(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	tok := f.adminToken(t, allDCR)
	status, body := f.call(t, http.MethodPost, jwksPath, tok, map[string]any{"keys": []any{jwkOf(t, signertest.KeyB, "kid-b")}})
	if status != http.StatusCreated {
		t.Fatalf("POST: %d %v", status, body)
	}
	if keys := keysOf(t, body); len(keys) != 1 || keys[0]["kid"] != "kid-b" {
		t.Fatalf("answer keys = %v", keys)
	}
	if reg := f.emu.RegisteredKeys(targetID); len(reg) != 1 || reg[0].KID != "kid-b" {
		t.Fatalf("registered = %v", reg)
	}
	// The removed key stops working at once.
	if status, ans := f.grant(t, targetID, "kid-a", signertest.KeyA); status != 400 ||
		!strings.Contains(ans["error_description"].(string), "Unknown key identifier (kid) for client") {
		t.Errorf("grant with a removed key: %d %v", status, ans)
	}
	// PUT replaces too.
	status, body = f.call(t, http.MethodPut, jwksPath, tok, map[string]any{"keys": []any{jwkOf(t, signertest.KeyA, "kid-a2")}})
	if status != http.StatusOK || len(keysOf(t, body)) != 1 {
		t.Fatalf("PUT: %d %v", status, body)
	}
	if f.emu.JWKSWrites() != 2 {
		t.Errorf("JWKSWrites = %d, want 2", f.emu.JWKSWrites())
	}
	// DELETE removes every key.
	if status, _ := f.call(t, http.MethodDelete, jwksPath, tok, nil); status != http.StatusNoContent {
		t.Fatalf("DELETE: %d", status)
	}
	status, body = f.call(t, http.MethodGet, jwksPath, tok, nil)
	if status != 200 || len(keysOf(t, body)) != 0 || len(f.emu.RegisteredKeys(targetID)) != 0 {
		t.Errorf("after DELETE: %d %v", status, body)
	}
	if f.emu.JWKSWrites() != 3 {
		t.Errorf("JWKSWrites = %d, want 3", f.emu.JWKSWrites())
	}
	if status, _ := f.grant(t, targetID, "kid-a2", signertest.KeyA); status != 400 {
		t.Errorf("grant after DELETE: %d", status)
	}
}

func TestSelfServiceRepostRenews(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	tok := f.adminToken(t, allDCR)
	set := map[string]any{"keys": []any{jwkOf(t, signertest.KeyA, "kid-a"), jwkOf(t, signertest.KeyB, "kid-b")}}
	if status, body := f.call(t, http.MethodPost, jwksPath, tok, set); status != 201 {
		t.Fatalf("POST: %d %v", status, body)
	}
	f.advance(10 * 24 * time.Hour)
	tok = f.adminToken(t, allDCR)
	// The keys as read, with the API's exp, are posted back: accepted, and
	// exp is renewed regardless of the exp sent.
	_, read := f.call(t, http.MethodGet, jwksPath, tok, nil)
	back := keysOf(t, read)
	back[0]["exp"] = 1
	back[0]["created"] = "2001-01-01T00:00:00.000Z"
	status, body := f.call(t, http.MethodPost, jwksPath, tok, map[string]any{"keys": back, "created": read["created"]})
	if status != 201 {
		t.Fatalf("re-POST: %d %v", status, body)
	}
	want := f.now().Add(maskinportentest.KeyLifetime).Unix()
	for _, k := range keysOf(t, body) {
		if exp, _ := k["exp"].(float64); int64(exp) != want {
			t.Errorf("%v: exp %v, want now + 1 year (%d)", k["kid"], k["exp"], want)
		}
	}
	for _, k := range f.emu.RegisteredKeys(targetID) {
		switch k.KID {
		case "kid-a":
			if !k.Created.Equal(f.start) {
				t.Errorf("kid-a created %v, want the AddClient time", k.Created)
			}
		case "kid-b":
			if !k.Created.Equal(f.start) {
				t.Errorf("kid-b created %v, want the first POST", k.Created)
			}
		}
		if !k.Expires.Equal(time.Unix(want, 0)) {
			t.Errorf("%s expires %v", k.KID, k.Expires)
		}
		if strings.Contains(string(k.JWK), "exp") || strings.Contains(string(k.JWK), "created") {
			t.Errorf("registered JWK keeps server fields: %s", k.JWK)
		}
	}
}

func TestSelfServicePropagationAndExpiry(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	f.emu.SetPropagationDelay(2 * time.Minute)
	tok := f.adminToken(t, allDCR)
	set := map[string]any{"keys": []any{jwkOf(t, signertest.KeyA, "kid-a"), jwkOf(t, signertest.KeyB, "kid-b")}}
	if status, body := f.call(t, http.MethodPost, jwksPath, tok, set); status != 201 {
		t.Fatalf("POST: %d %v", status, body)
	}
	// The new key is unknown until it has propagated; the key kept in the
	// set stays usable.
	status, ans := f.grant(t, targetID, "kid-b", signertest.KeyB)
	if status != 400 || ans["error"] != "invalid_grant" || !strings.Contains(ans["error_description"].(string), "Unknown key identifier (kid) for client") {
		t.Fatalf("new key before propagation: %d %v", status, ans)
	}
	if status, ans := f.grant(t, targetID, "kid-a", signertest.KeyA); status != 200 {
		t.Fatalf("kept key: %d %v", status, ans)
	}
	reg := f.emu.RegisteredKeys(targetID)
	if reg[1].KID != "kid-b" || !reg[1].UsableFrom.Equal(f.now().Add(2*time.Minute)) {
		t.Errorf("kid-b usable from %v", reg[1].UsableFrom)
	}
	f.advance(2 * time.Minute)
	if status, ans := f.grant(t, targetID, "kid-b", signertest.KeyB); status != 200 {
		t.Fatalf("new key after propagation: %d %v", status, ans)
	}
	// Both keys were posted at start: a year later they have expired
	// (MP-121).
	f.clock.Store(f.start.Add(maskinportentest.KeyLifetime).Unix())
	status, ans = f.grant(t, targetID, "kid-a", signertest.KeyA)
	if status != 400 || ans["error"] != "invalid_grant" || !strings.Contains(ans["error_description"].(string), "MP-121") ||
		!strings.Contains(ans["error_description"].(string), "Expired key") {
		t.Errorf("expired key: %d %v", status, ans)
	}
	// Posting the same keys again renews them, usable at once.
	tok = f.adminToken(t, allDCR)
	if status, body := f.call(t, http.MethodPost, jwksPath, tok, set); status != 201 {
		t.Fatalf("re-POST: %d %v", status, body)
	}
	if status, ans := f.grant(t, targetID, "kid-a", signertest.KeyA); status != 200 {
		t.Errorf("renewed kid-a: %d %v", status, ans)
	}
	if err := f.emu.SetKeyExpiry(targetID, "kid-b", f.now()); err != nil {
		t.Fatal(err)
	}
	if status, _ := f.grant(t, targetID, "kid-b", signertest.KeyB); status != 400 {
		t.Errorf("kid-b after SetKeyExpiry: %d", status)
	}
}

func TestSelfServiceCertificateGrantRefusedOnceKeysAreRegistered(t *testing.T) {
	t.Parallel()
	f := newSSFixture(t)
	if _, err := f.token(t, adminID, f.admin, allDCR); err != nil {
		t.Fatal(err)
	}
	if err := f.emu.ReplaceKeys(adminID, mustRaw(t, jwkOf(t, signertest.KeyB, "kid-admin-own"))); err != nil {
		t.Fatal(err)
	}
	_, err := f.token(t, adminID, f.admin, allDCR)
	if err == nil || !strings.Contains(err.Error(), "requires pre-registered jwk") {
		t.Errorf("x5c grant of a client with a registered key: %v", err)
	}
	// ReplaceKeys applies the API's rules.
	if err := f.emu.ReplaceKeys(targetID); err == nil {
		t.Error("ReplaceKeys with no key succeeded")
	}
	if f.emu.JWKSWrites() != 0 {
		t.Error("ReplaceKeys counted as an API write")
	}
}

func mustRaw(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
