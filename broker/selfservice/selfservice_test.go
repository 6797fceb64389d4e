package selfservice_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/selfservice"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const (
	vendorOrg = "991825827"
	otherOrg  = "314250052"
	adminID   = "admin-1"
	kidAdmin  = "admin-kid"
	targetID  = "target-1"
	otherID   = "other-1"
	scope     = "altinn:systembruker.demo"
)

type fixture struct {
	emu   *maskinportentest.Emulator
	url   string
	http  *http.Client
	admin *signer.Key
	env   maskinporten.Environment
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	admin, pool := signertest.EnterpriseKey(t, vendorOrg)
	dcr := []string{selfservice.ScopeRead, selfservice.ScopeWrite}
	pubA := publicKey(t, signertest.KeyA, "kid-a")
	for _, c := range []maskinportentest.Client{
		{ID: adminID, Org: vendorOrg, Scopes: dcr, CertificateCAs: pool},
		{ID: kidAdmin, Org: vendorOrg, Scopes: dcr, Keys: []jwk.Key{publicKey(t, signertest.KeyB, "kid-admin")}},
		{ID: targetID, Org: vendorOrg, Scopes: []string{scope}, Keys: []jwk.Key{pubA}},
		{ID: otherID, Org: otherOrg, Scopes: []string{scope}, Keys: []jwk.Key{publicKey(t, signertest.KeyB, "kid-other")}},
	} {
		if err := emu.AddClient(c); err != nil {
			t.Fatal(err)
		}
	}
	return &fixture{emu: emu, url: srv.URL, http: srv.Client(), admin: admin,
		env: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"}}
}

func publicKey(t *testing.T, name, kid string) jwk.Key {
	t.Helper()
	pub, err := signertest.Key(t, name, kid).PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// client returns a selfservice.Client whose admin tokens come from
// clientID signed with key.
func (f *fixture) client(t *testing.T, clientID string, key *signer.Key) (*selfservice.Client, *selfservice.MaskinportenTokens) {
	t.Helper()
	mp, err := maskinporten.New(maskinporten.Config{ClientID: clientID, Key: key, Environment: f.env, HTTPClient: f.http,
		Retry: maskinporten.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := selfservice.NewTokenSource(mp)
	if err != nil {
		t.Fatal(err)
	}
	c, err := selfservice.New(selfservice.Config{Environment: "test", BaseURL: f.url, Tokens: ts, HTTPClient: f.http})
	if err != nil {
		t.Fatal(err)
	}
	return c, ts
}

func jwkJSON(t *testing.T, name, kid string) json.RawMessage {
	t.Helper()
	raw, err := rotation.PublicJWK(kid, signer.RS256, &signertest.RSA(t, name).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// apiCalls counts the requests to the self-service API.
func apiCalls(f *fixture) *atomic.Int64 {
	var n atomic.Int64
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, maskinportentest.SelfServicePath) {
			n.Add(1)
		}
		return false
	})
	return &n
}

func TestKeys(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, adminID, f.admin)
	keys, err := c.Keys(context.Background(), targetID)
	if err != nil {
		t.Fatal(err)
	}
	reg := f.emu.RegisteredKeys(targetID)
	if len(keys) != 1 || keys[0].KID != "kid-a" || keys[0].Expires.Unix() != reg[0].Expires.Unix() {
		t.Fatalf("keys = %+v, registered %+v", keys, reg)
	}
	var m map[string]any
	if err := json.Unmarshal(keys[0].JWK, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["exp"]; ok || m["kid"] != "kid-a" || m["kty"] != "RSA" || m["n"] == nil {
		t.Errorf("JWK = %s: want the key's own members without exp", keys[0].JWK)
	}
}

func TestSetKeysReplacesTheSet(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, adminID, f.admin)
	ctx := context.Background()
	current, err := c.Keys(ctx, targetID)
	if err != nil {
		t.Fatal(err)
	}
	// The next key arrives with fields only the API may set: stripped.
	var next map[string]any
	_ = json.Unmarshal(jwkJSON(t, signertest.KeyB, "kid-b"), &next)
	next["exp"], next["created"], next["last_updated"] = 1, "2001-01-01T00:00:00Z", "2001-01-01T00:00:00Z"
	nextRaw, _ := json.Marshal(next)
	var posted atomic.Value
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/jwks") {
			b, _ := io.ReadAll(r.Body)
			posted.Store(string(b))
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		return false
	})
	got, err := c.SetKeys(ctx, targetID, []json.RawMessage{current[0].JWK, nextRaw})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := posted.Load().(string)
	if !strings.Contains(body, `"keys"`) || strings.Contains(body, "exp") || strings.Contains(body, "created") || strings.Contains(body, "last_updated") {
		t.Errorf("posted %s: want {\"keys\":[...]} without exp, created, last_updated", body)
	}
	reg := f.emu.RegisteredKeys(targetID)
	if len(got) != 2 || len(reg) != 2 || got[1].KID != "kid-b" || got[1].Expires.Unix() != reg[1].Expires.Unix() || got[1].Expires.IsZero() {
		t.Fatalf("SetKeys = %+v, registered %+v", got, reg)
	}
	// Only kid-b then: kid-a is gone.
	got, err = c.SetKeys(ctx, targetID, []json.RawMessage{got[1].JWK})
	if err != nil {
		t.Fatal(err)
	}
	if reg := f.emu.RegisteredKeys(targetID); len(got) != 1 || len(reg) != 1 || reg[0].KID != "kid-b" {
		t.Errorf("after replacing: %+v / %+v", got, reg)
	}
	if f.emu.JWKSWrites() != 2 {
		t.Errorf("JWKSWrites = %d", f.emu.JWKSWrites())
	}
}

