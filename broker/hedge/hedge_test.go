package hedge

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/breaker"
)

var classes = Classes{
	Answered: func(err error) bool { return !errors.Is(err, errDown) },
	Final:    func(err error) bool { return !errors.Is(err, errDown) },
	Open:     func(oe *breaker.OpenError) error { return oe },
}

var errDown = errors.New("down")

func TestDelay(t *testing.T) {
	t.Parallel()
	h := New(Config{})
	if d := h.Delay(); d != DefaultFloor {
		t.Errorf("delay without samples %v, want the floor", d)
	}
	for i := 0; i < 200; i++ {
		h.observe(10 * time.Millisecond)
	}
	if d := h.Delay(); d != DefaultFloor {
		t.Errorf("delay with a 10ms p99 %v, want the floor", d)
	}
	for i := 0; i < 5; i++ {
		h.observe(600 * time.Millisecond)
	}
	if d := h.Delay(); d != 1200*time.Millisecond {
		t.Errorf("delay with a 600ms p99 %v, want 1.2s", d)
	}
	for i := 0; i < 5; i++ {
		h.observe(time.Minute)
	}
	if d := h.Delay(); d != DefaultMax {
		t.Errorf("delay with a 1 min p99 %v, want the cap", d)
	}
}

func TestBudget(t *testing.T) {
	t.Parallel()
	h := New(Config{})
	for i := 0; i < DefaultMinPerMinute; i++ {
		if !h.canHedge() {
			t.Fatalf("hedge %d refused within the floor", i)
		}
		h.count(true)
	}
	if h.canHedge() {
		t.Fatal("hedge beyond the floor allowed without attempts")
	}
	for i := 0; i < 100; i++ {
		h.count(false)
	}
	n := DefaultMinPerMinute
	for h.canHedge() {
		h.count(true)
		n++
	}
	if n != 10 {
		t.Errorf("%d hedges allowed with 100 attempts, want 10", n)
	}
	if New(Config{Budget: -1}).canHedge() {
		t.Error("a negative budget allowed a hedge")
	}
}

// A hung primary is hedged; the hedge wins and the primary is cancelled.
func TestRunHedgeWins(t *testing.T) {
	t.Parallel()
	h := New(Config{Floor: time.Millisecond})
	var cancelled atomic.Bool
	v, err := Run(context.Background(), h, classes, func(ctx context.Context, hedge bool) (string, error) {
		if !hedge {
			<-ctx.Done()
			cancelled.Store(true)
			return "", ctx.Err()
		}
		return "hedge", nil
	})
	if err != nil || v != "hedge" {
		t.Fatalf("Run = %q, %v", v, err)
	}
	if s := h.Stats(); s.Attempts != 2 || s.Hedges != 1 || s.HedgeWins != 1 {
		t.Errorf("stats %+v", s)
	}
}

// Hung attempts open the breaker (each is reported at the hedge delay), and
// the runs hung on them are abandoned at once.
func TestRunHangOpensBreaker(t *testing.T) {
	t.Parallel()
	b := breaker.New(breaker.Config{Failures: 3, OpenFor: time.Hour})
	h := New(Config{Floor: time.Millisecond, Breaker: b})
	hang := func(ctx context.Context, hedge bool) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := Run(context.Background(), h, classes, hang)
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		var oe *breaker.OpenError
		if err := <-errs; !errors.As(err, &oe) {
			t.Fatalf("hung run: %v, want the breaker's OpenError", err)
		}
	}
	if !b.Open() {
		t.Fatal("breaker closed")
	}
	if _, err := Run(context.Background(), h, classes, hang); err == nil {
		t.Fatal("Run with the breaker open went through")
	}
	if s := h.Stats(); s.Attempts > 4 || s.Abandoned != 2 {
		t.Errorf("stats %+v: want at most 4 attempts, 2 runs abandoned", s)
	}
}

// Under OneHedge, a second Run (a retry) does not hedge again.
func TestOneHedge(t *testing.T) {
	t.Parallel()
	h := New(Config{Floor: time.Millisecond})
	ctx := OneHedge(context.Background())
	slowFail := func(ctx context.Context, hedge bool) (int, error) {
		if !hedge {
			time.Sleep(5 * time.Millisecond)
		}
		return 0, errDown
	}
	for i := 0; i < 2; i++ {
		if _, err := Run(ctx, h, classes, slowFail); !errors.Is(err, errDown) {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	if s := h.Stats(); s.Attempts != 3 || s.Hedges != 1 {
		t.Errorf("stats %+v: want 3 attempts, 1 hedge", s)
	}
}
