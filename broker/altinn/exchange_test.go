package altinn

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// fakeJWT builds an unsigned JWT-shaped string with exp and iat.
func fakeJWT(exp, iat int64) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(fmt.Sprintf(`{"exp":%d,"iat":%d}`, exp, iat))) + "." + enc([]byte("signature-bytes"))
}

func TestExchange(t *testing.T) {
	t.Parallel()
	now := time.Now().Unix()
	altinnTok := fakeJWT(now+1800, now)
	mp := &maskinporten.Token{AccessToken: "mp-token-value", Scopes: []string{"a:b"}, SystemUserID: "su"}
	tests := []struct {
		name      string
		status    int
		body      string
		ok        bool
		rejected  bool
		retryable bool
	}{
		{"quoted_json_string", 200, `"` + altinnTok + `"`, true, false, false},
		{"raw_body", 200, altinnTok + "\n", true, false, false},
		{"unauthorized", 401, "", false, true, true},
		{"server_error", 503, "down", false, false, true},
		{"forbidden", 403, "", false, false, false},
		{"not_a_jwt", 200, `"hello"`, false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet || r.Header.Get("Authorization") != "Bearer mp-token-value" {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			defer srv.Close()
			tok, err := NewExchanger(srv.URL, nil).Exchange(context.Background(), mp)
			if tc.ok {
				if err != nil || tok.AccessToken != altinnTok || tok.ExpiresAt.Unix() != now+1800 || tok.SystemUserID != "su" {
					t.Fatalf("Exchange = %v, %v", tok, err)
				}
				return
			}
			var me *maskinporten.Error
			if !errors.As(err, &me) || errors.Is(err, ErrRejected) != tc.rejected || me.Retryable != tc.retryable {
				t.Fatalf("error %v: want rejected=%v retryable=%v", err, tc.rejected, tc.retryable)
			}
			if strings.Contains(err.Error(), "mp-token-value") {
				t.Error("the Maskinporten token leaked into the error")
			}
		})
	}
}

func TestExchangeURLFor(t *testing.T) {
	t.Parallel()
	if u, _ := ExchangeURLFor("test", ""); u != TT02ExchangeURL {
		t.Errorf("test -> %s", u)
	}
	if u, _ := ExchangeURLFor("prod", ""); u != ProdExchangeURL {
		t.Errorf("prod -> %s", u)
	}
	if u, err := ExchangeURLFor("test", "http://127.0.0.1:9/x"); err != nil || u != "http://127.0.0.1:9/x" {
		t.Errorf("override: %s %v", u, err)
	}
	for _, bad := range [][2]string{{"test", ProdExchangeURL}, {"prod", TT02ExchangeURL}, {"test", "ftp://x"}, {"staging", ""}} {
		if _, err := ExchangeURLFor(bad[0], bad[1]); err == nil {
			t.Errorf("ExchangeURLFor(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
