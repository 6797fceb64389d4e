// Package policy decides which caller may ask for which tokens: rules name
// callers (identity patterns of package identity, each naming the kind of
// identity it matches) and list the clients, scopes, customer
// organisations and external references they may use, and the longest
// min_validity. Anything no rule allows is denied.
package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/identity"
)

// Rule is one policy rule as configured. In every list, "*" allows any value
// and other entries are exact values, except Callers, whose entries are
// identity patterns (identity.ParsePattern): "spiffe://example.org/ns/*/sa/x",
// "dns:billing.internal", "cn:billing", "unix:billing", "local:insecure".
type Rule struct {
	// Callers are identity patterns; each names the kind of identity it
	// matches. Required.
	Callers []string
	// Clients are configured client names. Required.
	Clients []string
	// Scopes the callers may ask for. Required.
	Scopes []string
	// CustomerOrgs are nine-digit organisation numbers. Required.
	CustomerOrgs []string
	// ExternalRefs the callers may name; empty means any.
	ExternalRefs []string
	// MaxMinValidity is the longest min_validity allowed; 0 means no limit
	// beyond the broker's own.
	MaxMinValidity time.Duration
}

// Request is what a caller asks for, normalised by the broker (bare org
// number, resolved client name).
type Request struct {
	Client      string
	Scopes      []string
	CustomerOrg string
	ExternalRef string
	MinValidity time.Duration
}

// DeniedError says why a caller was refused: which field, and its value.
// It says nothing about what the caller may have instead.
type DeniedError struct {
	Caller string
	// Field is "caller", "client", "scopes", "customer_org",
	// "external_ref" or "min_validity".
	Field string
	Value string
}

func (e *DeniedError) Error() string {
	if e.Field == "caller" {
		return fmt.Sprintf("caller %q is not allowed any token", e.Caller)
	}
	return fmt.Sprintf("caller %q may not use %s %q", e.Caller, e.Field, e.Value)
}

// Policy is a compiled, immutable rule set. The zero value denies all.
type Policy struct {
	rules    []compiled
	allowAll bool
}

// compiled is a rule with its caller patterns parsed.
type compiled struct {
	Rule
	callers []identity.Pattern
}

// matches reports whether the rule names caller.
func (c *compiled) matches(caller string) bool {
	return slices.ContainsFunc(c.callers, func(p identity.Pattern) bool { return p.Match(caller) })
}

// AllowAll returns a policy that allows every caller everything. It is for
// dev mode and tests.
func AllowAll() *Policy { return &Policy{allowAll: true} }

// New checks rules and compiles them.
func New(rules []Rule) (*Policy, error) {
	p := &Policy{}
	for i, r := range rules {
		where := fmt.Sprintf("policy[%d]", i)
		for name, list := range map[string][]string{"callers": r.Callers, "clients": r.Clients, "scopes": r.Scopes, "customer_orgs": r.CustomerOrgs} {
			if len(list) == 0 {
				return nil, fmt.Errorf("%s.%s: required (use \"*\" for any)", where, name)
			}
		}
		c := compiled{Rule: r}
		for j, caller := range r.Callers {
			pat, err := identity.ParsePattern(caller)
			if err != nil {
				return nil, fmt.Errorf("%s.callers[%d]: %w", where, j, err)
			}
			c.callers = append(c.callers, pat)
		}
		for j, ref := range r.ExternalRefs {
			if ref != strings.TrimSpace(ref) || ref == "" {
				return nil, fmt.Errorf("%s.external_refs[%d]: %q is empty or has leading or trailing whitespace, which no request may carry", where, j, ref)
			}
		}
		if r.MaxMinValidity < 0 {
			return nil, fmt.Errorf("%s.max_min_validity: negative", where)
		}
		p.rules = append(p.rules, c)
	}
	return p, nil
}

// Check returns nil when some rule matching caller allows all of r, and a
// *DeniedError otherwise: for the first rule that matches the caller, the
// first field it refuses; or field "caller" when no rule names the caller.
func (p *Policy) Check(caller string, r Request) error {
	if p != nil && p.allowAll {
		return nil
	}
	var first *DeniedError
	if p != nil {
		for i := range p.rules {
			rule := &p.rules[i]
			if !rule.matches(caller) {
				continue
			}
			d := rule.check(caller, r)
			if d == nil {
				return nil
			}
			if first == nil {
				first = d
			}
		}
	}
	if first == nil {
		first = &DeniedError{Caller: caller, Field: "caller"}
	}
	return first
}

func (rule *Rule) check(caller string, r Request) *DeniedError {
	deny := func(field, value string) *DeniedError {
		return &DeniedError{Caller: caller, Field: field, Value: value}
	}
	if !allows(rule.Clients, r.Client) {
		return deny("client", r.Client)
	}
	for _, s := range r.Scopes {
		if !allows(rule.Scopes, s) {
			return deny("scopes", s)
		}
	}
	if !allows(rule.CustomerOrgs, r.CustomerOrg) {
		return deny("customer_org", r.CustomerOrg)
	}
	if len(rule.ExternalRefs) > 0 && !allows(rule.ExternalRefs, r.ExternalRef) {
		return deny("external_ref", r.ExternalRef)
	}
	if rule.MaxMinValidity > 0 && r.MinValidity > rule.MaxMinValidity {
		return deny("min_validity", r.MinValidity.String())
	}
	return nil
}

func allows(list []string, v string) bool {
	return slices.Contains(list, "*") || slices.Contains(list, v)
}

// ErrDenied matches every *DeniedError with errors.Is.
var ErrDenied = errors.New("denied by policy")

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }
