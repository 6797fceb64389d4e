package daemon

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
)

// SelfServiceConfig is the organisation's self-service (admin) client at
// Digdir, which registers the keys of the clients that rotate them.
type SelfServiceConfig struct {
	// ClientID is the self-service client's client_id.
	ClientID string `yaml:"client_id"`
	// Key is the organisation's business certificate and its key: a
	// PKCS#12 file, or a key in any backend with Certificate. Grants carry
	// the certificate chain (x5c); no kid is registered.
	Key KeyConfig `yaml:"key"`
	// Certificate is a PEM file with the business certificate chain, leaf
	// first, for a key whose backend holds no certificate (pkcs11:,
	// awskms:, ...). Relative to the config file.
	Certificate string `yaml:"certificate"`
	// Scopes the self-service client asks for; default
	// idporten:dcr.read and idporten:dcr.write.
	Scopes []string `yaml:"scopes"`
	// URL overrides the self-service API's base URL (the environment's by
	// default); a URL of the other environment is refused.
	URL string `yaml:"url"`
	// StateDir is where the rotation state of each client is kept when
	// replicas share no Redis (cache.shared): next to the keys, on a
	// volume that survives restarts. With cache.shared the state and the
	// lease are kept in Redis and StateDir must be empty.
	StateDir string `yaml:"state_dir"`
	// CheckEvery is how often each client's rotation is looked at; default
	// 10m. FollowEvery is how often a replica reads the state to pick up a
	// key another one made active; default 15s.
	CheckEvery  Duration `yaml:"check_every"`
	FollowEvery Duration `yaml:"follow_every"`
}

// RotationConfig turns on automatic key rotation for one client.
type RotationConfig struct {
	// Every is how often the key is rotated; default 90d (a key is
	// accepted for a year after it is registered).
	Every Duration `yaml:"every"`
	// Grace is how long the old key stays registered after the new one
	// became active; default 1h, at least 4 × self_service.follow_every.
	Grace Duration `yaml:"grace"`
	// RenewBefore: a registered key in use whose expiry is this close is
	// renewed by writing the registration back; default 30d.
	RenewBefore Duration `yaml:"renew_before"`
	// ProveTimeout is how long Maskinporten may take to accept a new key;
	// default 10m.
	ProveTimeout Duration `yaml:"prove_timeout"`
	// NewKeys is where new keys are made: file:DIR/, a pkcs11: token,
	// awskms:, ... (see README).
	NewKeys string `yaml:"new_keys"`
	// Bits is the size of new RSA keys: 2048 (default), 3072 or 4096.
	// New keys are RS256: Digdir's self-service API registers RS256 keys
	// only (felleslosninger/docs oidc_api_admin.md, "Kun RS256").
	Bits int `yaml:"bits"`
	// KIDPrefix starts every new kid, before a random UUID (kids must be
	// unique across all of Maskinporten).
	KIDPrefix string `yaml:"kid_prefix"`
	// DestroyOld destroys (file, pkcs11) or disables and schedules for
	// deletion (KMS) an old key the broker made, once it is no longer
	// registered; default true. Keys from the config are never destroyed.
	DestroyOld *bool `yaml:"destroy_old"`
}

// kidPrefixRE: a prefix plus a UUID (36) must stay a kid every backend can
// name a key after (signer.CheckMadeKID: letters, digits and hyphens).
var kidPrefixRE = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9-]{0,11})?$`)

// defaultFollowEvery is self_service.follow_every's default.
const defaultFollowEvery = rotation.DefaultFollowEvery

func (s *SelfServiceConfig) followEvery() time.Duration {
	if s == nil || s.FollowEvery == 0 {
		return defaultFollowEvery
	}
	return time.Duration(s.FollowEvery)
}

// checkRotation checks self_service and every client's rotation section.
func (c *Config) checkRotation() error {
	rotating := false
	for i, cl := range c.Clients {
		if cl.Rotation == nil {
			continue
		}
		rotating = true
		if err := cl.Rotation.check(fmt.Sprintf("clients[%d].rotation", i), c.SelfService.followEvery()); err != nil {
			return err
		}
	}
	s := c.SelfService
	if s == nil {
		if rotating {
			return errors.New("self_service: required when a client has a rotation section (the self-service client registers the new keys)")
		}
		return nil
	}
	switch {
	case s.ClientID == "":
		return errors.New("self_service.client_id: required")
	case s.Key.Signer == "":
		return errors.New("self_service.key.signer: required (the business certificate's key, e.g. file:business.p12)")
	case s.FollowEvery != 0 && time.Duration(s.FollowEvery) < time.Second:
		return errors.New("self_service.follow_every: at least 1s")
	case s.CheckEvery != 0 && time.Duration(s.CheckEvery) < 10*time.Second:
		return errors.New("self_service.check_every: at least 10s")
	case c.Cache.Shared == nil && s.StateDir == "" && rotating:
		return errors.New("self_service.state_dir: required without cache.shared (where each client's rotation state is kept)")
	case c.Cache.Shared != nil && s.StateDir != "":
		return errors.New("self_service.state_dir: not used with cache.shared (the state is kept in Redis, which all replicas share); remove it")
	}
	if err := keys.Check(s.Key.Spec("", 0)); err != nil {
		return fmt.Errorf("self_service.key.signer: %w", err)
	}
	return nil
}

func (r *RotationConfig) check(where string, followEvery time.Duration) error {
	const year = 365 * 24 * time.Hour
	every, renew := r.every(), r.renewBefore()
	switch {
	case r.NewKeys == "":
		return fmt.Errorf("%s.new_keys: required (where new keys are made, e.g. file:keys/)", where)
	case every < 24*time.Hour || every >= year-renew:
		return fmt.Errorf("%s.every: %s, want at least 1d and less than a year minus renew_before (%s)", where, every, renew)
	case renew < 24*time.Hour || renew > 180*24*time.Hour:
		return fmt.Errorf("%s.renew_before: %s, want 1d to 180d", where, renew)
	case r.grace() < 4*followEvery:
		return fmt.Errorf("%s.grace: %s, want at least 4 × self_service.follow_every (%s), so every replica switches before the old key is removed",
			where, r.grace(), followEvery)
	case r.ProveTimeout != 0 && time.Duration(r.ProveTimeout) < time.Minute:
		return fmt.Errorf("%s.prove_timeout: at least 1m (Digdir: a new key reaches Maskinporten within minutes)", where)
	case !kidPrefixRE.MatchString(r.KIDPrefix):
		return fmt.Errorf("%s.kid_prefix: %q, want at most 12 letters, digits and hyphens, starting with a letter or digit (kids name keys in every backend)", where, r.KIDPrefix)
	}
	switch r.Bits {
	case 0, 2048, 3072, 4096:
	default:
		return fmt.Errorf("%s.bits: %d, want 2048, 3072 or 4096", where, r.Bits)
	}
	return nil
}

func (r *RotationConfig) every() time.Duration {
	if r.Every == 0 {
		return rotation.DefaultEvery
	}
	return time.Duration(r.Every)
}

func (r *RotationConfig) renewBefore() time.Duration {
	if r.RenewBefore == 0 {
		return rotation.DefaultRenewBefore
	}
	return time.Duration(r.RenewBefore)
}

func (r *RotationConfig) grace() time.Duration {
	if r.Grace == 0 {
		return rotation.DefaultGrace
	}
	return time.Duration(r.Grace)
}

func (r *RotationConfig) destroyOld() bool { return r.DestroyOld == nil || *r.DestroyOld }
