package daemon

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/rotation/filestore"
	"github.com/tokenbroker/tokenbroker/broker/rotation/redisstore"
	"github.com/tokenbroker/tokenbroker/broker/selfservice"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/metrics"
)

// keyRotation is the automatic key rotation of the clients that have a
// rotation section: one Rotator each, a Store they share with the other
// replicas, and the last state read of each, for the key ring, the
// metrics and the status.
type keyRotation struct {
	store       rotation.Store
	names       []string
	rotators    map[string]*rotation.Rotator
	makers      map[string]keymaker.Maker // each client's, for owns
	checkEvery  time.Duration
	followEvery time.Duration
	log         *slog.Logger
	close       func()
	// certExpiry is when the self-service client's business certificate
	// expires: rotation stops with it.
	certExpiry time.Time

	mu     sync.Mutex
	states map[string]rotation.State
	// applied are the states the key ring was built from, by client: those
	// of states this replica could apply. A state that cannot be applied
	// (a new key this replica cannot open) is in states, for the status
	// and the metrics, but not here, so that another client's change or a
	// reload does not try it again and fail with it.
	applied map[string]rotation.State
	// apply makes the broker use a client's new state; nil until run
	// (the keys commands have no broker).
	apply func(ctx context.Context, client string, st rotation.State) error
	// errs is the last error of each client's follower, logged once.
	errs map[string]string
	// replica is this process's id in the acks, and signsWith returns the
	// kid its key ring signs a client's grants with; both set by run (the
	// keys commands have no key ring and do not ack).
	replica   string
	signsWith func(client string) string
}

// rotationEnv is what newKeyRotation needs from whoever builds it: the
// daemon (which applies states to its key ring) or a command (which does
// not).
type rotationEnv struct {
	cfg     *Config
	baseDir string
	log     *slog.Logger
	http    *http.Client
	env     maskinporten.Environment
	// open opens keys (keys.Open unless dev hands in its own).
	open func(context.Context, signer.Spec) (*signer.Key, error)
	// lookup reads the environment (cache.shared key secrets).
	lookup func(string) (string, bool)
}

