// Package keyring holds the live signing keys of every Maskinporten client:
// it opens them through package keys, knows each client's active key,
// reports every key's status (for /healthz and metrics), probes the
// backends, and replaces the whole set at a reload, all or nothing.
//
// A Replace opens every key of the new set first. Only when all of them
// loaded does it swap the set in one step, tell the consumers of the active
// keys, and then close the keys of the old set. When any key fails, it
// closes what it opened and the running set stays exactly as it was.
package keyring

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
)

// ExpiryWarning is how long before a key's expiry the ring starts to warn.
const ExpiryWarning = 30 * 24 * time.Hour

// DefaultProbeInterval is how often RunProbes signs with every key when
// given no interval.
const DefaultProbeInterval = 15 * time.Second

// Key is one key of a client as configured.
type Key struct {
	signer.Spec
	// Active marks the key that signs the client's grants: exactly one
	// key of each client.
	Active bool
	// Expires is when Maskinporten stops accepting the key, when
	// configured; zero means the certificate's own expiry, if any.
	Expires time.Time
}

// Client is the keys of one Maskinporten client.
type Client struct {
	Name string
	Keys []Key
}

// activeKID is the kid of the client's active key.
func (c Client) activeKID() string {
	for _, k := range c.Keys {
		if k.Active {
			return k.KeyID
		}
	}
	return ""
}

// Config is what a Ring needs besides the keys.
type Config struct {
	// Logger receives key events (never key material); nil discards them.
	Logger *slog.Logger
	// Wrap, when not nil, wraps every key's signer (with a timer, say)
	// before the ring guards it.
	Wrap func(backend string, s crypto.Signer) crypto.Signer
	// Open opens a key; nil means keys.Open, which picks the backend by
	// the URI's scheme. Dev mode hands in its in-memory key this way.
	Open func(context.Context, signer.Spec) (*signer.Key, error)
	// Now is the clock for expiry; nil means time.Now.
	Now func() time.Time
}

// Status describes one key for /healthz and metrics.
type Status struct {
	Client, KeyID, Backend string
	// Active is true for the key that signs the client's grants.
	Active bool
	// Signing is false while the key's backend fails.
	Signing bool
	// Expires is when the key expires; zero if unknown.
	Expires time.Time
	// ExpiresSoon is true within ExpiryWarning of Expires.
	ExpiresSoon bool
}

// entry is one open key.
type entry struct {
	client  string
	key     *signer.Key
	guard   *signer.Guarded
	active  bool
	expires time.Time
}

// set is the keys of all clients, by client, in config order.
type set struct {
	clients []string
	keys    map[string][]*entry
}

func (s *set) all() []*entry {
	var out []*entry
	for _, c := range s.clients {
		out = append(out, s.keys[c]...)
	}
	return out
}

func (s *set) active(client string) *entry {
	for _, e := range s.keys[client] {
		if e.active {
			return e
		}
	}
	return nil
}

// Ring is the live keys of all clients. Its methods are safe for
// concurrent use.
type Ring struct {
	cfg Config
	log *slog.Logger

	replace sync.Mutex // serialises Replace and Close
	mu      sync.Mutex // guards what follows
	cur     *set
	// onActive is called with each client's active key after every
	// successful Replace (the maskinporten client signs with it).
	onActive func(client string, k *signer.Key)
	// setReady receives whether every active key signs, whenever that may
	// have changed.
	setReady func(bool)
}

// Notify sets who hears of the ring's changes from now on: onActive gets
// each client's active key after every successful Replace, and setReady
// whether every active key signs (at once, and whenever that may have
// changed). Either may be nil.
func (r *Ring) Notify(onActive func(client string, k *signer.Key), setReady func(bool)) {
	r.mu.Lock()
	r.onActive, r.setReady = onActive, setReady
	r.mu.Unlock()
	r.updateReady()
}

// Open opens every key of clients and returns the ring holding them. On
// error it closes whatever it opened.
func Open(ctx context.Context, cfg Config, clients []Client) (*Ring, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Open == nil {
		cfg.Open = keys.Open
	}
	if len(clients) == 0 {
		return nil, errors.New("keyring: no clients")
	}
	r := &Ring{cfg: cfg, log: cfg.Logger}
	s, err := r.open(ctx, clients)
	if err != nil {
		return nil, err
	}
	r.cur = s
	return r, nil
}

