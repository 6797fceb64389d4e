package gcpkmssigner

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// KeyPrefix starts the crypto key id of every key a Maker makes:
// tokenbroker-<kid>.
const KeyPrefix = "tokenbroker-"

// KIDLabel is the label that names the kid on every crypto key a Maker
// makes (lower-cased, as labels must be).
const KIDLabel = "tokenbroker-kid"

// MakerAPI is the part of the Cloud KMS client a Maker uses.
type MakerAPI interface {
	CreateCryptoKey(context.Context, *kmspb.CreateCryptoKeyRequest, ...gax.CallOption) (*kmspb.CryptoKey, error)
	GetCryptoKey(context.Context, *kmspb.GetCryptoKeyRequest, ...gax.CallOption) (*kmspb.CryptoKey, error)
	GetCryptoKeyVersion(context.Context, *kmspb.GetCryptoKeyVersionRequest, ...gax.CallOption) (*kmspb.CryptoKeyVersion, error)
	DestroyCryptoKeyVersion(context.Context, *kmspb.DestroyCryptoKeyVersionRequest, ...gax.CallOption) (*kmspb.CryptoKeyVersion, error)
}

var _ MakerAPI = (*kms.KeyManagementClient)(nil)

// Maker makes RSA signing keys in Cloud KMS, for key rotation. Its location
// is a key ring:
//
//	gcpkms:projects/P/locations/L/keyRings/R[?protection=hsm|software]
//
// The key of kid is its own crypto key, tokenbroker-<kid> (purpose
// ASYMMETRIC_SIGN, labelled tokenbroker-kid=<kid>), whose first version
// signs: its Spec names .../cryptoKeys/tokenbroker-<kid>/cryptoKeyVersions/1.
// A crypto key per kid, rather than a version per kid on one crypto key,
// lets Make find the key of a kid by name, since versions carry no labels.
// protection is the keys' protection level, HSM unless software is asked
// for. Cloud KMS signs RSA PKCS#1 v1.5 with SHA-256 at 2048, 3072 and 4096
// bits and with SHA-512 at 4096 bits only: RS384 cannot be made, RS512
// needs 4096 bits.
type Maker struct {
	ring       string
	protection kmspb.ProtectionLevel
	algorithm  kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	opts       signer.MakeOptions
	// connect returns a client and what closes it.
	connect func(context.Context) (MakerAPI, func() error, error)
	// Poll is how often Make looks whether a new version is generated.
	Poll time.Duration
}

// NewMaker parses the location; each Make and Destroy connects with
// Application Default Credentials.
func NewMaker(location string, opts signer.MakeOptions) (*Maker, error) {
	m, err := NewMakerWithAPI(nil, location, opts)
	if err != nil {
		return nil, err
	}
	m.connect = func(ctx context.Context) (MakerAPI, func() error, error) {
		c, err := kms.NewKeyManagementClient(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("gcpkms: %w", err)
		}
		return c, c.Close, nil
	}
	return m, nil
}

// NewMakerWithAPI is NewMaker with the given client.
func NewMakerWithAPI(api MakerAPI, location string, opts signer.MakeOptions) (*Maker, error) {
	opts, err := opts.Normalize()
	if err != nil {
		return nil, err
	}
	rest, ok := strings.CutPrefix(location, "gcpkms:")
	if !ok {
		return nil, errors.New("location: not a gcpkms: location")
	}
	ring, query, _ := strings.Cut(rest, "?")
	parts := strings.Split(ring, "/")
	if len(parts) != 6 || parts[0] != "projects" || parts[2] != "locations" || parts[4] != "keyRings" ||
		parts[1] == "" || parts[3] == "" || parts[5] == "" {
		return nil, fmt.Errorf("location: %q is not a key ring, projects/P/locations/L/keyRings/R", ring)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, errors.New("location: malformed query")
	}
	m := &Maker{ring: ring, protection: kmspb.ProtectionLevel_HSM, opts: opts, Poll: time.Second,
		connect: func(context.Context) (MakerAPI, func() error, error) { return api, func() error { return nil }, nil }}
	for k := range q {
		if k != "protection" {
			return nil, fmt.Errorf("location: unknown query attribute %q", k)
		}
	}
	switch p := q.Get("protection"); p {
	case "", "hsm":
	case "software":
		m.protection = kmspb.ProtectionLevel_SOFTWARE
	default:
		return nil, fmt.Errorf("location: protection %q is not hsm or software", p)
	}
	name := fmt.Sprintf("RSA_SIGN_PKCS1_%d_%s", opts.Bits, strings.Replace(opts.Algorithm.Hash().String(), "-", "", 1))
	a, ok := kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm_value[name]
	if !ok {
		return nil, fmt.Errorf("algorithm: Cloud KMS cannot make %s keys of %d bits (it has %s with SHA-256 at 2048, 3072 and 4096 bits, with SHA-512 at 4096)", opts.Algorithm, opts.Bits, "RSA_SIGN_PKCS1")
	}
	m.algorithm = kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm(a)
	return m, nil
}

func (m *Maker) key(kid string) string     { return m.ring + "/cryptoKeys/" + KeyPrefix + kid }
func (m *Maker) version(kid string) string { return m.key(kid) + "/cryptoKeyVersions/1" }

func (m *Maker) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, signer.Spec{CallTimeout: m.opts.CallTimeout}.Timeout())
}

