// Package redact cleans text that comes from an upstream (Altinn's problem
// details, Maskinporten's error_description, transport errors) before it
// reaches a caller, a log line or an audit record: anything shaped like a
// token or a secret is replaced, control characters become spaces, and only
// then is the text cut to length, so that a cut can never leave part of a
// secret behind.
package redact

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Mark replaces what was removed.
const Mark = "[redacted]"

var (
	// bearerRE: an Authorization value, whatever follows "Bearer".
	bearerRE = regexp.MustCompile(`(?i)\bbearer(\s|%20|\+)+[^\s"',;<>]+`)
	// jwtRE: a compact JWS/JWT (three base64url segments of which the
	// first two are at least 8 long, as every JOSE header and claim set is;
	// the last may be empty for an unsecured JWT), or a run of at least two segments that
	// starts like a JSON object ("eyJ"), which is what a cut JWT looks like.
	jwtRE = regexp.MustCompile(`[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*|eyJ[A-Za-z0-9_=-]{5,}(\.[A-Za-z0-9_=-]*)*`)
	// runRE: a long run of base64, base64url or hex characters.
	runRE  = regexp.MustCompile(`[A-Za-z0-9+/_=-]{32,}`)
	uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// String returns s without token-shaped parts and control characters,
// trimmed of surrounding space. It does not bound the length; see Cut.
func String(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = bearerRE.ReplaceAllString(s, "Bearer "+Mark)
	s = jwtRE.ReplaceAllStringFunc(s, func(m string) string {
		if m == Mark || plainWords(m) {
			return m
		}
		return Mark
	})
	s = runRE.ReplaceAllStringFunc(s, func(m string) string {
		if uuidRE.MatchString(m) || plainWords(m) {
			return m
		}
		return Mark
	})
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// plainWords reports whether m reads as lower-case words joined by '-', '_'
// or '.' (an access package name, a host name, a resource id): no digit,
// no upper-case letter, no base64 padding or '+' and '/'. Secrets are
// random and almost never look like that; names often do.
func plainWords(m string) bool {
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'a' && c <= 'z' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Cut cleans s with String and then bounds it to at most n bytes (at a rune
// boundary), ending it with "..." when it was longer.
func Cut(s string, n int) string {
	s = String(s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
