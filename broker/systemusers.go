package broker

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/orgno"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// VendorAPI is Altinn's system user request API; *altinn.Vendor implements
// it.
type VendorAPI interface {
	CreateRequest(ctx context.Context, token string, agent bool, r altinn.Request) (*altinn.Request, bool, error)
	GetRequest(ctx context.Context, token string, agent bool, id string) (*altinn.Request, error)
	GetRequestByExternalRef(ctx context.Context, token string, agent bool, systemID, org, ref string) (*altinn.Request, error)
}

// SystemUserRequestParams describe a system user request to create.
type SystemUserRequestParams struct {
	Caller, Client, CustomerOrg, ExternalRef, RedirectURL string
	Rights, AccessPackages                                []string
	Agent                                                 bool
}

// SystemUserLookup names a request: ID, or CustomerOrg (and ExternalRef).
type SystemUserLookup struct {
	Caller, Client, ID, CustomerOrg, ExternalRef string
	Agent                                        bool
}

// AccessPackagePrefix starts every access package URN.
const AccessPackagePrefix = "urn:altinn:accesspackage:"

// systemUserClient resolves the client and checks that it can talk to
// Altinn's vendor API.
func (b *Broker) systemUserClient(name string) (*Client, error) {
	if name == "" && b.only != nil {
		name = b.only.Name
	}
	c, err := b.client(name)
	if err != nil {
		return nil, err
	}
	if c.Vendor == nil || c.SystemID == "" || c.Exchanger == nil {
		return nil, fieldError("client", "client %q has no system_id (Altinn system register) configured", c.Name)
	}
	return c, nil
}

// CreateSystemUserRequest asks the customer to approve a system user for
// the client's system. It returns the request and whether Altinn already
// had it pending.
func (b *Broker) CreateSystemUserRequest(ctx context.Context, p SystemUserRequestParams) (*altinn.Request, bool, error) {
	org, err := orgno.Parse(p.CustomerOrg)
	if err != nil {
		return nil, false, fieldError("customer_org", "not an organisation number: %v", err)
	}
	if err := checkString("external_ref", p.ExternalRef, MaxExternalRefLen); err != nil {
		return nil, false, err
	}
	if err := checkString("client", p.Client, MaxClientLen); err != nil {
		return nil, false, err
	}
	if p.RedirectURL != "" {
		u, err := url.Parse(p.RedirectURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || len(p.RedirectURL) > MaxResourceLen {
			return nil, false, fieldError("redirect_url", "want an absolute https URL")
		}
	}
	switch {
	case len(p.Rights) > MaxScopes || len(p.AccessPackages) > MaxScopes:
		return nil, false, fieldError("rights", "at most %d rights and %d access packages", MaxScopes, MaxScopes)
	case p.Agent && len(p.Rights) > 0:
		return nil, false, fieldError("rights", "an agent request takes access packages only")
	case p.Agent && len(p.AccessPackages) == 0:
		return nil, false, fieldError("access_packages", "an agent request needs at least one access package")
	case !p.Agent && len(p.Rights) == 0 && len(p.AccessPackages) == 0:
		return nil, false, fieldError("rights", "a request needs rights or access packages")
	}
	var rights []altinn.Right
	for _, r := range p.Rights {
		if msg := checkScope(r); msg != "" {
			return nil, false, fieldError("rights", "resource id %q: %s", r, msg)
		}
		rights = append(rights, altinn.Right{Resource: []altinn.Attribute{{ID: "urn:altinn:resource", Value: r}}})
	}
	var packages []altinn.AccessPackage
	for _, a := range p.AccessPackages {
		if !strings.HasPrefix(a, AccessPackagePrefix) || checkScope(a) != "" {
			return nil, false, fieldError("access_packages", "want an URN starting with %s", AccessPackagePrefix)
		}
		packages = append(packages, altinn.AccessPackage{URN: a})
	}
	c, err := b.systemUserClient(p.Client)
	if err != nil {
		return nil, false, err
	}
	if err := b.policy.Load().Check(p.Caller, policy.Request{Client: c.Name, CustomerOrg: org, ExternalRef: p.ExternalRef}); err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestWrite)
	if err != nil {
		return nil, false, err
	}
	return c.Vendor.CreateRequest(ctx, tok.AccessToken, p.Agent, altinn.Request{
		SystemID: c.SystemID, PartyOrgNo: org, ExternalRef: p.ExternalRef, Rights: rights,
		AccessPackages: packages, RedirectURL: p.RedirectURL,
	})
}

