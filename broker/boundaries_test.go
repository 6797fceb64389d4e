package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
)

// TestValidationBoundaries: every limit on a request field lets its
// largest value through validation and refuses one more; an empty org
// number says it is required.
func TestValidationBoundaries(t *testing.T) {
	t.Parallel()
	b, _ := newBroker(t, &fakeSource{})
	scopes := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("s:%d", i)
		}
		return out
	}
	tests := []struct {
		name  string
		mod   func(r *broker.Request)
		field string // "" when validation must pass
	}{
		{"max_scopes", func(r *broker.Request) { r.Scopes = scopes(broker.MaxScopes) }, ""},
		{"max_scopes_plus_one", func(r *broker.Request) { r.Scopes = scopes(broker.MaxScopes + 1) }, "scopes"},
		{"scope_max_len", func(r *broker.Request) { r.Scopes = []string{strings.Repeat("s", broker.MaxScopeLen)} }, ""},
		{"scope_max_len_plus_one", func(r *broker.Request) { r.Scopes = []string{strings.Repeat("s", broker.MaxScopeLen+1)} }, "scopes"},
		{"scope_backslash", func(r *broker.Request) { r.Scopes = []string{`a\b`} }, "scopes"},
		{"scope_tilde", func(r *broker.Request) { r.Scopes = []string{"a~b!"} }, ""},
		{"external_ref_max", func(r *broker.Request) { r.ExternalRef = strings.Repeat("e", broker.MaxExternalRefLen) }, ""},
		{"external_ref_max_plus_one", func(r *broker.Request) { r.ExternalRef = strings.Repeat("e", broker.MaxExternalRefLen+1) }, "external_ref"},
		{"resource_max", func(r *broker.Request) {
			r.Resource = "https://x/" + strings.Repeat("r", broker.MaxResourceLen-len("https://x/"))
		}, ""},
		{"resource_max_plus_one", func(r *broker.Request) {
			r.Resource = "https://x/" + strings.Repeat("r", broker.MaxResourceLen+1-len("https://x/"))
		}, "resource"},
		{"min_validity_max", func(r *broker.Request) { r.MinValidity = broker.MaxMinValidity }, ""},
		{"min_validity_max_plus_one", func(r *broker.Request) { r.MinValidity = broker.MaxMinValidity + time.Nanosecond }, "min_validity"},
		{"min_validity_minus_one", func(r *broker.Request) { r.MinValidity = -time.Nanosecond }, "min_validity"},
		{"kind_unknown", func(r *broker.Request) { r.Kind = "saml" }, "kind"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := req("310904473")
			tc.mod(&r)
			_, err := b.GetToken(context.Background(), r)
			var fe *broker.FieldError
			isField := errors.As(err, &fe)
			switch {
			case tc.field == "" && isField:
				t.Errorf("refused by validation: %v", err)
			case tc.field != "" && (!isField || fe.Field != tc.field):
				t.Errorf("error = %v, want a FieldError for %s", err, tc.field)
			}
		})
	}
	r := req("")
	if _, err := b.GetToken(context.Background(), r); err == nil || err.Error() != "customer_org: required" {
		t.Errorf("empty org: %v, want \"customer_org: required\"", err)
	}
}
