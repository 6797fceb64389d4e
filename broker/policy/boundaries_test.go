package policy

import (
	"errors"
	"testing"
	"time"
)

// TestRuleBoundaries: list entries are exact values, max_min_validity is
// inclusive, and any rule naming the caller may allow the request.
func TestRuleBoundaries(t *testing.T) {
	t.Parallel()
	p, err := New([]Rule{
		{Callers: []string{"unix:billing"}, Clients: []string{"smartcloud"}, Scopes: []string{"a:b"}, CustomerOrgs: []string{"310904473"}, MaxMinValidity: time.Minute},
		{Callers: []string{"unix:billing"}, Clients: []string{"smartcloud"}, Scopes: []string{"c:d"}, CustomerOrgs: []string{"314250052"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ok := Request{Client: "smartcloud", Scopes: []string{"a:b"}, CustomerOrg: "310904473", MinValidity: time.Minute}
	if err := p.Check("unix:billing", ok); err != nil {
		t.Errorf("min_validity equal to the maximum: %v", err)
	}
	for name, mod := range map[string]func(r *Request){
		"min_validity_over": func(r *Request) { r.MinValidity = time.Minute + time.Nanosecond },
		"scope_prefix":      func(r *Request) { r.Scopes = []string{"a:bc"} },
		"client_prefix":     func(r *Request) { r.Client = "smartcloud2" },
		"org_prefix":        func(r *Request) { r.CustomerOrg = "3109044730" },
		"second_scope":      func(r *Request) { r.Scopes = []string{"a:b", "x:y"} },
	} {
		r := ok
		mod(&r)
		if err := p.Check("unix:billing", r); !errors.Is(err, ErrDenied) {
			t.Errorf("%s: %v, want denied", name, err)
		}
	}
	// The first rule refuses this, the second allows it.
	second := Request{Client: "smartcloud", Scopes: []string{"c:d"}, CustomerOrg: "314250052", MinValidity: time.Hour}
	if err := p.Check("unix:billing", second); err != nil {
		t.Errorf("allowed by the second rule only: %v", err)
	}
}