// GetSystemUserRequest reads a request by id, or by customer org and
// external reference. The policy is checked for the request's org.
func (b *Broker) GetSystemUserRequest(ctx context.Context, l SystemUserLookup) (*altinn.Request, error) {
	c, err := b.systemUserClient(l.Client)
	if err != nil {
		return nil, err
	}
	var org string
	switch {
	case l.ID != "" && l.CustomerOrg != "":
		return nil, fieldError("id", "give id or customer_org, not both")
	case l.ID != "":
		if err := checkString("id", l.ID, 64); err != nil {
			return nil, err
		}
	case l.CustomerOrg != "":
		if org, err = orgno.Parse(l.CustomerOrg); err != nil {
			return nil, fieldError("customer_org", "not an organisation number: %v", err)
		}
		if err := checkString("external_ref", l.ExternalRef, MaxExternalRefLen); err != nil {
			return nil, err
		}
	default:
		return nil, fieldError("id", "give id, or customer_org (and external_ref)")
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestRead)
	if err != nil {
		return nil, err
	}
	var r *altinn.Request
	if l.ID != "" {
		r, err = c.Vendor.GetRequest(ctx, tok.AccessToken, l.Agent, l.ID)
	} else {
		ref := l.ExternalRef
		if ref == "" {
			ref = org
		}
		r, err = c.Vendor.GetRequestByExternalRef(ctx, tok.AccessToken, l.Agent, c.SystemID, org, ref)
	}
	if err != nil {
		return nil, err
	}
	ref := r.ExternalRef
	if ref == r.PartyOrgNo {
		ref = ""
	}
	if err := b.policy.Load().Check(l.Caller, policy.Request{Client: c.Name, CustomerOrg: r.PartyOrgNo, ExternalRef: ref}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	if strings.EqualFold(r.Status, "accepted") {
		b.forgetRefusals(c.Name, r.PartyOrgNo)
	}
	return r, nil
}

// forgetRefusals drops remembered refusals (MP-303 and the like) for a
// client and customer org, once the customer has approved a system user.
func (b *Broker) forgetRefusals(client, org string) {
	b.cache.entries.Range(func(k, v any) bool {
		if key := k.(cacheKey); key.client == client && key.customerOrg == org {
			v.(*entry).negative.Store(nil)
		}
		return true
	})
}

// vendorMinValidity is how long a vendor token must still live.
const vendorMinValidity = time.Minute

// vendorToken returns the vendor's own Altinn token for scope (no customer
// org), cached and single-flighted like every other token.
func (b *Broker) vendorToken(ctx context.Context, c *Client, scope string) (*maskinporten.Token, error) {
	key := cacheKey{kind: KindAltinn, client: c.Name, keyID: c.Source.KeyID(), issuer: c.Source.Environment().Issuer, scopes: scope}
	now := b.now()
	e := b.cache.entry(key, func() *entry {
		n := &entry{key: key, client: c, req: maskinporten.Request{Scopes: []string{scope}}}
		n.lastUsed.Store(now.UnixNano())
		return n
	})
	e.touch(now)
	if t := e.tok.Load(); t != nil && t.ExpiresAt.Sub(now) >= vendorMinValidity {
		return t, nil
	}
	t, _, _, err := b.fetch(ctx, e, vendorMinValidity)
	return t, err
}
