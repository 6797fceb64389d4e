package policy

import (
	"errors"
	"testing"
	"time"
)

func TestGlob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "anything", true},
		{"*", "", true},
		{"billing", "billing", true},
		{"billing", "billing2", false},
		{"spiffe://example.org/ns/*/sa/billing", "spiffe://example.org/ns/prod/sa/billing", true},
		{"spiffe://example.org/ns/*/sa/billing", "spiffe://example.org/ns/prod/sa/payroll", false},
		{"spiffe://example.org/*", "spiffe://example.org/ns/a/sa/b", true},
		{"spiffe://example.org/*", "spiffe://evil.org/example.org/x", false},
		{"*.svc.cluster.local", "billing.prod.svc.cluster.local", true},
		{"*.svc.cluster.local", "svc.cluster.local", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXcYYb", false},
		{"", "", true},
		{"", "x", false},
	}
	for _, tc := range tests {
		if got := Glob(tc.pattern, tc.s); got != tc.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	p, err := New([]Rule{
		{Callers: []string{"spiffe://example.org/ns/*/sa/billing"}, Clients: []string{"smartcloud"},
			Scopes: []string{"altinn:a"}, CustomerOrgs: []string{"310904473"}, MaxMinValidity: time.Minute},
		{Callers: []string{"payroll.example.org"}, Clients: []string{"*"}, Scopes: []string{"*"},
			CustomerOrgs: []string{"*"}, ExternalRefs: []string{"tenant-1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ok := Request{Client: "smartcloud", Scopes: []string{"altinn:a"}, CustomerOrg: "310904473"}
	billing := "spiffe://example.org/ns/prod/sa/billing"
	tests := []struct {
		name   string
		caller string
		mod    func(r *Request)
		field  string
	}{
		{"allowed", billing, nil, ""},
		{"unknown_caller", "spiffe://example.org/ns/prod/sa/other", nil, "caller"},
		{"empty_caller", "", nil, "caller"},
		{"other_client", billing, func(r *Request) { r.Client = "other" }, "client"},
		{"other_scope", billing, func(r *Request) { r.Scopes = []string{"altinn:a", "altinn:b"} }, "scopes"},
		{"other_org", billing, func(r *Request) { r.CustomerOrg = "314250052" }, "customer_org"},
		{"min_validity", billing, func(r *Request) { r.MinValidity = 2 * time.Minute }, "min_validity"},
		{"any_external_ref", billing, func(r *Request) { r.ExternalRef = "x" }, ""},
		{"wildcards", "payroll.example.org", func(r *Request) { r.ExternalRef = "tenant-1"; r.CustomerOrg = "314250052" }, ""},
		{"external_ref_refused", "payroll.example.org", func(r *Request) { r.ExternalRef = "tenant-2" }, "external_ref"},
	}
	for _, tc := range tests {
		r := ok
		if tc.mod != nil {
			tc.mod(&r)
		}
		err := p.Check(tc.caller, r)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		var d *DeniedError
		if !errors.As(err, &d) || d.Field != tc.field || !errors.Is(err, ErrDenied) {
			t.Errorf("%s: error %v, want a denial of %s", tc.name, err, tc.field)
		}
	}
}

func TestDefaultDeny(t *testing.T) {
	t.Parallel()
	var nilPolicy *Policy
	empty, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Policy{nilPolicy, empty, {}} {
		if err := p.Check("anyone", Request{Client: "c", Scopes: []string{"s"}, CustomerOrg: "310904473"}); !errors.Is(err, ErrDenied) {
			t.Errorf("policy %v allowed a request", p)
		}
	}
	if err := AllowAll().Check("anyone", Request{}); err != nil {
		t.Errorf("AllowAll: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	full := Rule{Callers: []string{"a"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}}
	for name, mod := range map[string]func(r *Rule){
		"no_callers": func(r *Rule) { r.Callers = nil },
		"no_clients": func(r *Rule) { r.Clients = nil },
		"no_scopes":  func(r *Rule) { r.Scopes = nil },
		"no_orgs":    func(r *Rule) { r.CustomerOrgs = nil },
		"blank":      func(r *Rule) { r.Callers = []string{" "} },
		"negative":   func(r *Rule) { r.MaxMinValidity = -1 },
	} {
		r := full
		mod(&r)
		if _, err := New([]Rule{r}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzGlob(f *testing.F) {
	f.Add("spiffe://x/*/y", "spiffe://x/a/b/y")
	f.Add("*a*", "bab")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if Glob(pattern, s) && !containsStar(pattern) && pattern != s {
			t.Fatalf("Glob(%q, %q) without '*' matched different strings", pattern, s)
		}
		if !Glob("*", s) || !Glob(s+"*", s) && !containsStar(s) {
			t.Fatalf("'*' or s+'*' failed to match %q", s)
		}
	})
}

func containsStar(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '*' {
			return true
		}
	}
	return false
}
