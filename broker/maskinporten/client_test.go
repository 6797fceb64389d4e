package maskinporten_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

const (
	testClientID = "client-1"
	vendorOrg    = "991825827"
	customerOrg  = "310904473"
	testScope    = "altinn:systembruker.demo"
)

// newEmulated starts an emulator with one client holding key A and returns a
// maskinporten.Client pointed at it.
func newEmulated(t *testing.T) (*maskinportentest.Emulator, *maskinporten.Client) {
	t.Helper()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	key := signertest.Key(t, signertest.KeyA, "kid-a")
	pub, err := key.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.AddClient(maskinportentest.Client{
		ID: testClientID, Org: vendorOrg, SystemID: vendorOrg + "_test", Scopes: []string{testScope, "other:scope"}, Keys: []jwk.Key{pub},
	}); err != nil {
		t.Fatal(err)
	}
	c, err := maskinporten.New(maskinporten.Config{
		ClientID:    testClientID,
		Key:         key,
		Environment: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return emu, c
}

func TestTokenSuccess(t *testing.T) {
	t.Parallel()
	emu, c := newEmulated(t)
	suID := emu.ApproveSystemUser(testClientID, customerOrg, "")
	before := time.Now()
	tok, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg})
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.TokenType != "Bearer" {
		t.Errorf("token = %v, type %q", tok, tok.TokenType)
	}
	if tok.SystemUserID != suID || tok.SystemID != vendorOrg+"_test" {
		t.Errorf("system user %q system %q, want %q %q", tok.SystemUserID, tok.SystemID, suID, vendorOrg+"_test")
	}
	// The emulator's tokens live 120 s from their issue, in whole seconds,
	// which happened between before and after.
	after := time.Now()
	if tok.ExpiresAt.Before(before.Add(119*time.Second)) || tok.ExpiresAt.After(after.Add(120*time.Second)) {
		t.Errorf("expires at %v, want 120 s after a moment between %v and %v", tok.ExpiresAt, before, after)
	}
	if len(tok.Scopes) != 1 || tok.Scopes[0] != testScope {
		t.Errorf("scopes = %v", tok.Scopes)
	}
	if tok.JWTID == "" {
		t.Error("no jti read from the token")
	}
	for _, s := range []string{tok.String(), fmt.Sprintf("%v", tok), fmt.Sprintf("%+v", tok), fmt.Sprintf("%#v", tok)} {
		if strings.Contains(s, tok.AccessToken) {
			t.Errorf("formatting the token prints it: %s", s)
		}
	}
	if emu.Issued() != 1 {
		t.Errorf("emulator issued %d tokens, want 1", emu.Issued())
	}
}

func TestTokenExternalRef(t *testing.T) {
	t.Parallel()
	emu, c := newEmulated(t)
	emu.ApproveSystemUser(testClientID, customerOrg, "tenant-7")
	ctx := context.Background()
	if _, err := c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg, ExternalRef: "tenant-7"}); err != nil {
		t.Fatalf("with the external ref: %v", err)
	}
	_, err := c.Token(ctx, maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: customerOrg})
	if !errors.Is(err, maskinporten.ErrNoSystemUser) {
		t.Fatalf("without the external ref: %v, want ErrNoSystemUser", err)
	}
}

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		hook      func(w http.ResponseWriter, r *http.Request) bool
		req       maskinporten.Request
		status    int
		code      string
		mpCode    string
		retryable bool
		noSU      bool
	}{
		{
			name:   "no_system_user",
			req:    maskinporten.Request{Scopes: []string{testScope}, CustomerOrg: "314250052"},
			status: 400, code: "invalid_altinn_customer_configuration", mpCode: "MP-303", noSU: true,
		},
		{
			name:   "scope_not_registered",
			req:    maskinporten.Request{Scopes: []string{"unknown:scope"}},
			status: 400, code: "invalid_scope", mpCode: "MP-200",
		},
		{
			name: "server_error",
			hook: func(w http.ResponseWriter, r *http.Request) bool {
				http.Error(w, "boom", http.StatusInternalServerError)
				return true
			},
			req:    maskinporten.Request{Scopes: []string{testScope}},
			status: 500, retryable: true,
		},
		{
			name: "too_many_requests",
			hook: func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(http.StatusTooManyRequests)
				return true
			},
			req:    maskinporten.Request{Scopes: []string{testScope}},
			status: 429, retryable: true,
		},
		{
			name: "grant_used_before",
			hook: func(w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(400)
				fmt.Fprint(w, `{"error":"invalid_grant","error_description":"MP-012: Grant is used before (trace 1)"}`)
				return true
			},
			req:    maskinporten.Request{Scopes: []string{testScope}},
			status: 400, code: "invalid_grant", mpCode: "MP-012", retryable: true,
		},
		{
			name: "issue_time_after_now",
			hook: func(w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(400)
				fmt.Fprint(w, `{"error":"invalid_grant","error_description":"Issue time is after now"}`)
				return true
			},
			req:    maskinporten.Request{Scopes: []string{testScope}},
			status: 400, code: "invalid_grant", retryable: true,
		},
		{
			name: "garbage_success",
			hook: func(w http.ResponseWriter, r *http.Request) bool {
				fmt.Fprint(w, `<html>not json</html>`)
				return true
			},
			req:    maskinporten.Request{Scopes: []string{testScope}},
			status: 200, retryable: true,
		},
		{
			name: "wrong_token_type",
			hook: func(w http.ResponseWriter, r *http.Request) bool {
				fmt.Fprint(w, `{"access_token":"x","token_type":"MAC","expires_in":120}`)
				return true
			},
			req:    maskinporten.Request{Scopes: []string{testScope}},
			status: 200,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			emu, c := newEmulated(t)
			emu.SetHook(tc.hook)
			_, err := c.Token(context.Background(), tc.req)
			var me *maskinporten.Error
			if !errors.As(err, &me) {
				t.Fatalf("error %v (%T), want *maskinporten.Error", err, err)
			}
			if me.StatusCode != tc.status || me.Code != tc.code || me.MPCode != tc.mpCode || me.Retryable != tc.retryable {
				t.Errorf("got status %d code %q mp %q retryable %v; want %d %q %q %v",
					me.StatusCode, me.Code, me.MPCode, me.Retryable, tc.status, tc.code, tc.mpCode, tc.retryable)
			}
			if got := errors.Is(err, maskinporten.ErrNoSystemUser); got != tc.noSU {
				t.Errorf("errors.Is(ErrNoSystemUser) = %v, want %v", got, tc.noSU)
			}
		})
	}
}

