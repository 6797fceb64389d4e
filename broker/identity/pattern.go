package identity

import (
	"fmt"
	"strings"
)

// Pattern matches identities of one kind. It is written like an identity,
// where '*' in the value matches any run of characters (none included,
// '/' included): "spiffe://example.org/ns/*/sa/billing",
// "dns:*.billing.svc.cluster.local", "unix:billing".
type Pattern struct {
	kind Kind
	glob string // canonical, kind prefix included
}

// ParsePattern reads a pattern. It refuses a pattern that does not name
// its kind literally (a bare "*", "billing", "*:x"), a SPIFFE pattern whose
// trust domain is not literal (a '*' there would match any trust domain
// federated with ours), and a value that would not be a valid identity of
// its kind with every '*' read as a letter.
func ParsePattern(s string) (Pattern, error) {
	for _, k := range kinds {
		rest, ok := strings.CutPrefix(s, k.prefix())
		if !ok {
			continue
		}
		if rest == "" {
			return Pattern{}, fmt.Errorf("%q: no value after %q", clip(s), k.prefix())
		}
		switch k {
		case SPIFFE:
			td, _, _ := strings.Cut(rest, "/")
			if strings.Contains(td, "*") {
				return Pattern{}, fmt.Errorf("%q: the trust domain of a SPIFFE pattern must be written out (no '*')", clip(s))
			}
			if _, err := New(SPIFFE, strings.ReplaceAll(s, "*", "x")); err != nil {
				return Pattern{}, err
			}
			return Pattern{kind: k, glob: s}, nil
		case DNS:
			rest = strings.ToLower(rest)
		}
		if err := checkValue(rest); err != nil {
			return Pattern{}, fmt.Errorf("%q: %w", clip(s), err)
		}
		return Pattern{kind: k, glob: k.prefix() + rest}, nil
	}
	return Pattern{}, fmt.Errorf("%q does not name the kind of identity it matches; write spiffe://TRUST.DOMAIN/..., dns:NAME, cn:NAME, unix:NAME or local:NAME ('*' allowed in the value)", clip(s))
}

// Kind returns the kind of identity p matches.
func (p Pattern) Kind() Kind { return p.kind }

// String returns the pattern as written (DNS values in lower case).
func (p Pattern) String() string { return p.glob }

// Match reports whether p matches the canonical identity string id. The
// zero Pattern matches nothing, and no pattern matches "".
func (p Pattern) Match(id string) bool {
	if p.glob == "" || !strings.HasPrefix(id, p.kind.prefix()) {
		return false
	}
	return glob(p.glob, id)
}

// glob reports whether s matches pattern, where '*' matches any run of
// characters (including none and including '/') and every other character
// matches itself.
func glob(pattern, s string) bool {
	// Iterative matching with backtracking to the last '*'.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
