// Package identity names callers by where their name comes from. An
// identity is a kind and a value, written as one canonical string:
//
//	spiffe://TRUST.DOMAIN/PATH  a SPIFFE ID from the only spiffe URI SAN of a client certificate
//	dns:NAME                    a DNS SAN of a client certificate (lower case)
//	cn:NAME                     the subject common name of a client certificate
//	unix:NAME                   the name configured for a unix socket peer's uid
//	local:NAME                  the one identity of every caller in insecure or dev mode
//
// The kind is part of the string, so a value of one kind can never equal an
// identity of another: a certificate whose CN or DNS SAN is the text
// "spiffe://example.org/billing" is "cn:spiffe://example.org/billing" or
// "dns:spiffe://example.org/billing", never the SPIFFE ID.
//
// Policy rules name callers with Patterns: the same syntax, where '*' in the
// value matches any run of characters. A pattern must name its kind and,
// for SPIFFE IDs, its trust domain, literally.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Kind says where an identity comes from.
type Kind string

// The kinds of identity.
const (
	SPIFFE Kind = "spiffe"
	DNS    Kind = "dns"
	CN     Kind = "cn"
	Unix   Kind = "unix"
	Local  Kind = "local"
)

// prefix is how an identity of kind k starts.
func (k Kind) prefix() string {
	if k == SPIFFE {
		return "spiffe://"
	}
	return string(k) + ":"
}

var kinds = []Kind{SPIFFE, DNS, CN, Unix, Local}

// MaxLen bounds the canonical string of an identity.
const MaxLen = 2048

// ID is an identity. The zero ID is no identity.
type ID struct {
	kind  Kind
	value string // the canonical string, kind prefix included
}

// Kind returns the identity's kind.
func (id ID) Kind() Kind { return id.kind }

// String returns the canonical string, "" for the zero ID.
func (id ID) String() string { return id.value }

// IsZero reports whether id is no identity.
func (id ID) IsZero() bool { return id.value == "" }

// New returns the identity of kind k with value v (without the kind
// prefix; for SPIFFE, the whole spiffe:// ID). It refuses empty values,
// invalid UTF-8, control characters, over-long values, and SPIFFE IDs that
// break the SPIFFE ID rules.
func New(k Kind, v string) (ID, error) {
	switch k {
	case SPIFFE:
		if err := checkSPIFFE(v); err != nil {
			return ID{}, err
		}
		return ID{kind: k, value: v}, nil
	case DNS:
		v = strings.ToLower(v)
	case CN, Unix, Local:
	default:
		return ID{}, fmt.Errorf("unknown identity kind %q", k)
	}
	if err := checkValue(v); err != nil {
		return ID{}, fmt.Errorf("%s identity: %w", k, err)
	}
	return ID{kind: k, value: k.prefix() + v}, nil
}

func checkValue(v string) error {
	switch {
	case v == "":
		return errors.New("empty")
	case len(v) > MaxLen:
		return fmt.Errorf("longer than %d bytes", MaxLen)
	case !utf8.ValidString(v):
		return errors.New("not valid UTF-8")
	case strings.ContainsFunc(v, func(r rune) bool { return unicode.IsControl(r) || r == utf8.RuneError }):
		return errors.New("has a control character")
	}
	return nil
}

// Parse reads a canonical identity string. It accepts exactly what String
// returns.
func Parse(s string) (ID, error) {
	for _, k := range kinds {
		if k == SPIFFE && strings.HasPrefix(s, k.prefix()) {
			return New(k, s)
		}
		if v, ok := strings.CutPrefix(s, k.prefix()); ok && k != SPIFFE {
			return New(k, v)
		}
	}
	return ID{}, fmt.Errorf("%q does not name its kind; write spiffe://..., dns:NAME, cn:NAME, unix:NAME or local:NAME", clip(s))
}

// checkSPIFFE applies the SPIFFE ID rules (SPIFFE-ID.md, section 2): the
// scheme spiffe, a trust domain of lower case letters, digits, '.', '-'
// and '_', a path of non-empty segments of letters, digits, '.', '-' and
// '_' that are not "." or "..", and nothing else (no port, user info, query
// or fragment).
func checkSPIFFE(s string) error {
	if len(s) > MaxLen {
		return fmt.Errorf("SPIFFE ID longer than %d bytes", MaxLen)
	}
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return fmt.Errorf("SPIFFE ID %q: does not start with spiffe://", clip(s))
	}
	td, path, _ := strings.Cut(rest, "/")
	if td == "" {
		return fmt.Errorf("SPIFFE ID %q: no trust domain", clip(s))
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("SPIFFE ID %q: trust domain may hold only a-z, 0-9, '.', '-' and '_'", clip(s))
		}
	}
	if !strings.Contains(rest, "/") {
		return nil
	}
	for seg := range strings.SplitSeq(path, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("SPIFFE ID %q: empty, '.' or '..' path segment", clip(s))
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return fmt.Errorf("SPIFFE ID %q: path may hold only letters, digits, '.', '-' and '_'", clip(s))
			}
		}
	}
	return nil
}

// FromCertificate returns the identity a verified client certificate
// names: its SPIFFE ID when it has a spiffe URI SAN (two or more are
// refused, as the SPIFFE X.509-SVID rules require one), else its first DNS
// SAN, else its subject CN. URI SANs of other schemes name nothing.
func FromCertificate(c *x509.Certificate) (ID, error) {
	var spiffe []string
	for _, u := range c.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			spiffe = append(spiffe, u.String())
		}
	}
	switch {
	case len(spiffe) > 1:
		return ID{}, errors.New("client certificate has more than one SPIFFE ID")
	case len(spiffe) == 1:
		id, err := New(SPIFFE, spiffe[0])
		if err != nil {
			return ID{}, fmt.Errorf("client certificate: %w", err)
		}
		return id, nil
	case len(c.DNSNames) > 0:
		return New(DNS, c.DNSNames[0])
	case c.Subject.CommonName != "":
		return New(CN, c.Subject.CommonName)
	}
	return ID{}, errors.New("client certificate names no identity (no SPIFFE URI, DNS name or CN)")
}

func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// MustParse is Parse for identities written in code; it panics on an
// error.
func MustParse(s string) ID {
	id, err := Parse(s)
	if err != nil {
		panic("identity: " + err.Error())
	}
	return id
}
