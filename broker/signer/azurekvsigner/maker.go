package azurekvsigner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// KeyPrefix starts the name of every key a Maker makes: tokenbroker-<kid>.
const KeyPrefix = "tokenbroker-"

// KIDTag is the tag that names the kid on every key a Maker makes.
const KIDTag = "tokenbroker-kid"

// MakerAPI is the part of the azkeys client a Maker uses.
type MakerAPI interface {
	GetKey(ctx context.Context, name, version string, opts *azkeys.GetKeyOptions) (azkeys.GetKeyResponse, error)
	CreateKey(ctx context.Context, name string, params azkeys.CreateKeyParameters, opts *azkeys.CreateKeyOptions) (azkeys.CreateKeyResponse, error)
	DeleteKey(ctx context.Context, name string, opts *azkeys.DeleteKeyOptions) (azkeys.DeleteKeyResponse, error)
}

var _ MakerAPI = (*azkeys.Client)(nil)

// Maker makes RSA signing keys in Azure Key Vault (or a Managed HSM), for
// key rotation. Its location is a vault:
//
//	azurekv:https://<vault>.vault.azure.net[?protection=hsm|software]
//
// The key of kid is the key named tokenbroker-<kid> (operations sign and
// verify, tagged tokenbroker-kid=<kid>); Make finds it by that name before
// creating it, since CreateKey on an existing name would add a version.
// Its Spec names the version made: azurekv:https://<vault>/keys/tokenbroker-<kid>/<version>.
// protection picks the key type: RSA-HSM (hsm, the default; a Premium vault
// or a Managed HSM) or RSA (software).
type Maker struct {
	vault string
	kty   azkeys.KeyType
	opts  signer.MakeOptions
	// connect returns a client for the vault.
	connect func() (MakerAPI, error)
}

// NewMaker parses the location; each Make and Destroy connects with
// DefaultAzureCredential.
func NewMaker(location string, opts signer.MakeOptions) (*Maker, error) {
	m, err := NewMakerWithAPI(nil, location, opts)
	if err != nil {
		return nil, err
	}
	m.connect = func() (MakerAPI, error) {
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("azurekv: credentials: %w", err)
		}
		c, err := azkeys.NewClient(m.vault, cred, nil)
		if err != nil {
			return nil, fmt.Errorf("azurekv: %w", err)
		}
		return c, nil
	}
	return m, nil
}

// NewMakerWithAPI is NewMaker with the given client.
func NewMakerWithAPI(api MakerAPI, location string, opts signer.MakeOptions) (*Maker, error) {
	opts, err := opts.Normalize()
	if err != nil {
		return nil, err
	}
	rest, ok := strings.CutPrefix(location, "azurekv:")
	if !ok {
		return nil, errors.New("location: not an azurekv: location")
	}
	u, err := url.Parse(rest)
	if err != nil || u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("location: %q is not a vault, https://<vault>.vault.azure.net", rest)
	}
	m := &Maker{vault: "https://" + u.Host, kty: azkeys.KeyTypeRSAHSM, opts: opts,
		connect: func() (MakerAPI, error) { return api, nil }}
	q := u.Query()
	for k := range q {
		if k != "protection" {
			return nil, fmt.Errorf("location: unknown query attribute %q", k)
		}
	}
	switch p := q.Get("protection"); p {
	case "", "hsm":
	case "software":
		m.kty = azkeys.KeyTypeRSA
	default:
		return nil, fmt.Errorf("location: protection %q is not hsm or software", p)
	}
	return m, nil
}

func (m *Maker) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, signer.Spec{CallTimeout: m.opts.CallTimeout}.Timeout())
}

// spec returns the Spec of the key version whose JWK kid (a key URL) is
// keyURL, checking that it is the version of name in the maker's vault.
func (m *Maker) spec(keyURL *azkeys.ID, name, kid string) (signer.Spec, error) {
	if keyURL == nil || keyURL.Name() != name || keyURL.Version() == "" {
		return signer.Spec{}, fmt.Errorf("azurekv: key %s: the answer names no version of it", name)
	}
	return m.opts.Spec("azurekv:"+m.vault+"/keys/"+name+"/"+keyURL.Version(), kid), nil
}

