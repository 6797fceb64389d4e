package rotation

import (
	"context"
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

// Follow reads the client's state from store every every
// (DefaultFollowEvery when zero) until ctx ends, and calls apply whenever
// its keys differ from the last state applied; a failed apply is tried
// again at the next read. This is how the replicas that do not rotate
// pick up a new active key without a restart. last is the state the
// broker started with. onRead, which may be nil, gets every state read
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
}

// Status reads the client's state and registration.
func (r *Rotator) Status(ctx context.Context) (Status, error) {
	st, err := r.cfg.Store.Load(ctx, r.cfg.Client)
	if err != nil {
		return Status{}, err
	}
	out := Status{Client: r.cfg.Client, ClientID: r.cfg.ClientID, Active: st.ActiveKID(r.cfg.ConfigActive),
		LastRotation: st.LastRotation, LastOutcome: st.LastOutcome, LastError: st.LastError, LastAttempt: st.LastAttempt}
	if st.Rotation != nil {
		out.Next, out.Step = st.Rotation.Next, st.Rotation.Step
	}
	p := &pass{r: r, st: st}
	if err := p.readRegistration(ctx); err != nil {
		out.RegistryError = cut(err.Error())
	}
	out.Registered = p.st.Registered
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
