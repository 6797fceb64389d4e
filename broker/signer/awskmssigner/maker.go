package awskmssigner

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// AliasPrefix starts the alias of every key a Maker makes:
// alias/tokenbroker/<kid>.
const AliasPrefix = "alias/tokenbroker/"

// KIDTag is the tag that names the kid on every key a Maker makes.
const KIDTag = "tokenbroker:kid"

// DeletionWindowDays is how long a destroyed key waits before KMS deletes
// it (the longest KMS allows); until then CancelKeyDeletion brings it back.
const DeletionWindowDays = 30

// MakerAPI is the part of the KMS client a Maker uses.
type MakerAPI interface {
	DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
	CreateKey(context.Context, *kms.CreateKeyInput, ...func(*kms.Options)) (*kms.CreateKeyOutput, error)
	CreateAlias(context.Context, *kms.CreateAliasInput, ...func(*kms.Options)) (*kms.CreateAliasOutput, error)
	DisableKey(context.Context, *kms.DisableKeyInput, ...func(*kms.Options)) (*kms.DisableKeyOutput, error)
	ScheduleKeyDeletion(context.Context, *kms.ScheduleKeyDeletionInput, ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error)
	DeleteAlias(context.Context, *kms.DeleteAliasInput, ...func(*kms.Options)) (*kms.DeleteAliasOutput, error)
}

var _ MakerAPI = (*kms.Client)(nil)

// Maker makes RSA signing keys in AWS KMS, for key rotation. Its location
// is an awskms: URI without a key, naming the region and endpoint as a key
// URI does:
//
//	awskms:?region=eu-north-1[&endpoint=https://kms.internal]
//
// The key of kid is a customer managed key (KeySpec RSA_<bits>, KeyUsage
// SIGN_VERIFY, tagged tokenbroker:kid=<kid>) with the alias
// alias/tokenbroker/<kid>, which is how its Spec names it and how Make finds
// it again.
type Maker struct {
	api   MakerAPI
	loc   *URI
	query string
	opts  signer.MakeOptions
}

// NewMaker parses the location and builds a KMS client with the SDK's
// default credential chain; it calls nothing yet.
func NewMaker(location string, opts signer.MakeOptions) (*Maker, error) {
	m, err := NewMakerWithAPI(nil, location, opts)
	if err != nil {
		return nil, err
	}
	var lo []func(*config.LoadOptions) error
	if m.loc.Region != "" {
		lo = append(lo, config.WithRegion(m.loc.Region))
	}
	cfg, err := config.LoadDefaultConfig(context.Background(), lo...)
	if err != nil {
		return nil, fmt.Errorf("awskms: %w", err)
	}
	m.api = kms.NewFromConfig(cfg, func(o *kms.Options) {
		if m.loc.Endpoint != "" {
			o.BaseEndpoint = aws.String(m.loc.Endpoint)
		}
	})
	return m, nil
}

// NewMakerWithAPI is NewMaker with the given client (nil to set it later).
func NewMakerWithAPI(api MakerAPI, location string, opts signer.MakeOptions) (*Maker, error) {
	opts, err := opts.Normalize()
	if err != nil {
		return nil, err
	}
	rest, ok := strings.CutPrefix(location, "awskms:")
	if !ok {
		return nil, errors.New("location: not an awskms: location")
	}
	key, query, _ := strings.Cut(rest, "?")
	if key != "" {
		return nil, fmt.Errorf("location: an awskms location names a region, not a key: drop %q (keys are made as %s<kid>)", key, AliasPrefix)
	}
	loc, err := ParseURI("awskms:" + AliasPrefix + "?" + query)
	if err != nil {
		return nil, fmt.Errorf("location: %w", err)
	}
	return &Maker{api: api, loc: loc, query: query, opts: opts}, nil
}

func (m *Maker) uri(kid string) string {
	u := "awskms:" + AliasPrefix + kid
	if m.query != "" {
		u += "?" + m.query
	}
	return u
}

func (m *Maker) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, signer.Spec{CallTimeout: m.opts.CallTimeout}.Timeout())
}

// describe returns the key behind kid's alias, nil when there is none.
func (m *Maker) describe(ctx context.Context, kid string) (*types.KeyMetadata, error) {
	cctx, cancel := m.call(ctx)
	defer cancel()
	out, err := m.api.DescribeKey(cctx, &kms.DescribeKeyInput{KeyId: aws.String(AliasPrefix + kid)})
	var nf *types.NotFoundException
	switch {
	case errors.As(err, &nf):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("awskms: describe %s%s: %w", AliasPrefix, kid, err)
	case out.KeyMetadata == nil:
		return nil, fmt.Errorf("awskms: describe %s%s: no key metadata", AliasPrefix, kid)
	}
	return out.KeyMetadata, nil
}

