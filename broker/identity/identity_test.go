package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestNewAndParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind  Kind
		value string
		want  string // "" when refused
	}{
		{SPIFFE, "spiffe://example.org/ns/prod/sa/billing", "spiffe://example.org/ns/prod/sa/billing"},
		{SPIFFE, "spiffe://example.org", "spiffe://example.org"},
		{SPIFFE, "spiffe://Example.org/x", ""},
		{SPIFFE, "spiffe://example.org:443/x", ""},
		{SPIFFE, "spiffe://user@example.org/x", ""},
		{SPIFFE, "spiffe://example.org/a/../b", ""},
		{SPIFFE, "spiffe://example.org/a//b", ""},
		{SPIFFE, "spiffe://example.org/a/", ""},
		{SPIFFE, "spiffe://example.org/a?b", ""},
		{SPIFFE, "spiffe://example.org/a%2fb", ""},
		{SPIFFE, "spiffe:///x", ""},
		{SPIFFE, "https://example.org/x", ""},
		{DNS, "Billing.Example.ORG", "dns:billing.example.org"},
		{DNS, "", ""},
		{CN, "billing", "cn:billing"},
		{CN, "spiffe://example.org/ns/prod/sa/billing", "cn:spiffe://example.org/ns/prod/sa/billing"},
		{CN, "bill\ning", ""},
		{CN, "bill\x00ing", ""},
		{CN, "bill\xffing", ""},
		{CN, strings.Repeat("x", MaxLen+1), ""},
		{Unix, "billing", "unix:billing"},
		{Local, "dev", "local:dev"},
		{Kind("uri"), "x", ""},
	}
	for _, tc := range tests {
		id, err := New(tc.kind, tc.value)
		if tc.want == "" {
			if err == nil {
				t.Errorf("New(%s, %q) = %q, want an error", tc.kind, tc.value, id)
			}
			continue
		}
		if err != nil || id.String() != tc.want || id.Kind() != tc.kind {
			t.Errorf("New(%s, %q) = %q, %v; want %q", tc.kind, tc.value, id, err, tc.want)
			continue
		}
		back, err := Parse(id.String())
		if err != nil || back != id {
			t.Errorf("Parse(%q) = %v, %v; want %v", id, back, err, id)
		}
	}
	for _, bare := range []string{"billing", "", "*", "SPIFFE://example.org/x", "uri:x", "dns"} {
		if id, err := Parse(bare); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", bare, id)
		}
	}
}

// certWith makes a certificate (self-signed, unverified: FromCertificate
// reads names only) with the given SANs and CN.
func certWith(t testing.TB, uris []string, dns []string, cn string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, DNSNames: dns,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &testKey.PublicKey, testKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var testKey = func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}()

func TestFromCertificate(t *testing.T) {
	t.Parallel()
	const billing = "spiffe://example.org/ns/prod/sa/billing"
	tests := []struct {
		name string
		uris []string
		dns  []string
		cn   string
		want string // "" when refused
	}{
		{"spiffe_uri", []string{billing}, []string{"billing.internal"}, "billing", billing},
		{"dns_san_spelling_a_spiffe_id", nil, []string{billing}, "", ""}, // not a valid DNS SAN: x509 refuses it when made
		{"cn_spelling_a_spiffe_id", nil, nil, billing, "cn:" + billing},
		{"first_dns_san", nil, []string{"Billing.internal", "other.internal"}, "billing", "dns:billing.internal"},
		{"cn_only", nil, nil, "billing", "cn:billing"},
		{"other_uri_scheme_names_nothing", []string{"https://example.org/billing"}, nil, "", ""},
		{"other_uri_scheme_falls_back_to_dns", []string{"https://example.org/billing"}, []string{"billing.internal"}, "", "dns:billing.internal"},
		{"two_spiffe_ids", []string{billing, "spiffe://example.org/ns/prod/sa/payroll"}, nil, "", ""},
		{"bad_spiffe_id", []string{"spiffe://example.org/a/../b"}, []string{"billing.internal"}, "", ""},
		{"nothing", nil, nil, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: tc.cn}, DNSNames: tc.dns}
			var c *x509.Certificate
			if tc.name == "dns_san_spelling_a_spiffe_id" {
				// Go refuses to make such a certificate; check the
				// parsed form directly instead.
				c = tmpl
			} else {
				c = certWith(t, tc.uris, tc.dns, tc.cn)
			}
			id, err := FromCertificate(c)
			if tc.name == "dns_san_spelling_a_spiffe_id" {
				if err != nil || id.String() == billing || id.Kind() != DNS {
					t.Fatalf("got %q, %v; want a dns identity", id, err)
				}
				return
			}
			if tc.want == "" {
				if err == nil {
					t.Fatalf("got %q, want an error", id)
				}
				return
			}
			if err != nil || id.String() != tc.want {
				t.Fatalf("got %q, %v; want %q", id, err, tc.want)
			}
		})
	}
}

