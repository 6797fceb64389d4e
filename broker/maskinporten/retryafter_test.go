package maskinporten

import (
	"net/http"
	"testing"
	"time"
)

// TestParseRetryAfter: seconds or an HTTP date, never negative, and capped
// so that a server cannot park the client for long.
func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"":     0,
		"2":    2 * time.Second,
		" 7 ":  7 * time.Second,
		"-5":   0,
		"3600": maxRetryAfter,
		"soon": 0,
		now.Add(10 * time.Second).Format(http.TimeFormat): 10 * time.Second,
		now.Add(-time.Minute).Format(http.TimeFormat):     0,
		now.Add(time.Hour).Format(http.TimeFormat):        maxRetryAfter,
	} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}
