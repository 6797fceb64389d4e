package policy

import (
	"errors"
	"testing"
)

// TestExternalRefRuleRefusesCallerWithoutExternalRef: a rule that lists
// external_refs allows only those; a caller that names none is refused,
// not let through as if the rule had no list.
func TestExternalRefRuleRefusesCallerWithoutExternalRef(t *testing.T) {
	t.Parallel()
	p, err := New([]Rule{{Callers: []string{"unix:billing"}, Clients: []string{"*"}, Scopes: []string{"*"},
		CustomerOrgs: []string{"*"}, ExternalRefs: []string{"tenant-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	r := Request{Client: "demo", Scopes: []string{"a:b"}, CustomerOrg: "310904473"}
	err = p.Check("unix:billing", r)
	var d *DeniedError
	if !errors.As(err, &d) || d.Field != "external_ref" {
		t.Fatalf("no external_ref under a rule listing tenant-1: %v, want denied on external_ref", err)
	}
	r.ExternalRef = "tenant-2"
	if err := p.Check("unix:billing", r); !errors.Is(err, ErrDenied) {
		t.Errorf("external_ref tenant-2: %v, want denied", err)
	}
	r.ExternalRef = "tenant-1"
	if err := p.Check("unix:billing", r); err != nil {
		t.Errorf("external_ref tenant-1: %v, want allowed", err)
	}
}

// TestEmptyCallerMatchesOnlyGlobs: an empty identity is not any named
// caller, and no pattern (each names its kind) matches it.
func TestEmptyCallerMatchesOnlyGlobs(t *testing.T) {
	t.Parallel()
	p, err := New([]Rule{{Callers: []string{"unix:billing", "spiffe://example.org/*"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	var d *DeniedError
	if err := p.Check("", Request{Client: "demo", Scopes: []string{"a:b"}, CustomerOrg: "310904473"}); !errors.As(err, &d) || d.Field != "caller" {
		t.Errorf("empty caller: %v, want denied on caller", err)
	}
}
