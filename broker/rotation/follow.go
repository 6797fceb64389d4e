package rotation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// SameKeys reports whether a and b give the broker the same keys: the same
// active kid, managed keys and retired kids.
func SameKeys(a, b State) bool {
	return a.Active == b.Active &&
		slices.Equal(a.Keys, b.Keys) &&
		slices.Equal(a.Retired, b.Retired)
}

// Regressed reports whether st goes back from last, which the rotator's
// saves never do: st has no keys where last had some (the Store lost the
// State: Redis restarted without persistence, evicted or flushed it, the
// state file was deleted), or it is older than last (an older State put
// back): a lower Seq, or, for states saved before Seq was kept, an older
// last rotation. Applying such a State would switch the broker to a key
// Maskinporten may no longer accept; the rotator and the followers refuse
// it, and only a restart takes it.
func Regressed(last, st State) bool {
	if holdsKeys(last) && !holdsKeys(st) {
		return true
	}
	if last.Seq > 0 || st.Seq > 0 {
		return st.Seq < last.Seq
	}
	return st.LastRotation.Before(last.LastRotation)
}

// holdsKeys reports whether st says anything about the client's keys.
func holdsKeys(st State) bool {
	return st.Active != "" || len(st.Keys) > 0 || len(st.Retired) > 0 || st.Rotation != nil
}

// ErrRegressed is the error of a State that went back (see Regressed).
var ErrRegressed = errors.New("rotation: the stored state went back (lost, or an older one put back); keeping the keys in use, a restart takes it")

// Follow reads the client's state from store every every
// (DefaultFollowEvery when zero) until ctx ends, and calls apply whenever
// its keys differ from the last state applied; a failed apply is tried
// again at the next read. This is how the replicas that do not rotate
// pick up a new active key without a restart. last is the state the
// broker started with. A state that went back from the last one applied
// (Regressed) is not applied: onRead gets ErrRegressed. onRead, which may be nil, gets every state read
// and the error of the read or of its apply.
func Follow(ctx context.Context, store Store, client string, every time.Duration, last State,
	apply func(context.Context, State) error, onRead func(State, error)) {
	if every <= 0 {
		every = DefaultFollowEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := store.Load(ctx, client)
		if err == nil && Regressed(last, st) {
			err = fmt.Errorf("client %s: %w", client, ErrRegressed)
		}
		if err == nil && !SameKeys(st, last) {
			if err = apply(ctx, st); err == nil {
				last = st
			}
		}
		if onRead != nil && ctx.Err() == nil {
			onRead(st, err)
		}
	}
}

// Status is what `tokenbroker keys status` shows of one client.
type Status struct {
	Client, ClientID string
	// Active is the active kid; Next the kid of a rotation under way.
	Active, Next string
	Step         Step
	// Registered are the keys registered at Digdir, as read now (or, when
	// the read failed, as last seen, with RegistryError set).
	Registered    []RegisteredInfo
	RegistryError string
	// LastRotation, LastOutcome, LastError, LastAttempt: from the state.
	LastRotation time.Time
	LastOutcome  string
	LastError    string
	LastAttempt  time.Time
	// Due is when the next rotation is due.
	Due time.Time
	// StateLost, when the state is empty but the registration shows it
	// was lost (ErrStateLost), says what happened and how to recover.
	StateLost string
	// Blocking are the live replicas that, at the last pass of the retire
	// step, still signed with another key (the old key stays registered).
	Blocking []Blocker
	// Replicas are the live acks now, by replica id, when the Store keeps
	// acks (Acker); AcksError says why they could not be read.
	Replicas  map[string]Ack
	AcksError string
}

// Status reads the client's state and registration.
func (r *Rotator) Status(ctx context.Context) (Status, error) {
	st, err := r.cfg.Store.Load(ctx, r.cfg.Client)
	if err != nil {
		return Status{}, err
	}
	out := Status{Client: r.cfg.Client, ClientID: r.cfg.ClientID, Active: st.ActiveKID(r.cfg.ConfigActive),
		LastRotation: st.LastRotation, LastOutcome: st.LastOutcome, LastError: st.LastError, LastAttempt: st.LastAttempt,
		Blocking: st.Blocking}
	if acker, ok := r.cfg.Store.(Acker); ok {
		if out.Replicas, err = acker.Acks(ctx, r.cfg.Client); err != nil {
			out.AcksError = cut(err.Error())
		}
	}
	if st.Rotation != nil {
		out.Next, out.Step = st.Rotation.Next, st.Rotation.Step
	}
	p := &pass{r: r, st: st}
	if err := p.readRegistration(ctx); err != nil {
		out.RegistryError = cut(err.Error())
	}
	out.Registered = p.st.Registered
	if err := r.lostState(st, p.reg); err != nil {
		out.StateLost = err.Error()
	}
	out.Due = r.Due(st, p.reg)
	if p.reg == nil && len(st.Registered) > 0 && out.RegistryError != "" {
		// Due from what the state last saw.
		var reg []Registered
		for _, k := range st.Registered {
			reg = append(reg, Registered{KID: k.KID, Expires: k.Expires, Created: k.Created})
		}
		out.Due = r.Due(st, reg)
	}
	return out, nil
}
