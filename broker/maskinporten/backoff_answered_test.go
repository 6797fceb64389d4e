package maskinporten

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestBackoffNeverShorterThanRetryAfter: whatever the jittered window
// draws, the wait before the next attempt is at least the server's
// Retry-After.
func TestBackoffNeverShorterThanRetryAfter(t *testing.T) {
	t.Parallel()
	c := &Client{retry: RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}}
	for attempt := 1; attempt <= 5; attempt++ {
		if d := c.backoff(attempt, 10*time.Second); d < 10*time.Second {
			t.Fatalf("attempt %d: backoff %v, want at least the Retry-After of 10s", attempt, d)
		}
	}
}

// TestAnsweredForTheBreaker: a caller giving up says nothing about the
// upstream, whatever error its attempt ended with; without that, no
// answer, a 5xx and a 429 are not answers, a refusal of Maskinporten's own
// is one.
func TestAnsweredForTheBreaker(t *testing.T) {
	t.Parallel()
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"success", live, nil, true},
		{"caller gave up during a 503", gone, &Error{StatusCode: 503, Retryable: true}, true},
		{"caller gave up, no answer", gone, &Error{Retryable: true}, true},
		{"503", live, &Error{StatusCode: 503, Retryable: true}, false},
		{"429", live, &Error{StatusCode: 429, Retryable: true}, false},
		{"no answer", live, &Error{Retryable: true}, false},
		{"invalid_grant", live, &Error{StatusCode: 400}, true},
		{"not an upstream error", live, errors.New("signing failed"), true},
	} {
		if got := answered(c.ctx, c.err); got != c.want {
			t.Errorf("%s: answered = %v, want %v", c.name, got, c.want)
		}
	}
}