func TestPattern(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, id string
		want        bool
	}{
		{"spiffe://example.org/ns/*/sa/billing", "spiffe://example.org/ns/prod/sa/billing", true},
		{"spiffe://example.org/ns/*/sa/billing", "spiffe://example.org/ns/prod/sa/payroll", false},
		{"spiffe://example.org/*", "spiffe://example.org/ns/a/sa/b", true},
		{"spiffe://example.org/*", "spiffe://evil.org/example.org/x", false},
		{"spiffe://example.org/*", "spiffe://example.org.evil.org/x", false},
		{"spiffe://example.org/ns/prod/sa/billing", "cn:spiffe://example.org/ns/prod/sa/billing", false},
		{"spiffe://example.org/ns/prod/sa/billing", "dns:spiffe://example.org/ns/prod/sa/billing", false},
		{"dns:*.svc.cluster.local", "dns:billing.prod.svc.cluster.local", true},
		{"dns:*.svc.cluster.local", "cn:billing.prod.svc.cluster.local", false},
		{"dns:*.svc.cluster.local", "dns:svc.cluster.local", false},
		{"DNS:x", "dns:x", false}, // not a pattern: refused below
		{"dns:Billing.Internal", "dns:billing.internal", true},
		{"cn:billing", "cn:billing", true},
		{"cn:billing", "cn:Billing", false},
		{"cn:billing", "unix:billing", false},
		{"unix:billing", "unix:billing", true},
		{"unix:billing", "local:billing", false},
		{"local:*", "local:dev", true},
		{"local:*", "unix:dev", false},
		{"cn:a*b*c", "cn:aXXbYYc", true},
		{"cn:a*b*c", "cn:aXXcYYb", false},
		{"cn:*", "", false},
	}
	for _, tc := range tests {
		p, err := ParsePattern(tc.pattern)
		if err != nil {
			if tc.want {
				t.Errorf("ParsePattern(%q): %v", tc.pattern, err)
			}
			continue
		}
		if got := p.Match(tc.id); got != tc.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tc.pattern, tc.id, got, tc.want)
		}
	}
	for _, bad := range []string{"*", "billing", "", "*:billing", "d*:x", "dns:", "spiffe://*/x", "spiffe://exa*mple.org/x",
		"spiffe://example.org/../x", "cn:bad\nname", "https://example.org/x", "DNS:x"} {
		if p, err := ParsePattern(bad); err == nil {
			t.Errorf("ParsePattern(%q) = %v, want an error", bad, p)
		}
	}
	var zero Pattern
	if zero.Match("cn:x") || zero.Match("") {
		t.Error("the zero pattern matched")
	}
}

// FuzzPattern: a pattern never matches an identity of another kind, a
// pattern without '*' matches only its own string, and no two kinds share
// a canonical string.
func FuzzPattern(f *testing.F) {
	f.Add("spiffe://example.org/ns/*/sa/billing", "spiffe://example.org/ns/prod/sa/billing")
	f.Add("cn:spiffe://example.org/*", "dns:spiffe://example.org/x")
	f.Add("dns:*", "cn:x")
	f.Fuzz(func(t *testing.T, pattern, value string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		for _, k := range kinds {
			id, err := New(k, value)
			if err != nil {
				continue
			}
			if p.Match(id.String()) && k != p.Kind() {
				t.Fatalf("pattern %q of kind %s matched %q of kind %s", pattern, p.Kind(), id, k)
			}
			if p.Match(id.String()) && !strings.Contains(p.String(), "*") && p.String() != id.String() {
				t.Fatalf("pattern %q without '*' matched %q", pattern, id)
			}
			for _, k2 := range kinds {
				if id2, err := New(k2, value); err == nil && k2 != k && id2.String() == id.String() {
					t.Fatalf("%s and %s identities share the string %q", k, k2, id)
				}
			}
		}
	})
}

// FuzzFromCertificate: whatever names a certificate carries, the identity
// is a SPIFFE ID only when it came from a spiffe URI SAN, and it always
// parses back to itself.
func FuzzFromCertificate(f *testing.F) {
	f.Add("spiffe://example.org/ns/prod/sa/billing", "billing.internal", "spiffe://example.org/ns/prod/sa/billing")
	f.Add("", "", "spiffe://example.org/x")
	f.Add("https://x/y", "", "cn")
	f.Fuzz(func(t *testing.T, uri, dns, cn string) {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}}
		if dns != "" {
			tmpl.DNSNames = []string{dns}
		}
		if u, err := url.Parse(uri); err == nil && uri != "" {
			tmpl.URIs = []*url.URL{u}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &testKey.PublicKey, testKey)
		if err != nil {
			return
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		id, err := FromCertificate(c)
		if err != nil {
			return
		}
		if id.Kind() == SPIFFE && (len(c.URIs) != 1 || c.URIs[0].String() != id.String()) {
			t.Fatalf("SPIFFE identity %q not from a URI SAN (URIs %v, DNS %q, CN %q)", id, c.URIs, dns, cn)
		}
		if back, err := Parse(id.String()); err != nil || back != id {
			t.Fatalf("Parse(%q) = %v, %v", id, back, err)
		}
	})
}

// TestGlobBacktracks: after a false start, '*' takes one more character
// and matching resumes.
func TestGlobBacktracks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"*ab", "aab", true},
		{"*ab", "aaab", true},
		{"a*ab", "aaab", true},
		{"*ab", "aba", false},
	} {
		if got := glob(tc.pattern, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}