// Replace makes clients the ring's keys: the same clients as before (adding
// or removing one needs a restart), each still listing its active key
// unless it names another one active. It opens every key first; when all
// loaded, it swaps them in at once, reports the active keys to OnActive,
// and closes the old keys (waiting for signatures under way). On any error
// it closes what it opened and changes nothing.
func (r *Ring) Replace(ctx context.Context, clients []Client) error {
	r.replace.Lock()
	defer r.replace.Unlock()
	r.mu.Lock()
	old := r.cur
	r.mu.Unlock()
	if old == nil {
		return errors.New("keyring: closed")
	}
	if err := checkSameClients(old, clients); err != nil {
		return err
	}
	for i, c := range clients {
		current := old.active(c.Name).key.KeyID
		listed := slices.ContainsFunc(c.Keys, func(k Key) bool { return k.KeyID == current })
		if !listed && c.activeKID() != "" {
			return fmt.Errorf("clients[%d] (%s): the active key %q was removed; make another key active, reload, and only then remove it",
				i, c.Name, current)
		}
	}
	next, err := r.open(ctx, clients)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.cur = next
	r.mu.Unlock()
	r.publish(old, next)
	closeAll(old)
	return nil
}

func checkSameClients(old *set, clients []Client) error {
	names := map[string]bool{}
	for i, c := range clients {
		if _, ok := old.keys[c.Name]; !ok {
			return fmt.Errorf("clients[%d] (%s): adding a client needs a restart", i, c.Name)
		}
		names[c.Name] = true
	}
	for _, c := range old.clients {
		if !names[c] {
			return fmt.Errorf("clients: removing client %q needs a restart", c)
		}
	}
	return nil
}

// open opens every key of clients, closing them all on the first error.
func (r *Ring) open(ctx context.Context, clients []Client) (_ *set, err error) {
	s := &set{keys: map[string][]*entry{}}
	defer func() {
		if err != nil {
			closeAll(s)
		}
	}()
	for i, c := range clients {
		if _, dup := s.keys[c.Name]; dup {
			return nil, fmt.Errorf("clients[%d].name: %q used twice", i, c.Name)
		}
		s.clients = append(s.clients, c.Name)
		s.keys[c.Name] = nil
		for _, kc := range c.Keys {
			e, err := r.openKey(ctx, c.Name, kc, kc.Active)
			if err != nil {
				return nil, fmt.Errorf("clients[%d] (%s) key %q: %w", i, c.Name, kc.KeyID, err)
			}
			s.keys[c.Name] = append(s.keys[c.Name], e)
		}
		if n := len(slices.DeleteFunc(slices.Clone(c.Keys), func(k Key) bool { return !k.Active })); n != 1 {
			return nil, fmt.Errorf("clients[%d] (%s): %d active keys, want exactly one", i, c.Name, n)
		}
	}
	return s, nil
}

func (r *Ring) openKey(ctx context.Context, client string, kc Key, active bool) (*entry, error) {
	key, err := r.cfg.Open(ctx, kc.Spec)
	if err != nil {
		return nil, err
	}
	if r.cfg.Wrap != nil {
		key.Signer = r.cfg.Wrap(key.Backend, key.Signer)
	}
	e := &entry{client: client, key: key, active: active, expires: kc.Expires}
	e.guard = signer.Guard(key.Signer, kc.Timeout(), func(ok bool) { r.signerChanged(e, ok) })
	key.Signer = e.guard
	if e.expires.IsZero() {
		e.expires = key.NotAfter() // a certificate's own expiry
	}
	r.warnExpiry(ctx, e)
	return e, nil
}

// publish tells onActive about every client's active key of next, logs
// changes from old, and recomputes readiness.
func (r *Ring) publish(old, next *set) {
	r.mu.Lock()
	onActive := r.onActive
	r.mu.Unlock()
	for _, c := range next.clients {
		k := next.active(c).key
		if was := old.active(c).key.KeyID; was != k.KeyID {
			r.log.Info("active key changed", slog.String("client", c), slog.String("from", was), slog.String("to", k.KeyID))
		}
		if onActive != nil {
			onActive(c, k)
		}
	}
	r.updateReady()
}

