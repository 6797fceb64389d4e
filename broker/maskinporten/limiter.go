package maskinporten

import (
	"context"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// grantLimiter caps the grants a client sends per second. Grants for which
// a caller waits take their turn first; refresh-ahead grants go only while
// no such grant waits.
type grantLimiter struct {
	lim    *rate.Limiter
	urgent atomic.Int64 // grants with callers waiting on the limiter
}

// wait returns when a grant may go out, or ctx's error.
func (l *grantLimiter) wait(ctx context.Context, urgent func() bool) error {
	if l.lim.Limit() == rate.Inf {
		return nil
	}
	for {
		if urgent() {
			l.urgent.Add(1)
			defer l.urgent.Add(-1)
			return l.lim.Wait(ctx)
		}
		step := time.Duration(float64(time.Second) / float64(l.lim.Limit()))
		if l.urgent.Load() == 0 {
			r := l.lim.Reserve()
			d := r.Delay()
			if d == 0 {
				return nil
			}
			r.Cancel()
			step = min(step, d)
		}
		t := time.NewTimer(max(step, time.Millisecond))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

type waitersKey struct{}

// WithWaiters marks the fetch run under ctx as refresh-ahead work for as
// long as waiting reports false: its grants then yield to grants a caller
// waits for when the client's grant rate is reached. A ctx without the mark
// counts as waited for.
func WithWaiters(ctx context.Context, waiting *atomic.Bool) context.Context {
	return context.WithValue(ctx, waitersKey{}, waiting)
}

// urgent returns whether a caller waits for the fetch run under ctx.
func urgent(ctx context.Context) func() bool {
	w, ok := ctx.Value(waitersKey{}).(*atomic.Bool)
	if !ok {
		return func() bool { return true }
	}
	return w.Load
}
