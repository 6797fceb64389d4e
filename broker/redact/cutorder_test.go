package redact

import (
	"strings"
	"testing"
)

// TestCutNeverLeavesPartOfASecret: Cut cleans the whole text before it
// bounds it. A secret that straddles the cut (here a 40-character hex
// run, which only a run of 32 or more is recognised as) is replaced
// whole; cut first, its first characters would be left, too short to be
// recognised.
func TestCutNeverLeavesPartOfASecret(t *testing.T) {
	t.Parallel()
	const secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
	filler := strings.Repeat("error ", 83) // 498 bytes
	for n := len(filler) + 1; n < len(filler)+len(secret); n++ {
		got := Cut(filler+secret, n)
		if strings.Contains(got, secret[:min(8, n-len(filler))]) {
			t.Fatalf("Cut at %d: %q keeps the start of the secret", n, got[len(got)-min(len(got), 40):])
		}
		if len(got) > n+len("...") {
			t.Fatalf("Cut at %d: %d bytes", n, len(got))
		}
	}
}
