package broker

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/orgno"
)

// FuzzValidate checks request validation at the trust boundary: it never
// panics, every refusal names a known field, and what it accepts is
// normalised (bare valid org number, sorted unique scopes within limits).
func FuzzValidate(f *testing.F) {
	f.Add("", "310904473", "altinn:systembruker.demo", "", "", int64(0))
	f.Add("demo", "0192:314250052", "a:b c:d", "tenant-1", "https://api.example/", int64(time.Minute))
	f.Add("x\x00", "123456789", "\xff", "\n", "/rel", int64(-1))
	f.Fuzz(func(t *testing.T, client, org, scopes, ref, resource string, minValidity int64) {
		r := Request{Client: client, CustomerOrg: org, ExternalRef: ref, Resource: resource, MinValidity: time.Duration(minValidity)}
		if scopes != "" {
			r.Scopes = splitScopes(scopes)
		}
		v, err := validate(r)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a FieldError", err)
			}
			switch fe.Field {
			case "client", "customer_org", "scopes", "external_ref", "resource", "min_validity":
			default:
				t.Fatalf("unknown field %q", fe.Field)
			}
			return
		}
		if !orgno.Valid(v.CustomerOrg) {
			t.Fatalf("accepted org %q", v.CustomerOrg)
		}
		if len(v.scopes) == 0 || len(v.scopes) > MaxScopes || !slices.IsSorted(v.scopes) || len(slices.Compact(slices.Clone(v.scopes))) != len(v.scopes) {
			t.Fatalf("scopes %q not normalised", v.scopes)
		}
		if v.MinValidity < 0 || v.MinValidity > MaxMinValidity {
			t.Fatalf("min_validity %v accepted", v.MinValidity)
		}
	})
}

// splitScopes splits on commas, keeping empty entries.
func splitScopes(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}
