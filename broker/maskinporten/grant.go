package maskinporten

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/cert"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Names Maskinporten and Altinn use in grants and tokens.
const (
	// GrantType is the OAuth grant type of a JWT bearer grant.
	GrantType = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	// SystemUserType is the authorization_details type of a system user.
	SystemUserType = "urn:altinn:systemuser"
	// OrgAuthority is the authority of an ISO 6523 organisation identifier.
	OrgAuthority = "iso6523-actorid-upis"
	// OrgPrefix is the ICD of Norwegian organisation numbers.
	OrgPrefix = "0192:"
	// DefaultGrantLifetime is exp - iat of a grant when not configured.
	DefaultGrantLifetime = 60 * time.Second
	// MaxGrantLifetime is the longest exp - iat Maskinporten accepts.
	MaxGrantLifetime = 120 * time.Second
)

// Request says which token to ask Maskinporten for. The broker validates it
// before it gets here; Grant only checks what would make a grant invalid.
type Request struct {
	// Scopes to ask for; at least one.
	Scopes []string
	// CustomerOrg is the nine-digit organisation number that owns the
	// system user. Empty asks for a plain (non system user) token.
	CustomerOrg string
	// ExternalRef is the system user's external reference, when it was
	// created with one.
	ExternalRef string
	// Resource is an optional audience restriction.
	Resource string
}

// Claims is the body of a grant: exactly the claims Maskinporten documents,
// nothing else (Maskinporten rejects unknown claims).
type Claims struct {
	Audience             string                `json:"aud"`
	Issuer               string                `json:"iss"`
	IssuedAt             int64                 `json:"iat"`
	Expiry               int64                 `json:"exp"`
	JWTID                string                `json:"jti"`
	Scope                string                `json:"scope"`
	Resource             any                   `json:"resource,omitempty"`
	AuthorizationDetails []AuthorizationDetail `json:"authorization_details,omitempty"`
}

// AuthorizationDetail is the system user element of authorization_details.
type AuthorizationDetail struct {
	Type          string `json:"type"`
	SystemUserOrg OrgID  `json:"systemuser_org"`
	ExternalRef   string `json:"externalRef,omitempty"`
}

// OrgID is an ISO 6523 organisation identifier as grants spell it.
type OrgID struct {
	Authority string `json:"authority"`
	ID        string `json:"ID"`
}

// Grant builds the claims of a grant for r at time now, with a fresh jti.
func (c *Client) Grant(r Request, now time.Time) (*Claims, error) {
	if len(r.Scopes) == 0 {
		return nil, errors.New("grant: no scope")
	}
	iat := now.Unix()
	cl := &Claims{
		Audience: c.env.Issuer,
		Issuer:   c.clientID,
		IssuedAt: iat,
		Expiry:   iat + int64(c.grantLifetime/time.Second),
		JWTID:    uuid.NewString(),
		Scope:    strings.Join(r.Scopes, " "),
	}
	if r.Resource != "" {
		if c.resourceAsString {
			cl.Resource = r.Resource
		} else {
			cl.Resource = []string{r.Resource}
		}
	}
	if r.CustomerOrg != "" {
		cl.AuthorizationDetails = []AuthorizationDetail{{
			Type:          SystemUserType,
			SystemUserOrg: OrgID{Authority: OrgAuthority, ID: OrgPrefix + r.CustomerOrg},
			ExternalRef:   r.ExternalRef,
		}}
	}
	return cl, nil
}

// SignError is a failure of the signing backend (an HSM, a KMS, a signer
// process): the grant was never sent. It is worth retrying later.
type SignError struct {
	Key string
	Err error
}

func (e *SignError) Error() string { return fmt.Sprintf("signing with %s failed: %v", e.Key, e.Err) }

// Unwrap returns the backend's error.
func (e *SignError) Unwrap() error { return e.Err }

// Sign serialises and signs claims with the client's key: a compact JWS whose
// header carries alg and kid. The result is a credential: never log it.
func (c *Client) Sign(cl *Claims) (string, error) { return c.signWith(c.key.Load(), cl) }

// signWith is Sign with key.
func (c *Client) signWith(key *signer.Key, cl *Claims) (string, error) {
	payload, err := json.Marshal(cl)
	if err != nil {
		return "", fmt.Errorf("grant: %w", err)
	}
	hdr := jws.NewHeaders()
	if len(key.Chain) > 0 {
		// An enterprise certificate: x5c, the chain as base64 DER strings,
		// and no kid.
		var chain cert.Chain
		for _, c := range key.Chain {
			if err := chain.AddString(base64.StdEncoding.EncodeToString(c.Raw)); err != nil {
				return "", fmt.Errorf("grant: x5c: %w", err)
			}
		}
		if err := hdr.Set(jws.X509CertChainKey, &chain); err != nil {
			return "", fmt.Errorf("grant: %w", err)
		}
	} else if err := hdr.Set(jws.KeyIDKey, key.KeyID); err != nil {
		return "", fmt.Errorf("grant: %w", err)
	}
	signed, err := jws.Sign(payload, jws.WithKey(key.Algorithm.JWA(), key.Signer, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		// The error comes from the signer and carries no key material.
		return "", &SignError{Key: key.String(), Err: err}
	}
	return string(signed), nil
}

// CheckGrantLifetime reports whether d is a grant lifetime New accepts: 0
// (DefaultGrantLifetime) or 1 s to MaxGrantLifetime.
func CheckGrantLifetime(d time.Duration) error {
	if d != 0 && (d < time.Second || d > MaxGrantLifetime) {
		return fmt.Errorf("%v: want 1s to %v (default %v)", d, MaxGrantLifetime, DefaultGrantLifetime)
	}
	return nil
}
