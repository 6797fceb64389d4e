// Package orgno checks Norwegian organisation numbers: nine digits, the last
// a MOD11 check digit over the first eight with weights 3 2 7 6 5 4 3 2.
package orgno

import (
	"errors"
	"strings"
)

// Prefix is the ISO 6523 ICD of Norwegian organisation numbers, as in
// "0192:310904473". Parse accepts and strips it.
const Prefix = "0192:"

// Errors returned by Parse.
var (
	ErrEmpty      = errors.New("empty")
	ErrLength     = errors.New("want exactly 9 digits")
	ErrNotDigits  = errors.New("want digits only")
	ErrCheckDigit = errors.New("bad check digit")
)

var weights = [8]int{3, 2, 7, 6, 5, 4, 3, 2}

// Parse returns the nine-digit organisation number in s, which may carry the
// "0192:" prefix. It accepts no spaces or other separators: an org number
// that needs cleaning is a caller's bug worth seeing.
func Parse(s string) (string, error) {
	s = strings.TrimPrefix(s, Prefix)
	if s == "" {
		return "", ErrEmpty
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "", ErrNotDigits
		}
	}
	if len(s) != 9 {
		return "", ErrLength
	}
	sum := 0
	for i, w := range weights {
		sum += int(s[i]-'0') * w
	}
	check := 11 - sum%11
	if check == 11 {
		check = 0
	}
	if check == 10 || int(s[8]-'0') != check {
		return "", ErrCheckDigit
	}
	return s, nil
}

// Valid reports whether s is a valid nine-digit organisation number, without
// a prefix.
func Valid(s string) bool {
	n, err := Parse(s)
	return err == nil && n == s
}
