package policy

import (
	"errors"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	p, err := New([]Rule{
		{Callers: []string{"spiffe://example.org/ns/*/sa/billing"}, Clients: []string{"smartcloud"},
			Scopes: []string{"altinn:a"}, CustomerOrgs: []string{"310904473"}, MaxMinValidity: time.Minute},
		{Callers: []string{"dns:payroll.example.org"}, Clients: []string{"*"}, Scopes: []string{"*"},
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
		{"cn_is_not_spiffe", "cn:spiffe://example.org/ns/prod/sa/billing", nil, "caller"},
		{"dns_is_not_spiffe", "dns:spiffe://example.org/ns/prod/sa/billing", nil, "caller"},
		{"bare_value_is_no_identity", "spiffe_example", nil, "caller"},
		{"no_external_ref_where_rule_lists_some", "dns:payroll.example.org", func(r *Request) { r.CustomerOrg = "314250052" }, "external_ref"},
		{"wildcards", "dns:payroll.example.org", func(r *Request) { r.ExternalRef = "tenant-1"; r.CustomerOrg = "314250052" }, ""},
		{"external_ref_refused", "dns:payroll.example.org", func(r *Request) { r.ExternalRef = "tenant-2" }, "external_ref"},
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
	full := Rule{Callers: []string{"unix:a"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}}
	for name, mod := range map[string]func(r *Rule){
		"no_callers": func(r *Rule) { r.Callers = nil },
		"no_clients": func(r *Rule) { r.Clients = nil },
		"no_scopes":  func(r *Rule) { r.Scopes = nil },
		"no_orgs":    func(r *Rule) { r.CustomerOrgs = nil },
		"blank":      func(r *Rule) { r.Callers = []string{" "} },
		"negative":   func(r *Rule) { r.MaxMinValidity = -1 },
		"bare_name":  func(r *Rule) { r.Callers = []string{"billing"} },
		"bare_star":  func(r *Rule) { r.Callers = []string{"*"} },
		"kind_glob":  func(r *Rule) { r.Callers = []string{"*:billing"} },
		"td_glob":    func(r *Rule) { r.Callers = []string{"spiffe://*/ns/prod/sa/billing"} },
		"no_value":   func(r *Rule) { r.Callers = []string{"dns:"} },
		"ref_space":  func(r *Rule) { r.ExternalRefs = []string{"tenant-1 "} },
		"ref_empty":  func(r *Rule) { r.ExternalRefs = []string{""} },
	} {
		r := full
		mod(&r)
		if _, err := New([]Rule{r}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNewAcceptsTypedCallers(t *testing.T) {
	t.Parallel()
	for _, c := range []string{"spiffe://example.org/ns/*/sa/billing", "dns:*.svc.cluster.local", "cn:billing", "unix:billing", "local:insecure"} {
		if _, err := New([]Rule{{Callers: []string{c}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}}}); err != nil {
			t.Errorf("%s: %v", c, err)
		}
	}
}