// Make creates the crypto key tokenbroker-<kid> (or finds it, when it
// exists) and waits, until ctx ends, for its first version to be enabled.
// A crypto key found must be for ASYMMETRIC_SIGN with the configured
// algorithm.
func (m *Maker) Make(ctx context.Context, kid string) (signer.Spec, error) {
	if err := signer.CheckMadeKID(kid); err != nil {
		return signer.Spec{}, err
	}
	api, closeAPI, err := m.connect(ctx)
	if err != nil {
		return signer.Spec{}, err
	}
	defer closeAPI()
	cctx, cancel := m.call(ctx)
	defer cancel()
	_, err = api.CreateCryptoKey(cctx, &kmspb.CreateCryptoKeyRequest{
		Parent:      m.ring,
		CryptoKeyId: KeyPrefix + kid,
		CryptoKey: &kmspb.CryptoKey{
			Purpose:         kmspb.CryptoKey_ASYMMETRIC_SIGN,
			VersionTemplate: &kmspb.CryptoKeyVersionTemplate{Algorithm: m.algorithm, ProtectionLevel: m.protection},
			Labels:          map[string]string{KIDLabel: strings.ToLower(kid)},
		},
	})
	if status.Code(err) == codes.AlreadyExists {
		cctx, cancel := m.call(ctx)
		defer cancel()
		var ck *kmspb.CryptoKey
		ck, err = api.GetCryptoKey(cctx, &kmspb.GetCryptoKeyRequest{Name: m.key(kid)})
		if err == nil && ck.GetPurpose() != kmspb.CryptoKey_ASYMMETRIC_SIGN {
			return signer.Spec{}, fmt.Errorf("gcpkms: crypto key %s exists for %s, not ASYMMETRIC_SIGN", m.key(kid), ck.GetPurpose())
		}
	}
	if err != nil {
		return signer.Spec{}, fmt.Errorf("gcpkms: create crypto key %s: %w", m.key(kid), err)
	}
	for {
		cctx, cancel := m.call(ctx)
		v, err := api.GetCryptoKeyVersion(cctx, &kmspb.GetCryptoKeyVersionRequest{Name: m.version(kid)})
		cancel()
		if err != nil {
			return signer.Spec{}, fmt.Errorf("gcpkms: key version %s: %w", m.version(kid), err)
		}
		if v.GetAlgorithm() != m.algorithm {
			return signer.Spec{}, fmt.Errorf("gcpkms: key version %s is %s, not %s", m.version(kid), v.GetAlgorithm(), m.algorithm)
		}
		switch v.GetState() {
		case kmspb.CryptoKeyVersion_ENABLED:
			return m.opts.Spec("gcpkms:"+m.version(kid), kid), nil
		case kmspb.CryptoKeyVersion_PENDING_GENERATION:
		default:
			return signer.Spec{}, fmt.Errorf("gcpkms: key version %s is %s, not ENABLED", m.version(kid), v.GetState())
		}
		select {
		case <-ctx.Done():
			return signer.Spec{}, fmt.Errorf("gcpkms: key version %s still PENDING_GENERATION: %w", m.version(kid), ctx.Err())
		case <-time.After(m.Poll):
		}
	}
}

// Owns reports, with nil, whether spec names a key this maker makes:
// version 1 of tokenbroker-<kid> (kid being the spec's KeyID) in its key
// ring. Otherwise the error says why, without repeating a URI of another
// scheme.
func (m *Maker) Owns(spec signer.Spec) error {
	kid := spec.KeyID
	if err := signer.CheckMadeKID(kid); err != nil {
		return err
	}
	if !strings.HasPrefix(spec.URI, "gcpkms:") {
		return errors.New("gcpkms: not a gcpkms: key (the keys are made in the key ring of rotation.new_keys)")
	}
	name, err := ParseURI(spec.URI)
	if err != nil {
		return err
	}
	if name != m.version(kid) {
		return fmt.Errorf("gcpkms: %s is not the key version this maker makes for kid %q", name, kid)
	}
	return nil
}

// Destroy schedules the destruction of the key version the spec names,
// which must be version 1 of tokenbroker-<kid> in the maker's key ring
// (Owns).
// Cloud KMS destroys it after the crypto key's destroy_scheduled_duration
// (30 days unless set otherwise; RestoreCryptoKeyVersion undoes it until
// then) and never deletes the crypto key itself. A version already
// destroyed, scheduled for destruction, or not found is not an error.
func (m *Maker) Destroy(ctx context.Context, spec signer.Spec) error {
	kid := spec.KeyID
	if err := m.Owns(spec); err != nil {
		return fmt.Errorf("%w; refusing to destroy it", err)
	}
	name := m.version(kid)
	api, closeAPI, err := m.connect(ctx)
	if err != nil {
		return err
	}
	defer closeAPI()
	cctx, cancel := m.call(ctx)
	defer cancel()
	v, err := api.GetCryptoKeyVersion(cctx, &kmspb.GetCryptoKeyVersionRequest{Name: name})
	switch {
	case status.Code(err) == codes.NotFound:
		return nil
	case err != nil:
		return fmt.Errorf("gcpkms: key version %s: %w", name, err)
	}
	switch v.GetState() {
	case kmspb.CryptoKeyVersion_DESTROYED, kmspb.CryptoKeyVersion_DESTROY_SCHEDULED:
		return nil
	}
	cctx, cancel = m.call(ctx)
	defer cancel()
	if _, err := api.DestroyCryptoKeyVersion(cctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: name}); err != nil {
		return fmt.Errorf("gcpkms: destroy key version %s: %w", name, err)
	}
	return nil
}