// newKeyRotation builds the rotation of cfg's rotating clients, or returns
// nil when none rotates.
func newKeyRotation(ctx context.Context, e rotationEnv) (_ *keyRotation, err error) {
	cfg := e.cfg
	ss := cfg.SelfService
	kr := &keyRotation{rotators: map[string]*rotation.Rotator{}, makers: map[string]keymaker.Maker{}, states: map[string]rotation.State{}, errs: map[string]string{},
		log: e.log, close: func() {}}
	for _, c := range cfg.Clients {
		if c.Rotation != nil {
			kr.names = append(kr.names, c.Name)
		}
	}
	if len(kr.names) == 0 {
		return nil, nil
	}
	var closers []func()
	kr.close = func() {
		for _, c := range closers {
			c()
		}
	}
	defer func() {
		if err != nil {
			kr.close()
		}
	}()
	kr.checkEvery, kr.followEvery = time.Duration(ss.CheckEvery), ss.followEvery()
	if kr.checkEvery == 0 {
		kr.checkEvery = rotation.DefaultCheckEvery
	}
	if sh := cfg.Cache.Shared; sh != nil {
		rc, err := redisConfig(sh, e.baseDir)
		if err != nil {
			return nil, err
		}
		key, err := rotationStateKey(sh, e.baseDir, e.lookup)
		if err != nil {
			return nil, err
		}
		client, err := sharedcache.Dial(rc)
		if err != nil {
			return nil, fmt.Errorf("cache.shared.redis: %w", err)
		}
		closers = append(closers, func() { _ = client.Close() })
		if kr.store, err = redisstore.New(redisstore.Config{Client: client, Prefix: sh.Prefix, IntegrityKey: key}); err != nil {
			return nil, fmt.Errorf("rotation state in Redis: %w", err)
		}
	} else if kr.store, err = filestore.New(resolvePath(e.baseDir, ss.StateDir)); err != nil {
		return nil, fmt.Errorf("self_service.state_dir: %w", err)
	}
	admin, err := openAdminKey(ctx, ss, e)
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { _ = admin.Close() })
	kr.certExpiry = admin.Chain[0].NotAfter
	adminMP, err := maskinporten.New(maskinporten.Config{ClientID: ss.ClientID, Key: admin, Environment: e.env, HTTPClient: e.http})
	if err != nil {
		return nil, fmt.Errorf("self_service: %w", err)
	}
	tokens, err := selfservice.NewTokenSource(adminMP, ss.Scopes...)
	if err != nil {
		return nil, fmt.Errorf("self_service.scopes: %w", err)
	}
	registry, err := selfservice.New(selfservice.Config{Environment: cfg.Maskinporten.Environment, BaseURL: ss.URL, Tokens: tokens,
		HTTPClient: e.http})
	if err != nil {
		return nil, fmt.Errorf("self_service.url: %w", err)
	}
	signTimeout := time.Duration(cfg.Maskinporten.SignTimeout)
	for i, c := range cfg.Clients {
		r := c.Rotation
		if r == nil {
			continue
		}
		where := fmt.Sprintf("clients[%d].rotation", i)
		maker, err := keymaker.NewMaker(keymaker.MakerConfig{Location: r.NewKeys, Algorithm: signer.RS256, Bits: r.Bits,
			BaseDir: e.baseDir, CallTimeout: signTimeout})
		if err != nil {
			return nil, fmt.Errorf("%s.new_keys: %w", where, err)
		}
		kr.makers[c.Name] = maker
		var mk rotation.Maker = maker
		if !r.destroyOld() {
			mk = keepOld{maker}
		}
		var kids []string
		for _, k := range c.KeyList() {
			kids = append(kids, k.KID)
		}
		prefix := r.KIDPrefix
		rot, err := rotation.New(rotation.Config{
			Client: c.Name, ClientID: c.ClientID, ConfigKeys: kids, ConfigActive: c.ActiveKey().KID,
			Every: r.every(), Grace: r.grace(), RenewBefore: r.renewBefore(), ProveTimeout: time.Duration(r.ProveTimeout),
			FollowEvery: kr.followEvery,
			Maker:       mk, Registry: registry, Store: kr.store, Open: kr.ownedOpen(c.Name, e.open),
			Prove:  prover(c, e),
			Apply:  kr.applier(c.Name),
			Logger: e.log.With(slog.String("component", "rotation")),
			NewKID: func() string { return prefix + uuid.NewString() },
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if c.ActiveKey().KID == "" {
			return nil, fmt.Errorf("clients[%d].key.kid: required with rotation (the kid registered at Digdir)", i)
		}
		kr.rotators[c.Name] = rot
	}
	return kr, nil
}

// keepOld is a Maker that leaves old keys in their backend
// (rotation.destroy_old: false).
type keepOld struct{ rotation.Maker }

func (keepOld) Destroy(context.Context, signer.Spec) error { return nil }

// prover fetches a plain token with the client's scopes, signed with the
// key under test, in one attempt.
func prover(c ClientConfig, e rotationEnv) func(context.Context, *signer.Key) error {
	return func(ctx context.Context, k *signer.Key) error {
		mp, err := maskinporten.New(maskinporten.Config{ClientID: c.ClientID, Key: k, Environment: e.env, HTTPClient: e.http,
			ResourceAsString: c.ResourceAsString, Retry: maskinporten.RetryPolicy{MaxAttempts: 1}})
		if err != nil {
			return err
		}
		_, err = mp.Token(ctx, maskinporten.Request{Scopes: c.Scopes})
		return err
	}
}

// openAdminKey opens the self-service client's key with its certificate
// chain, which its grants carry as x5c.
func openAdminKey(ctx context.Context, ss *SelfServiceConfig, e rotationEnv) (*signer.Key, error) {
	spec := ss.Key.Spec(e.baseDir, time.Duration(e.cfg.Maskinporten.SignTimeout))
	if spec.KeyID == "" {
		spec.KeyID = "business-certificate" // grants carry x5c, never this
	}
	k, err := e.open(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("self_service.key: %w", err)
	}
	if ss.Certificate != "" {
		chain, err := readChain(resolvePath(e.baseDir, ss.Certificate))
		if err == nil && !reflect.DeepEqual(chain[0].PublicKey, k.Signer.Public()) {
			err = errors.New("its first certificate is not for self_service.key")
		}
		if err != nil {
			_ = k.Close()
			return nil, fmt.Errorf("self_service.certificate: %w", err)
		}
		k.Chain = chain
	}
	if len(k.Chain) == 0 {
		_ = k.Close()
		return nil, errors.New("self_service.key: no certificate: use the business certificate's PKCS#12 file, or set self_service.certificate")
	}
	return k, nil
}

// readChain reads PEM certificates, leaf first.
func readChain(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return chain, nil
}

// applier records a client's new state and hands it to kr.apply (the
// state as recorded: keys that went back are not taken).
func (kr *keyRotation) applier(client string) func(context.Context, rotation.State) error {
	return func(ctx context.Context, st rotation.State) error {
		st = kr.setState(client, st)
		kr.mu.Lock()
		apply := kr.apply
		kr.mu.Unlock()
		if apply == nil {
			return nil
		}
		return apply(ctx, client, st)
	}
}

// setState records client's state as read or saved, and returns it as
// recorded. A state that went back from the one recorded
// (rotation.Regressed: the store lost it, or an older one was put back)
// does not replace its keys; only its outcome is taken, so that the
// failing alert fires.
func (kr *keyRotation) setState(client string, st rotation.State) rotation.State {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if last, ok := kr.states[client]; ok && rotation.Regressed(last, st) {
		last.LastOutcome, last.LastError, last.LastAttempt = st.LastOutcome, st.LastError, st.LastAttempt
		st = last
	}
	kr.states[client] = st
	return st
}

// snapshot returns the states known now (as last read or saved).
func (kr *keyRotation) snapshot() map[string]rotation.State {
	out := map[string]rotation.State{}
	if kr == nil {
		return out
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	for k, v := range kr.states {
		out[k] = v
	}
	return out
}

// appliedSnapshot returns the states the key ring was built from.
func (kr *keyRotation) appliedSnapshot() map[string]rotation.State {
	out := map[string]rotation.State{}
	if kr == nil {
		return out
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	for k, v := range kr.applied {
		out[k] = v
	}
	return out
}

// setApplied records that the key ring now holds client's keys as st says.
func (kr *keyRotation) setApplied(client string, st rotation.State) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if kr.applied == nil {
		kr.applied = map[string]rotation.State{}
	}
	kr.applied[client] = st
}

// load reads every rotating client's state, at start: a broker that
// cannot read it does not know which key is active, and does not start;
// nor does one whose state was lost (see checkLost).
func (kr *keyRotation) load(ctx context.Context) error {
	for _, name := range kr.names {
		st, err := kr.store.Load(ctx, name)
		if err != nil {
			return fmt.Errorf("rotation state of client %s: %w", name, err)
		}
		if err := kr.checkLost(ctx, name, st); err != nil {
			return err
		}
		kr.setState(name, st)
		kr.setApplied(name, st)
	}
	return nil
}

// run starts, for each rotating client, its rotator's loop and a follower
// of its state, until ctx ends. The follower acks, at start and on every
// read, the kid that signsWith says the key ring signs with (the old one
// while a new state cannot be applied), so that the rotator keeps the old
// key registered while this replica still uses it. onPass, when not nil,
// counts passes.
func (kr *keyRotation) run(ctx context.Context, apply func(context.Context, string, rotation.State) error,
	signsWith func(client string) string, onPass func(client, outcome string)) {
	kr.mu.Lock()
	kr.apply, kr.signsWith = apply, signsWith
	if kr.replica == "" {
		kr.replica = newReplicaID()
	}
	kr.mu.Unlock()
	if _, ok := kr.store.(rotation.Acker); ok {
		kr.log.InfoContext(ctx, "key rotation: this replica acknowledges the key it signs with", slog.String("replica", kr.replica))
	}
	for _, name := range kr.names {
		r := kr.rotators[name]
		go r.Run(ctx, kr.checkEvery, func(rep rotation.Report, err error) {
			if onPass != nil {
				onPass(name, rep.Outcome)
			}
			if err != nil {
				kr.log.ErrorContext(ctx, "key rotation failed; it is tried again later", slog.String("client", name),
					slog.String("step", string(rep.Step)), slog.String("error", err.Error()))
			}
			if st, err := kr.store.Load(ctx, name); err == nil {
				kr.setState(name, st)
			}
		})
		kr.mu.Lock()
		last := kr.states[name]
		kr.mu.Unlock()
		go func() {
			kr.noteFollowError(ctx, name, kr.ack(ctx, name))
			rotation.Follow(ctx, kr.store, name, kr.followEvery, last,
				func(ctx context.Context, st rotation.State) error {
					kr.log.InfoContext(ctx, "rotation state changed; applying it", slog.String("client", name),
						slog.String("active", st.Active))
					return kr.applier(name)(ctx, st)
				},
				func(st rotation.State, err error) {
					if err == nil {
						kr.setState(name, st)
					}
					kr.noteFollowError(ctx, name, errors.Join(err, kr.ack(ctx, name)))
				})
		}()
	}
}

// ack records in the store, when it keeps acks, the kid the key ring signs
// client's grants with now, for rotation.AckTTL(followEvery).
func (kr *keyRotation) ack(ctx context.Context, client string) error {
	acker, ok := kr.store.(rotation.Acker)
	kr.mu.Lock()
	signsWith, replica := kr.signsWith, kr.replica
	kr.mu.Unlock()
	if !ok || signsWith == nil {
		return nil
	}
	kid := signsWith(client)
	if kid == "" {
		return nil
	}
	if err := acker.Ack(ctx, client, replica, kid, rotation.AckTTL(kr.followEvery)); err != nil {
		return fmt.Errorf("acknowledge key %s: %w", kid, err)
	}
	return nil
}

// newReplicaID names this process in the acks: the host name (a pod's
// name) and a random suffix, so that two processes on one host, or a
// restarted pod, are told apart. It is no secret.
func newReplicaID() string {
	host, err := os.Hostname()
	if err != nil || rotation.CheckReplicaID(host) != nil {
		host = "tokenbroker"
	}
	if len(host) > 64 {
		host = host[:64]
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// noteFollowError logs a follower's error once, and its end.
func (kr *keyRotation) noteFollowError(ctx context.Context, client string, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	kr.mu.Lock()
	prev := kr.errs[client]
	kr.errs[client] = msg
	kr.mu.Unlock()
	switch {
	case msg != "" && msg != prev:
		kr.log.ErrorContext(ctx, "cannot read, apply or acknowledge the rotation state; keeping the keys in use", slog.String("client", client),
			slog.String("error", msg))
	case msg == "" && prev != "":
		kr.log.InfoContext(ctx, "rotation state read and applied again", slog.String("client", client))
	}
}

// metrics describes each rotating client for the metrics.
func (kr *keyRotation) metrics() []metrics.Rotation {
	var out []metrics.Rotation
	for _, name := range kr.names {
		kr.mu.Lock()
		st, followErr := kr.states[name], kr.errs[name]
		kr.mu.Unlock()
		m := metrics.Rotation{Client: name, Failing: st.LastOutcome == rotation.OutcomeFailed, LastRotation: st.LastRotation,
			FollowFailing: followErr != ""}
		var reg []rotation.Registered
		for _, k := range st.Registered {
			m.Registered = append(m.Registered, metrics.RegisteredKey{KeyID: k.KID, Expires: k.Expires})
			reg = append(reg, rotation.Registered{KID: k.KID, Expires: k.Expires, Created: k.Created})
		}
		if st.Rotation != nil {
			m.Step = string(st.Rotation.Step)
		}
		if len(reg) > 0 || !st.LastRotation.IsZero() {
			m.Due = kr.rotators[name].Due(st, reg)
		}
		out = append(out, m)
	}
	return out
}

// health describes each rotating client for /healthz.
func (kr *keyRotation) health() []server.RotationStatus {
	var out []server.RotationStatus
	for _, m := range kr.metrics() {
		kr.mu.Lock()
		st, stateErr, replica := kr.states[m.Client], kr.errs[m.Client], kr.replica
		kr.mu.Unlock()
		rs := server.RotationStatus{Client: m.Client, Step: m.Step, LastOutcome: st.LastOutcome, Failing: m.Failing,
			Error: st.LastError, StateError: stateErr, Replica: replica}
		for _, b := range st.Blocking {
			rs.Blocking = append(rs.Blocking, fmt.Sprintf("%s signs with %s", b.Replica, b.KID))
		}
		if st.Rotation != nil {
			rs.Next = st.Rotation.Next
		}
		if !m.LastRotation.IsZero() {
			t := m.LastRotation
			rs.LastRotation = &t
		}
		if !m.Due.IsZero() {
			t := m.Due
			rs.Due = &t
		}
		out = append(out, rs)
	}
	return out
}