// Make returns the key of kid's alias, creating the key and its alias when
// there is none. A key found must be enabled and for SIGN_VERIFY. When the
// alias cannot be made, the key just created is scheduled for deletion
// (were the process to stop in between, the key is left without alias,
// found by its tokenbroker:kid tag).
func (m *Maker) Make(ctx context.Context, kid string) (signer.Spec, error) {
	if err := signer.CheckMadeKID(kid); err != nil {
		return signer.Spec{}, err
	}
	spec := m.opts.Spec(m.uri(kid), kid)
	md, err := m.describe(ctx, kid)
	if err != nil {
		return signer.Spec{}, err
	}
	if md != nil {
		return spec, checkMade(md, kid)
	}
	cctx, cancel := m.call(ctx)
	defer cancel()
	out, err := m.api.CreateKey(cctx, &kms.CreateKeyInput{
		KeySpec:     types.KeySpec(fmt.Sprintf("RSA_%d", m.opts.Bits)),
		KeyUsage:    types.KeyUsageTypeSignVerify,
		Description: aws.String("tokenbroker: Maskinporten signing key " + kid),
		Tags:        []types.Tag{{TagKey: aws.String(KIDTag), TagValue: aws.String(kid)}},
	})
	if err != nil {
		return signer.Spec{}, fmt.Errorf("awskms: create key %s: %w", kid, err)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil {
		return signer.Spec{}, fmt.Errorf("awskms: create key %s: no key id in the answer", kid)
	}
	keyID := *out.KeyMetadata.KeyId
	cctx, cancel = m.call(ctx)
	defer cancel()
	_, err = m.api.CreateAlias(cctx, &kms.CreateAliasInput{AliasName: aws.String(AliasPrefix + kid), TargetKeyId: aws.String(keyID)})
	if err == nil {
		return spec, nil
	}
	// Drop the key the alias does not name; a Make that got there first
	// (AlreadyExists) made the key to return.
	cctx, cancel = m.call(context.WithoutCancel(ctx))
	defer cancel()
	_, derr := m.api.ScheduleKeyDeletion(cctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(DeletionWindowDays)})
	if derr != nil {
		err = fmt.Errorf("%w (and scheduling the deletion of the unnamed key %s failed: %v)", err, keyID, derr)
	}
	var exists *types.AlreadyExistsException
	if errors.As(err, &exists) {
		if md, derr := m.describe(ctx, kid); derr == nil && md != nil {
			return spec, checkMade(md, kid)
		}
	}
	return signer.Spec{}, fmt.Errorf("awskms: create alias %s%s: %w", AliasPrefix, kid, err)
}

// checkMade checks that a key found under kid's alias can sign.
func checkMade(md *types.KeyMetadata, kid string) error {
	if md.KeyState != types.KeyStateEnabled {
		return fmt.Errorf("awskms: the key of %s%s is %s, not Enabled", AliasPrefix, kid, md.KeyState)
	}
	if md.KeyUsage != types.KeyUsageTypeSignVerify || !strings.HasPrefix(string(md.KeySpec), "RSA_") {
		return fmt.Errorf("awskms: the key of %s%s is %s for %s, not RSA for SIGN_VERIFY", AliasPrefix, kid, md.KeySpec, md.KeyUsage)
	}
	return nil
}

// Owns reports, with nil, whether spec names a key this maker makes:
// alias/tokenbroker/<kid> (kid being the spec's KeyID) in the maker's
// region and endpoint. Otherwise the error says why, without repeating a
// URI of another scheme.
func (m *Maker) Owns(spec signer.Spec) error {
	kid := spec.KeyID
	if err := signer.CheckMadeKID(kid); err != nil {
		return err
	}
	if !strings.HasPrefix(spec.URI, "awskms:") {
		return errors.New("awskms: not an awskms: key (the keys are made in the region of rotation.new_keys)")
	}
	u, err := ParseURI(spec.URI)
	if err != nil {
		return err
	}
	if u.KeyID != AliasPrefix+kid || u.Region != m.loc.Region || u.Endpoint != m.loc.Endpoint {
		return fmt.Errorf("awskms: %s is not a key this maker makes for kid %q", spec.URI, kid)
	}
	return nil
}

// Destroy disables the key behind the spec's alias, which must be
// alias/tokenbroker/<kid> in the maker's region and endpoint (Owns),
// schedules its deletion in DeletionWindowDays (reversible until then) and
// deletes the alias. A key already pending deletion is left so; an alias
// already gone is not an error.
func (m *Maker) Destroy(ctx context.Context, spec signer.Spec) error {
	kid := spec.KeyID
	if err := m.Owns(spec); err != nil {
		return fmt.Errorf("%w; refusing to destroy it", err)
	}
	md, err := m.describe(ctx, kid)
	if err != nil || md == nil {
		return err
	}
	keyID := aws.ToString(md.Arn)
	if keyID == "" {
		keyID = aws.ToString(md.KeyId)
	}
	if md.KeyState != types.KeyStatePendingDeletion {
		if md.KeyState == types.KeyStateEnabled {
			cctx, cancel := m.call(ctx)
			defer cancel()
			if _, err := m.api.DisableKey(cctx, &kms.DisableKeyInput{KeyId: aws.String(keyID)}); err != nil {
				return fmt.Errorf("awskms: disable %s: %w", keyID, err)
			}
		}
		cctx, cancel := m.call(ctx)
		defer cancel()
		if _, err := m.api.ScheduleKeyDeletion(cctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(DeletionWindowDays)}); err != nil {
			return fmt.Errorf("awskms: schedule deletion of %s: %w", keyID, err)
		}
	}
	cctx, cancel := m.call(ctx)
	defer cancel()
	_, err = m.api.DeleteAlias(cctx, &kms.DeleteAliasInput{AliasName: aws.String(AliasPrefix + kid)})
	var nf *types.NotFoundException
	if err != nil && !errors.As(err, &nf) {
		return fmt.Errorf("awskms: delete alias %s%s: %w", AliasPrefix, kid, err)
	}
	return nil
}
