package audit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Throttle writes records to a Log at most Rate per second per key (a
// peer address, or a caller identity), with bursts of Burst. Records over
// the rate are counted, not written; the count is written as one record
// with Decision Suppressed once the key may write again, or at the latest
// by the first Write (of any key) a second after, or by Flush. So one
// peer can neither flood the sink nor hide how much it tried.
//
// It is for records nobody must see each of (unauthenticated, invalid and
// rate-limited calls); decisions on authenticated calls go to the Log
// directly, one record each. A nil *Throttle discards.
type Throttle struct {
	log   *Log
	rate  rate.Limit
	burst int
	now   func() time.Time

	mu        sync.Mutex
	keys      map[string]*throttled
	lastSweep time.Time
}

type throttled struct {
	lim     *rate.Limiter
	dropped int
	sample  Record // the last dropped record, for the summary's fields
}

// MaxThrottleKeys bounds the keys a Throttle tracks; past it, new keys
// share one bucket, so many peers cannot grow the map without bound.
const MaxThrottleKeys = 4096

// overflowKey is the shared bucket of keys past MaxThrottleKeys.
const overflowKey = "\x00overflow"

// NewThrottle returns a Throttle writing to l. perSecond 0 means 5, burst
// 0 means 20.
func NewThrottle(l *Log, perSecond float64, burst int) *Throttle {
	if perSecond <= 0 {
		perSecond = 5
	}
	if burst <= 0 {
		burst = 20
	}
	return &Throttle{log: l, rate: rate.Limit(perSecond), burst: burst, now: time.Now, keys: map[string]*throttled{}}
}

// Write writes r for key unless key is over its rate.
func (t *Throttle) Write(key string, r Record) error {
	if t == nil || t.log == nil {
		return nil
	}
	now := t.now()
	t.mu.Lock()
	summaries := t.sweepLocked(now)
	k, ok := t.keys[key]
	if !ok {
		if len(t.keys) >= MaxThrottleKeys {
			key = overflowKey
			k = t.keys[key]
		}
		if k == nil {
			k = &throttled{lim: rate.NewLimiter(t.rate, t.burst)}
			t.keys[key] = k
		}
	}
	allowed := k.lim.AllowN(now, 1)
	if !allowed {
		k.dropped++
		k.sample = r
	} else if k.dropped > 0 {
		summaries = append(summaries, summary(k, now))
	}
	t.mu.Unlock()
	var first error
	for _, s := range summaries {
		if err := t.log.Write(s); err != nil && first == nil {
			first = err
		}
	}
	if allowed {
		if err := t.log.Write(r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Flush writes the summary of every key with dropped records.
func (t *Throttle) Flush() error {
	if t == nil || t.log == nil {
		return nil
	}
	t.mu.Lock()
	var summaries []Record
	for _, k := range t.keys {
		if k.dropped > 0 {
			summaries = append(summaries, summary(k, t.now()))
		}
	}
	t.mu.Unlock()
	var first error
	for _, s := range summaries {
		if err := t.log.Write(s); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// sweepLocked, at most once a second, collects the summaries of keys with
// dropped records and forgets keys whose bucket is full again (they would
// start afresh anyway).
func (t *Throttle) sweepLocked(now time.Time) []Record {
	if now.Sub(t.lastSweep) < time.Second {
		return nil
	}
	t.lastSweep = now
	var out []Record
	for key, k := range t.keys {
		if k.dropped > 0 {
			out = append(out, summary(k, now))
		}
		if k.lim.TokensAt(now) >= float64(t.burst) {
			delete(t.keys, key)
		}
	}
	return out
}

// summary makes the Suppressed record of k and resets its count.
func summary(k *throttled, now time.Time) Record {
	s := Record{Time: now, Caller: k.sample.Caller, Peer: k.sample.Peer, Method: k.sample.Method,
		Decision: Suppressed, Code: k.sample.Code, Reason: "records over the audit rate of this peer or caller were not written",
		SuppressedCount: k.dropped}
	k.dropped = 0
	return s
}