func TestTokenUnreachable(t *testing.T) {
	t.Parallel()
	c, err := maskinporten.New(maskinporten.Config{
		ClientID:    testClientID,
		Key:         signertest.Key(t, signertest.KeyA, "kid-a"),
		Environment: maskinporten.Environment{Name: "x", Issuer: "http://127.0.0.1:1/", TokenURL: "http://127.0.0.1:1/token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}})
	var me *maskinporten.Error
	if !errors.As(err, &me) || !me.Retryable || me.StatusCode != 0 {
		t.Fatalf("error %v, want a retryable *maskinporten.Error without status", err)
	}
}

func TestErrorDescriptionRedactsTokens(t *testing.T) {
	t.Parallel()
	emu, c := newEmulated(t)
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
	emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"MP-124: bad grant %s\n\u0000 %s"}`, jwt, strings.Repeat("x", 2000))
		return true
	})
	_, err := c.Token(context.Background(), maskinporten.Request{Scopes: []string{testScope}})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if strings.Contains(msg, jwt) || strings.ContainsAny(msg, "\n\x00") || len(msg) > 700 {
		t.Errorf("error message not sanitised: %q", msg)
	}
	if !strings.Contains(msg, "MP-124") || !strings.Contains(msg, "[redacted]") {
		t.Errorf("error message lost the code or the redaction mark: %q", msg)
	}
}

func TestNewEnvironment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, env, issuer, tokenURL string
		ok                          bool
	}{
		{"test", "test", "", "", true},
		{"prod", "prod", "", "", true},
		{"emulator_override", "test", "http://127.0.0.1:8080/", "http://127.0.0.1:8080/token", true},
		{"unknown_env", "staging", "", "", false},
		{"prod_with_test_url", "prod", "", "https://test.maskinporten.no/token", false},
		{"test_with_prod_issuer", "test", "https://maskinporten.no/", "", false},
		{"relative_url", "test", "", "/token", false},
		{"ftp_url", "test", "", "ftp://x/token", false},
		{"userinfo", "test", "", "https://u:p@x/token", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env, err := maskinporten.NewEnvironment(tc.env, tc.issuer, tc.tokenURL)
			if (err == nil) != tc.ok {
				t.Fatalf("NewEnvironment(%q, %q, %q) = %v, %v; want ok=%v", tc.env, tc.issuer, tc.tokenURL, env, err, tc.ok)
			}
		})
	}
	if env, _ := maskinporten.NewEnvironment("prod", "", ""); env.Issuer != "https://maskinporten.no/" || env.TokenURL != "https://maskinporten.no/token" {
		t.Errorf("prod = %+v", env)
	}
	if env, _ := maskinporten.NewEnvironment("test", "", ""); env.Issuer != "https://test.maskinporten.no/" || env.TokenURL != "https://test.maskinporten.no/token" {
		t.Errorf("test = %+v", env)
	}
}