func TestSetKeysDuplicateKID(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, adminID, f.admin)
	_, err := c.SetKeys(context.Background(), targetID, []json.RawMessage{jwkJSON(t, signertest.KeyA, "kid-a"), jwkJSON(t, signertest.KeyB, "kid-other")})
	var se *selfservice.Error
	if !errors.Is(err, selfservice.ErrDuplicateKID) || !errors.As(err, &se) || se.StatusCode != http.StatusConflict ||
		se.CorrelationID == "" || !strings.Contains(se.Message, "kid-other") {
		t.Fatalf("kid of another client: %v, want ErrDuplicateKID with Digdir's message", err)
	}
	if errors.Is(err, selfservice.ErrForbidden) || errors.Is(err, selfservice.ErrTooManyKeys) {
		t.Errorf("%v matches other sentinels", err)
	}
}

func TestSetKeysTooMany(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, adminID, f.admin)
	calls := apiCalls(f)
	var six []json.RawMessage
	for i := range 6 {
		six = append(six, jwkJSON(t, signertest.KeyA, fmt.Sprintf("kid-%d", i)))
	}
	if _, err := c.SetKeys(context.Background(), targetID, six); !errors.Is(err, selfservice.ErrTooManyKeys) {
		t.Fatalf("6 keys: %v, want ErrTooManyKeys", err)
	}
	if calls.Load() != 0 || f.emu.JWKSWrites() != 0 {
		t.Errorf("6 keys reached the API")
	}
	if _, err := c.SetKeys(context.Background(), targetID, nil); err == nil || calls.Load() != 0 {
		t.Errorf("no keys: %v", err)
	}
	// The API's own 400 for the limit maps to ErrTooManyKeys too (a client
	// that does not know the limit, or a lower one at Digdir).
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, maskinportentest.SelfServicePath) {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		fmt.Fprint(w, `{"status":400,"correlation_id":"c1","errors":[{"errorMessage":"a client may have at most 5 keys","isFieldError":true,"objectName":"JWKS","fieldIdentifier":"keys"}],"error":", a client may have at most 5 keys","error_description":", a client may have at most 5 keys"}`)
		return true
	})
	if _, err := c.SetKeys(context.Background(), targetID, six[:2]); !errors.Is(err, selfservice.ErrTooManyKeys) {
		t.Errorf("API's limit answer: %v, want ErrTooManyKeys", err)
	}
}

func TestForbiddenAndNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, adminID, f.admin)
	_, err := c.Keys(context.Background(), otherID)
	var se *selfservice.Error
	if !errors.Is(err, selfservice.ErrForbidden) || !errors.As(err, &se) || se.StatusCode != http.StatusForbidden {
		t.Errorf("client of another organisation: %v, want ErrForbidden (403)", err)
	}
	_, err = c.SetKeys(context.Background(), otherID, []json.RawMessage{jwkJSON(t, signertest.KeyA, "kid-x")})
	if !errors.Is(err, selfservice.ErrForbidden) {
		t.Errorf("write to a client of another organisation: %v", err)
	}
	if _, err := c.Keys(context.Background(), "nobody"); !errors.Is(err, selfservice.ErrNotFound) {
		t.Errorf("unknown client: %v, want ErrNotFound", err)
	}
	if f.emu.JWKSWrites() != 0 {
		t.Error("a refused write went through")
	}
}

func TestKidSignedAdminRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, kidAdmin, signertest.Key(t, signertest.KeyB, "kid-admin"))
	calls := apiCalls(f)
	_, err := c.Keys(context.Background(), targetID)
	var me *maskinporten.Error
	if !errors.As(err, &me) || me.Code != "invalid_scope" || me.MPCode != "MP-201" {
		t.Fatalf("admin client signing with a kid: %v, want Maskinporten's invalid_scope MP-201", err)
	}
	if calls.Load() != 0 {
		t.Error("the API was called without a token")
	}
}

func TestTokenCachedAndRefreshedOn401(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c, _ := f.client(t, adminID, f.admin)
	ctx := context.Background()
	if _, err := c.Keys(ctx, targetID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Keys(ctx, targetID); err != nil {
		t.Fatal(err)
	}
	if f.emu.Issued() != 1 {
		t.Fatalf("%d tokens for two calls, want 1 (cached)", f.emu.Issued())
	}
	// The API refuses the cached token once: a new one is fetched and the
	// call is made again.
	var refused atomic.Int64
	var seen []string
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, maskinportentest.SelfServicePath) {
			seen = append(seen, r.Header.Get("Authorization"))
			if refused.Add(1) == 1 {
				w.WriteHeader(http.StatusUnauthorized)
				return true
			}
		}
		return false
	})
	keys, err := c.Keys(ctx, targetID)
	if err != nil || len(keys) != 1 {
		t.Fatalf("after a 401: %v %v", keys, err)
	}
	if f.emu.Issued() != 2 || len(seen) != 2 || seen[0] == seen[1] {
		t.Errorf("issued %d, %d API calls (same token twice: %v); want a new token for the retry", f.emu.Issued(), len(seen), len(seen) == 2 && seen[0] == seen[1])
	}
	// 401 every time: one retry, then ErrForbidden.
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, maskinportentest.SelfServicePath) {
			refused.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	before := refused.Load()
	if _, err := c.Keys(ctx, targetID); !errors.Is(err, selfservice.ErrForbidden) {
		t.Errorf("401 twice: %v, want ErrForbidden", err)
	}
	if n := refused.Load() - before; n != 2 {
		t.Errorf("%d API calls after repeated 401, want 2", n)
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	mp, err := maskinporten.New(maskinporten.Config{ClientID: adminID, Key: f.admin, Environment: f.env, HTTPClient: f.http})
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := selfservice.NewTokenSource(mp)
	c, err := selfservice.New(selfservice.Config{Environment: "test", BaseURL: f.url, Tokens: ts, HTTPClient: f.http, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, maskinportentest.SelfServicePath) {
			<-r.Context().Done() // hang until the client gives up
			return true
		}
		return false
	})
	// The caller's own deadline is far away: the call must end by the
	// client's Timeout, not by the caller's context.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Keys(ctx, targetID); !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Errorf("hanging API: %v (caller's context: %v), want the client's deadline", err, ctx.Err())
	}
}

// TestNoCredentialInErrors: whatever fails, and even when the API echoes
// the request's Authorization header back, no admin token or grant reaches
// an error's text or the token source's String.
func TestNoCredentialInErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.emu.Record()
	c, ts := f.client(t, adminID, f.admin)
	ctx := context.Background()
	var texts []string
	collect := func(err error) {
		if err == nil {
			t.Fatal("want an error")
		}
		texts = append(texts, err.Error(), fmt.Sprintf("%v %+v %#v", err, err, err))
	}
	_, err := c.SetKeys(ctx, targetID, []json.RawMessage{jwkJSON(t, signertest.KeyB, "kid-other")})
	collect(err)
	_, err = c.Keys(ctx, otherID)
	collect(err)
	// A hostile or broken API that echoes the credential in every field.
	f.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, maskinportentest.SelfServicePath) {
			return false
		}
		auth := r.Header.Get("Authorization")
		tok := strings.TrimPrefix(auth, "Bearer ")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"status": 400, "correlation_id": tok,
			"errors":            []any{map[string]any{"errorMessage": "bad " + auth + " " + tok}},
			"error":             tok,
			"error_description": "echo " + tok,
		})
		return true
	})
	_, err = c.Keys(ctx, targetID)
	collect(err)
	_, err = c.SetKeys(ctx, targetID, []json.RawMessage{jwkJSON(t, signertest.KeyA, "kid-a")})
	collect(err)
	texts = append(texts, fmt.Sprintf("%v %+v %#v %s", ts, ts, ts, ts))
	if len(f.emu.Tokens()) == 0 || len(f.emu.Assertions()) == 0 {
		t.Fatal("nothing recorded")
	}
	for i, s := range texts {
		f.emu.CheckNoLeaks(t, fmt.Sprintf("error text %d", i), s)
	}
	// The private key's members never travel: only public JWKs are posted.
	for _, s := range texts {
		if strings.Contains(s, `"d"`) {
			t.Errorf("key material in %q", s)
		}
	}
}

func TestBaseURLFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env, override, want string
		ok                  bool
	}{
		{"test", "", selfservice.TestBaseURL, true},
		{"prod", "", selfservice.ProdBaseURL, true},
		{"test", "http://127.0.0.1:8080/", "http://127.0.0.1:8080", true},
		{"test", "https://api.samarbeid.digdir.no", "", false},
		{"prod", "https://API.test.samarbeid.digdir.no/x", "", false},
		{"test", "ftp://example.org", "", false},
		{"test", "/relative", "", false},
		{"dev", "", "", false},
	}
	for _, tc := range tests {
		got, err := selfservice.BaseURLFor(tc.env, tc.override)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("BaseURLFor(%q, %q) = %q, %v", tc.env, tc.override, got, err)
		}
	}
	if _, err := selfservice.New(selfservice.Config{Environment: "prod", BaseURL: selfservice.TestBaseURL, Tokens: staticTokens("x")}); err == nil {
		t.Error("New took the test host for prod")
	}
	if _, err := selfservice.New(selfservice.Config{Environment: "test"}); err == nil {
		t.Error("New without a token source")
	}
}

type staticTokens string

func (s staticTokens) Token(context.Context) (string, error) { return string(s), nil }

// TestStaticTokenSource: a TokenSource without Forget is asked again after
// a 401 and the call is retried once.
func TestStaticTokenSource(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, ts := f.client(t, adminID, f.admin)
	tok, err := ts.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c, err := selfservice.New(selfservice.Config{Environment: "prod", BaseURL: f.url, Tokens: staticTokens(tok), HTTPClient: f.http})
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := c.Keys(context.Background(), targetID); err != nil || len(keys) != 1 {
		t.Fatalf("Keys with a wired token: %v %v", keys, err)
	}
	c2, _ := selfservice.New(selfservice.Config{Environment: "prod", BaseURL: f.url, Tokens: staticTokens("not-a-token"), HTTPClient: f.http})
	if _, err := c2.Keys(context.Background(), targetID); !errors.Is(err, selfservice.ErrForbidden) {
		t.Errorf("bad token: %v, want ErrForbidden", err)
	}
}

// TestSetKeysPostsBackAKeyRegisteredWithoutUse: a key registered before
// the API required use "sig" (2025-05-22) is read back without it. Every
// write (the rotation's register and retire steps, a renewal) posts the
// keys it read back, and the API refuses a key without use: the key of
// almost every client registered before then would make its rotation and
// its renewal fail until it expires. A signing key read without use goes
// back with use "sig".
func TestSetKeysPostsBackAKeyRegisteredWithoutUse(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	legacy := publicKey(t, signertest.KeyA, "kid-legacy")
	if err := legacy.Remove(jwk.KeyUsageKey); err != nil {
		t.Fatal(err)
	}
	const legacyID = "legacy-1"
	if err := f.emu.AddClient(maskinportentest.Client{ID: legacyID, Org: vendorOrg, Scopes: []string{scope}, Keys: []jwk.Key{legacy}}); err != nil {
		t.Fatal(err)
	}
	c, _ := f.client(t, adminID, f.admin)
	ctx := context.Background()
	current, err := c.Keys(ctx, legacyID)
	if err != nil {
		t.Fatal(err)
	}
	if len(current) != 1 || strings.Contains(string(current[0].JWK), `"use"`) {
		t.Fatalf("registered %s: want the legacy key without use", current[0].JWK)
	}
	got, err := c.SetKeys(ctx, legacyID, []json.RawMessage{current[0].JWK, jwkJSON(t, signertest.KeyB, "kid-next")})
	if err != nil {
		t.Fatalf("posting back a key registered without use: %v", err)
	}
	if len(got) != 2 || got[0].KID != "kid-legacy" || !strings.Contains(string(got[0].JWK), `"use":"sig"`) {
		t.Fatalf("SetKeys = %+v", got)
	}
}
