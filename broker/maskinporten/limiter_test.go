package maskinporten

import (
	"context"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"
)

// A grant a caller waits for goes before a refresh-ahead grant that was
// waiting first; a refresh-ahead grant whose flight gains a caller is
// promoted.
func TestGrantLimiterPriority(t *testing.T) {
	t.Parallel()
	l := &grantLimiter{lim: rate.NewLimiter(20, 1)}
	l.lim.Allow() // spend the burst
	order := make(chan string, 3)
	var background, promoted atomic.Bool
	bgCtx := WithWaiters(context.Background(), &background)
	go func() {
		if l.wait(bgCtx, urgent(bgCtx)) == nil {
			order <- "background"
		}
	}()
	go func() {
		if l.wait(context.Background(), urgent(context.Background())) == nil {
			order <- "caller"
		}
	}()
	if got := <-order; got != "caller" {
		t.Fatalf("%s got the first grant, want the caller's", got)
	}
	if got := <-order; got != "background" {
		t.Fatalf("then %s", got)
	}
	pCtx := WithWaiters(context.Background(), &promoted)
	promoted.Store(true)
	if !urgent(pCtx)() {
		t.Error("a flight with a caller is not urgent")
	}
}
