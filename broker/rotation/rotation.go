// Package rotation rotates the signing keys of Maskinporten clients through
// Digdir's self-service API, one safe step at a time, so that no key
// expires on anyone's watch.
//
// A rotation of one client goes through these steps, and its State records
// each step before the next begins, so that a rotation stopped at any point
// (a crash, a lost lease, a restart) is finished by the next run instead of
// begun again:
//
//  1. make: the next key is made in the backend (Maker) under a fresh UUID
//     kid; the step is recorded before the key is made, and a Maker finds a
//     key it already made for that kid instead of making a second one;
//  2. register: the client's registered JWKS is read and written back with
//     the next key added; every key already registered stays (the API
//     replaces the whole set), at most MaxRegisteredKeys in all;
//  3. prove: a real token is fetched with the next key, retried while
//     Maskinporten has not yet picked the key up;
//  4. activate: the next key becomes the active one; every replica picks it
//     up from the State;
//  5. retire: after Grace, the old key is removed from the registration,
//     when it is ours to remove (the key that was active before);
//  6. destroy: the old key is closed and, when the rotator made it,
//     destroyed or disabled in its backend.
//
// Besides rotating, the rotator renews a registration whose keys expire
// within RenewBefore by writing the same set back.
package rotation

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// MaxRegisteredKeys is how many keys Digdir's self-service API keeps on one
// client.
const MaxRegisteredKeys = 5

// Registered is one key registered on a client, as the self-service API
// lists it.
type Registered struct {
	// KID is the key's kid.
	KID string
	// JWK is the public key as it is to be posted back: the JWK's own
	// members (kty, n, e, kid, alg, use, ...) without the fields the API
	// adds to its answers (exp, created, last_updated).
	JWK json.RawMessage
	// Expires is when Maskinporten stops accepting the key (the answer's
	// exp); zero when the answer had none.
	Expires time.Time
	// Created is when the key was first registered; zero when unknown.
	Created time.Time
}

// Registry is a client's key registration at Digdir: the self-service
// API's /jwks of a client.
type Registry interface {
	// Keys lists the keys registered on clientID.
	Keys(ctx context.Context, clientID string) ([]Registered, error)
	// SetKeys replaces the registered keys of clientID with keys (the
	// whole set, at least one) and returns the set as registered.
	SetKeys(ctx context.Context, clientID string, keys []json.RawMessage) ([]Registered, error)
}

// Maker makes new keys in one backend and destroys the ones it made.
type Maker interface {
	// Make makes the key named kid and returns the Spec that opens it.
	// Called again with the same kid (after a crash), it returns the key
	// it made before instead of making another.
	Make(ctx context.Context, kid string) (signer.Spec, error)
	// Destroy destroys or disables the key spec names, as far as the
	// backend allows; a key that is already gone is not an error.
	Destroy(ctx context.Context, spec signer.Spec) error
}

// ErrLeaseHeld is returned by Store.Lease while another process holds the
// client's lease.
var ErrLeaseHeld = errors.New("rotation: another replica holds the lease")

// Lease is the right to change one client's State. Only one process holds a
// client's lease at a time.
type Lease interface {
	// Save stores st as the client's State, if the lease is still held;
	// otherwise it fails with ErrLeaseLost and stores nothing.
	Save(ctx context.Context, st State) error
	// Release gives the lease up.
	Release(ctx context.Context) error
}

// ErrLeaseLost is returned by Lease.Save when the lease expired and may
// have passed to another process.
var ErrLeaseLost = errors.New("rotation: the lease was lost")

// Store keeps every client's State where it survives restarts and where
// all replicas see it.
type Store interface {
	// Load returns the client's State; the zero State when none was saved.
	Load(ctx context.Context, client string) (State, error)
	// Lease takes the client's lease for ttl (renewed by each Save), or
	// fails with ErrLeaseHeld.
	Lease(ctx context.Context, client string, ttl time.Duration) (Lease, error)
}

// Step is where a rotation is.
type Step string

// The steps of a rotation, in order.
const (
	StepMake     Step = "make"
	StepRegister Step = "register"
	StepProve    Step = "prove"
	StepActivate Step = "activate"
	StepRetire   Step = "retire"
	StepDestroy  Step = "destroy"
)

// ManagedKey is a key the rotator made.
type ManagedKey struct {
	KID       string           `json:"kid"`
	URI       string           `json:"uri"`
	Algorithm signer.Algorithm `json:"algorithm"`
	Made      time.Time        `json:"made"`
}

// State is what the rotation of one client has done, saved after every
// step.
type State struct {
	// Active is the kid of the active key; "" means the config's.
	Active string `json:"active,omitempty"`
	// Keys are the keys the rotator made and that are not destroyed.
	Keys []ManagedKey `json:"keys,omitempty"`
	// Retired are kids that are no longer registered: the broker opens
	// none of them, even when the config still lists one.
	Retired []string `json:"retired,omitempty"`
	// Rotation is the rotation under way; nil when none is.
	Rotation *InFlight `json:"rotation,omitempty"`
	// LastRotation is when the last rotation made its key active.
	LastRotation time.Time `json:"last_rotation,omitzero"`
	// ActiveSince, before the first rotation, is the earliest the active
	// key was seen registered (its creation, or a year before its expiry):
	// Digdir gives a creation time per set, not per key, and every write
	// of the set renews each key's expiry, so a later read would put the
	// first rotation off each time.
	ActiveSince time.Time `json:"active_since,omitzero"`
	// Seq counts the saves of the state: each save adds one. Of two states
	// of a client, the one with the lower Seq is older, whatever the
	// clocks of the machines that saved them say.
	Seq int64 `json:"seq,omitempty"`
	// LastFinished is when the last rotation completed (its old key
	// retired and destroyed); zero in a state saved before it was kept.
	LastFinished time.Time `json:"last_finished,omitzero"`
	// LastOutcome and LastError describe the last attempt.
	LastOutcome string    `json:"last_outcome,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// Registered is the registration as last read, for status and metrics.
	Registered []RegisteredInfo `json:"registered,omitempty"`
	// Blocking are the live replicas that, at the last pass of the retire
	// step, still signed with another key than the active one: the old key
	// stays registered while there are any (see Acker).
	Blocking []Blocker `json:"blocking,omitempty"`
}

// RegisteredInfo is what State keeps of a registered key.
type RegisteredInfo struct {
	KID     string    `json:"kid"`
	Expires time.Time `json:"expires,omitzero"`
	Created time.Time `json:"created,omitzero"`
}

// InFlight is a rotation under way.
type InFlight struct {
	// Step is the step to do next.
	Step Step `json:"step"`
	// Next is the kid of the key being rotated in, Old the kid that was
	// active when the rotation began.
	Next string `json:"next"`
	Old  string `json:"old"`
	// Started is when the rotation began; Activated when Next became
	// active (the grace period runs from it).
	Started   time.Time `json:"started"`
	Activated time.Time `json:"activated,omitzero"`
}

// PublicJWK is the JWK of a public key as the self-service API takes it:
// kty, n, e, kid, alg, use "sig", and nothing else.
func PublicJWK(kid string, alg signer.Algorithm, pub crypto.PublicKey) (json.RawMessage, error) {
	return publicJWK(kid, alg, pub)
}
