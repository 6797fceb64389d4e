package breaker

import (
	"errors"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func call(t *testing.T, b *Breaker, ok bool) error {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		return err
	}
	done(ok)
	return nil
}

func TestBreaker(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1000, 0)}
	b := New(Config{Failures: 3, OpenFor: time.Second, Now: clk.now})

	// Failures below the threshold, broken by a success, keep it closed.
	for i := 0; i < 2; i++ {
		if err := call(t, b, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := call(t, b, true); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := call(t, b, false); err != nil {
			t.Fatal(err)
		}
	}
	if b.Open() {
		t.Fatal("open after 2 consecutive failures, threshold 3")
	}
	// The third consecutive failure opens it.
	if err := call(t, b, false); err != nil {
		t.Fatal(err)
	}
	var oe *OpenError
	if err := call(t, b, true); !errors.As(err, &oe) || !oe.Until.Equal(clk.now().Add(time.Second)) {
		t.Fatalf("call while open: %v, want OpenError until +1s", err)
	}
	// After OpenFor, exactly one probe goes through.
	clk.advance(time.Second)
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("probe refused: %v", err)
	}
	if _, err := b.Allow(); !errors.As(err, &oe) {
		t.Fatalf("second call during the probe: %v, want OpenError", err)
	}
	// A failed probe opens it again at once.
	probe(false)
	if err := call(t, b, true); !errors.As(err, &oe) {
		t.Fatalf("after a failed probe: %v, want OpenError", err)
	}
	clk.advance(time.Second)
	if err := call(t, b, true); err != nil {
		t.Fatalf("second probe: %v", err)
	}
	if b.Open() {
		t.Fatal("still open after a successful probe")
	}
	if err := call(t, b, true); err != nil {
		t.Fatal(err)
	}
}

func TestDoneIsIdempotent(t *testing.T) {
	t.Parallel()
	b := New(Config{Failures: 2})
	done, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	done(false)
	done(false)
	if b.Open() {
		t.Fatal("one failure reported twice opened a threshold-2 breaker")
	}
}

// A probe reported hung frees the half-open state at once; a late answer
// closes the circuit; listeners hear every change.
func TestHungProbeAndLateAnswer(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1000, 0)}
	states := make(chan State, 10)
	b := New(Config{Failures: 1, OpenFor: 10 * time.Millisecond, Now: clk.now})
	b.Notify(func(s State) { states <- s })
	opened := b.Opened()
	if err := call(t, b, false); err != nil {
		t.Fatal(err)
	}
	<-opened // closed by the opening
	if s := <-states; s != Open {
		t.Fatalf("state %v, want open", s)
	}
	clk.advance(10 * time.Millisecond)
	if s := <-states; s != ProbeDue {
		t.Fatalf("state %v, want probe due", s)
	}
	probe, err := b.Call()
	if err != nil {
		t.Fatal(err)
	}
	probe.Done(false) // hung past the hedge delay
	clk.advance(10 * time.Millisecond)
	late, err := b.Call()
	if err != nil {
		t.Fatalf("a hung probe kept the circuit half-open: %v", err)
	}
	late.Release()
	if !b.Open() {
		t.Fatal("a released call changed the state")
	}
	probe.Done(true) // the first probe answers after all
	if b.Open() {
		t.Fatal("a late answer did not close the circuit")
	}
	for s := range states {
		if s == Closed {
			break
		}
	}
}