// Make returns the current version of the key tokenbroker-<kid>, creating
// the key when there is none. A key found must be an enabled RSA key tagged
// with the kid.
func (m *Maker) Make(ctx context.Context, kid string) (signer.Spec, error) {
	if err := signer.CheckMadeKID(kid); err != nil {
		return signer.Spec{}, err
	}
	api, err := m.connect()
	if err != nil {
		return signer.Spec{}, err
	}
	name := KeyPrefix + kid
	cctx, cancel := m.call(ctx)
	defer cancel()
	got, err := api.GetKey(cctx, name, "", nil)
	switch {
	case err == nil:
		k := got.Key
		switch {
		case k == nil || k.Kty == nil || (*k.Kty != azkeys.KeyTypeRSA && *k.Kty != azkeys.KeyTypeRSAHSM):
			return signer.Spec{}, fmt.Errorf("azurekv: key %s exists and is not an RSA key", name)
		case got.Tags[KIDTag] == nil || *got.Tags[KIDTag] != kid:
			return signer.Spec{}, fmt.Errorf("azurekv: key %s exists without the tag %s=%s; tokenbroker did not make it", name, KIDTag, kid)
		case got.Attributes != nil && got.Attributes.Enabled != nil && !*got.Attributes.Enabled:
			return signer.Spec{}, fmt.Errorf("azurekv: key %s exists and is disabled", name)
		}
		return m.spec(k.KID, name, kid)
	case !isStatus(err, http.StatusNotFound):
		return signer.Spec{}, fmt.Errorf("azurekv: key %s: %w", name, err)
	}
	size := int32(m.opts.Bits)
	kty := m.kty
	cctx, cancel = m.call(ctx)
	defer cancel()
	made, err := api.CreateKey(cctx, name, azkeys.CreateKeyParameters{
		Kty:     &kty,
		KeySize: &size,
		KeyOps:  []*azkeys.KeyOperation{new(azkeys.KeyOperationSign), new(azkeys.KeyOperationVerify)},
		Tags:    map[string]*string{KIDTag: &kid},
	}, nil)
	if err != nil {
		return signer.Spec{}, fmt.Errorf("azurekv: create key %s: %w", name, err)
	}
	if made.Key == nil {
		return signer.Spec{}, fmt.Errorf("azurekv: create key %s: no key in the answer", name)
	}
	return m.spec(made.Key.KID, name, kid)
}

// Owns reports, with nil, whether spec names a key this maker makes:
// tokenbroker-<kid> (kid being the spec's KeyID) in its vault. Otherwise
// the error says why, without repeating a URI of another scheme.
func (m *Maker) Owns(spec signer.Spec) error {
	kid := spec.KeyID
	if err := signer.CheckMadeKID(kid); err != nil {
		return err
	}
	if !strings.HasPrefix(spec.URI, "azurekv:") {
		return errors.New("azurekv: not an azurekv: key (the keys are made in the vault of rotation.new_keys)")
	}
	u, err := ParseURI(spec.URI)
	if err != nil {
		return err
	}
	if u.VaultURL != m.vault || u.Name != KeyPrefix+kid {
		return fmt.Errorf("azurekv: %s is not a key this maker makes for kid %q", spec.URI, kid)
	}
	return nil
}

// Destroy deletes the key the spec names, which must be tokenbroker-<kid>
// in the maker's vault (Owns), with all its versions. With soft-delete on (the
// default of every vault) the key stays recoverable for the vault's
// retention period and is not purged. A key already gone is not an error.
func (m *Maker) Destroy(ctx context.Context, spec signer.Spec) error {
	kid := spec.KeyID
	if err := m.Owns(spec); err != nil {
		return fmt.Errorf("%w; refusing to delete it", err)
	}
	name := KeyPrefix + kid
	api, err := m.connect()
	if err != nil {
		return err
	}
	cctx, cancel := m.call(ctx)
	defer cancel()
	if _, err := api.DeleteKey(cctx, name, nil); err != nil && !isStatus(err, http.StatusNotFound) {
		return fmt.Errorf("azurekv: delete key %s: %w", name, err)
	}
	return nil
}

// isStatus reports whether err is Key Vault's answer with the HTTP status
// code.
func isStatus(err error, code int) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == code
}
