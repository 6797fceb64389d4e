package redact

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// A JWT-shaped value made up for these tests (no real key signed it).
const jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJ0ZXN0IiwiZXhwIjo0MTAyNDQ0ODAwfQ.c2lnbmF0dXJlLW5vdC1yZWFsLWp1c3QtYnl0ZXMtZm9yLXRlc3Rz"

func TestString(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ in, want string }{
		"jwt":              {"token " + jwt + " refused", "token [redacted] refused"},
		"bearer":           {"Authorization: Bearer abc.def-123", "Authorization: Bearer [redacted]"},
		"bearer_lowercase": {"header was bearer sEcReT1", "header was Bearer [redacted]"},
		"bearer_quoted":    {`{"auth":"Bearer ` + jwt + `"}`, `{"auth":"Bearer [redacted]"}`},
		"cut_jwt":          {"echo: " + jwt[:60], "echo: [redacted]"},
		"two_segments":     {"echo " + jwt[:strings.LastIndex(jwt, ".")], "echo [redacted]"},
		"hex_secret":       {"key 0123456789abcdef0123456789abcdef0123 used", "key [redacted] used"},
		"base64_secret":    {"k Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFy+/== end", "k [redacted] end"},
		"uuid_kept":        {"request 8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11 not found", "request 8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11 not found"},
		"package_kept":     {"urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet is not assignable", "urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet is not assignable"},
		"code_kept":        {"AUTH.VLD-00018: MP-303 for 991825827_smartcloud", "AUTH.VLD-00018: MP-303 for 991825827_smartcloud"},
		"control_chars":    {"line\none\ttab\x00", "line one tab"},
		"invalid_utf8":     {"bad \xff byte", "bad \uFFFD byte"},
		"empty":            {"", ""},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := String(tc.in); got != tc.want {
				t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestCutRedactsFirst: a secret that straddles the cut is removed whole,
// not cut into a shorter piece that no longer looks like a secret.
func TestCutRedactsFirst(t *testing.T) {
	t.Parallel()
	in := strings.Repeat("x ", 10) + jwt
	got := Cut(in, 40)
	if strings.Contains(got, jwt[:8]) || len(got) > 43 {
		t.Errorf("Cut = %q", got)
	}
	if got := Cut("æøå æøå", 5); got != "æø..." {
		t.Errorf("Cut at a rune boundary = %q", got)
	}
}

func FuzzString(f *testing.F) {
	for _, s := range []string{jwt, "Bearer " + jwt, "x " + jwt[:40], "0123456789abcdef0123456789abcdef", "AUTH-00010 not found", "\xff\x00"} {
		f.Add(s, 20)
	}
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = n&0xff + 3
		out := Cut(s, n)
		if !utf8.ValidString(out) || len(out) > n+3 {
			t.Fatalf("Cut(%q, %d) = %q", s, n, out)
		}
		// Whatever secret is hidden in the text, not one piece of it that
		// redaction would have caught survives.
		for _, secret := range []string{jwt, "Bearer Zm9vYmFy"} {
			in := s + " " + secret + " " + s
			if got := String(in); strings.Contains(got, secret[:12]) {
				t.Fatalf("String(%q) = %q keeps part of %q", in, got, secret)
			}
		}
		if again := String(String(s)); again != String(s) {
			t.Fatalf("String is not idempotent on %q: %q then %q", s, String(s), again)
		}
	})
}