// closeAll retires and closes every key of s; s may be partly filled.
func closeAll(s *set) {
	for _, e := range s.all() {
		e.guard.Retire()
		_ = e.key.Close()
	}
}

// Active returns the active key of client, or nil for an unknown client.
func (r *Ring) Active(client string) *signer.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return nil
	}
	if e := r.cur.active(client); e != nil {
		return e.key
	}
	return nil
}

// Key returns client's key kid as the ring holds it now, or nil when it
// holds no such key.
func (r *Ring) Key(client, kid string) *signer.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil || kid == "" {
		return nil
	}
	for _, e := range r.cur.keys[client] {
		if e.key.KeyID == kid {
			return e.key
		}
	}
	return nil
}

// Status lists every key, sorted by client and kid.
func (r *Ring) Status() []Status {
	r.mu.Lock()
	var es []*entry
	if r.cur != nil {
		es = r.cur.all()
	}
	r.mu.Unlock()
	now := r.cfg.Now()
	out := make([]Status, 0, len(es))
	for _, e := range es {
		st := Status{Client: e.client, KeyID: e.key.KeyID, Backend: e.key.Backend, Active: e.active,
			Signing: e.guard.Healthy(), Expires: e.expires}
		st.ExpiresSoon = !e.expires.IsZero() && e.expires.Sub(now) < ExpiryWarning
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b Status) int {
		return strings.Compare(a.Client+"\x00"+a.KeyID, b.Client+"\x00"+b.KeyID)
	})
	return out
}

// Probe signs a throwaway digest with every key, active or standby, so that
// readiness and the key status follow the backends even without traffic,
// and a broken standby key shows before a rotation to it.
func (r *Ring) Probe() {
	r.mu.Lock()
	var es []*entry
	if r.cur != nil {
		es = r.cur.all()
	}
	r.mu.Unlock()
	for _, e := range es {
		_ = e.guard.Probe(crypto.SHA256)
	}
}

// RunProbes probes every interval (DefaultProbeInterval when zero) until
// ctx ends.
func (r *Ring) RunProbes(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultProbeInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.Probe()
	}
}

// Close closes every key; the ring holds none afterwards.
func (r *Ring) Close() error {
	r.replace.Lock()
	defer r.replace.Unlock()
	r.mu.Lock()
	s := r.cur
	r.cur = nil
	r.mu.Unlock()
	if s != nil {
		closeAll(s)
	}
	return nil
}

// signerChanged logs that a key stopped or resumed signing and recomputes
// readiness, which follows the active keys of the current set only.
func (r *Ring) signerChanged(e *entry, ok bool) {
	attrs := []any{slog.String("client", e.client), slog.String("kid", e.key.KeyID), slog.String("backend", e.key.Backend)}
	if ok {
		r.log.Info("key signs again", attrs...)
	} else {
		r.log.Error("key does not sign", attrs...)
	}
	r.updateReady()
}

func (r *Ring) updateReady() {
	r.mu.Lock()
	all := true
	if r.cur != nil {
		for _, c := range r.cur.clients {
			all = all && r.cur.active(c).guard.Healthy()
		}
	}
	set := r.setReady
	r.mu.Unlock()
	if set != nil {
		set(all)
	}
	if !all {
		r.log.Error("an active key does not sign: readiness is NOT_SERVING until it signs again")
	}
}

// warnExpiry logs a warning for a key that has expired or expires within
// ExpiryWarning.
func (r *Ring) warnExpiry(ctx context.Context, e *entry) {
	if e.expires.IsZero() {
		return
	}
	switch left := e.expires.Sub(r.cfg.Now()); {
	case left <= 0:
		r.log.ErrorContext(ctx, "key has expired: Maskinporten refuses its grants (MP-121); register a new key and rotate",
			slog.String("client", e.client), slog.String("kid", e.key.KeyID), slog.Time("expired", e.expires))
	case left < ExpiryWarning:
		r.log.WarnContext(ctx, "key expires soon: register a new key at Maskinporten and rotate",
			slog.String("client", e.client), slog.String("kid", e.key.KeyID), slog.Time("expires", e.expires),
			slog.Duration("left", left.Round(time.Hour)))
	}
}
