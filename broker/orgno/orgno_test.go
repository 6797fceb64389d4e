package orgno

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	valid := []string{"991825827", "310904473", "314250052", "313775429", "210493352", "123456785", "910753614", "889640782"}
	for _, s := range valid {
		got, err := Parse(s)
		if err != nil || got != s {
			t.Errorf("Parse(%q) = %q, %v; want %q", s, got, err, s)
		}
		if got, err := Parse(Prefix + s); err != nil || got != s {
			t.Errorf("Parse(%q) = %q, %v; want %q", Prefix+s, got, err, s)
		}
	}
	invalid := []struct {
		in   string
		want error
	}{
		{"123456789", ErrCheckDigit},
		{"987654321", ErrCheckDigit},
		{"999888777", ErrCheckDigit},
		{"897069650", ErrCheckDigit},
		{"12345678", ErrLength},
		{"1234567890", ErrLength},
		{"abcdefghi", ErrNotDigits},
		{" 310904473", ErrNotDigits},
		{"310904473 ", ErrNotDigits},
		{"310 904 473", ErrNotDigits},
		{"", ErrEmpty},
		{"0192:", ErrEmpty},
		{"0192:0192:310904473", ErrNotDigits},
		{"３１０９０４４７３", ErrNotDigits},
	}
	for _, tc := range invalid {
		if _, err := Parse(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) error = %v, want %v", tc.in, err, tc.want)
		}
	}
}

// TestCheckDigitTen covers prefixes whose remainder is 1, for which no check
// digit exists: every last digit must be refused.
func TestCheckDigitTen(t *testing.T) {
	t.Parallel()
	found := 0
	for n := 0; n < 100000000 && found < 5; n += 7919 {
		p := pad8(n)
		sum := 0
		for i, w := range weights {
			sum += int(p[i]-'0') * w
		}
		if sum%11 != 1 {
			continue
		}
		found++
		for d := byte('0'); d <= '9'; d++ {
			if _, err := Parse(p + string(d)); !errors.Is(err, ErrCheckDigit) {
				t.Errorf("Parse(%q) error = %v, want ErrCheckDigit", p+string(d), err)
			}
		}
	}
	if found == 0 {
		t.Fatal("no prefix with remainder 1 found")
	}
}

func pad8(n int) string {
	b := []byte("00000000")
	for i := 7; i >= 0 && n > 0; i-- {
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b)
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"310904473", "0192:310904473", "123456789", "", "abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			return
		}
		if !Valid(got) || len(got) != 9 {
			t.Fatalf("Parse(%q) = %q, which Valid rejects", s, got)
		}
	})
}
