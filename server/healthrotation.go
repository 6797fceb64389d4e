package server

import "time"

// RotationStatus describes one client's key rotation for /healthz.
type RotationStatus struct {
	Client string `json:"client"`
	// Step is the step of a rotation under way; empty when none is.
	Step string `json:"step,omitempty"`
	// Next is the kid being rotated in.
	Next string `json:"next,omitempty"`
	// LastRotation is when a rotation last made a key active.
	LastRotation *time.Time `json:"last_rotation,omitempty"`
	// Due is when the next rotation is due.
	Due *time.Time `json:"due,omitempty"`
	// LastOutcome of the last pass; Failing while it failed, with Error.
	LastOutcome string `json:"last_outcome,omitempty"`
	Failing     bool   `json:"failing"`
	Error       string `json:"error,omitempty"`
	// StateError is set while this replica cannot read, apply or
	// acknowledge the rotation state (it keeps the keys in use).
	StateError string `json:"state_error,omitempty"`
	// Replica is this replica's id in the acks; Blocking, the live
	// replicas that still signed with another key than the active one at
	// the last pass, which keeps the old key registered ("<replica> signs
	// with <kid>").
	Replica  string   `json:"replica,omitempty"`
	Blocking []string `json:"blocking,omitempty"`
}

// WithRotation reports each rotating client's key rotation that rot returns
// under "rotation"; status turns "degraded" while a rotation fails or this
// replica cannot follow the state.
func WithRotation(rot func() []RotationStatus) HealthOption {
	return func(o *healthOptions) { o.rotation = rot }
}
