package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/orgno"
	"github.com/tokenbroker/tokenbroker/broker/pagetoken"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// VendorAPI is Altinn's system user request API; *altinn.Vendor implements
// it.
type VendorAPI interface {
	CreateRequest(ctx context.Context, token string, agent bool, r altinn.Request) (*altinn.Request, bool, error)
	GetRequest(ctx context.Context, token string, agent bool, id string) (*altinn.Request, error)
	GetRequestByExternalRef(ctx context.Context, token string, agent bool, systemID, org, ref string) (*altinn.Request, error)
	ListRequests(ctx context.Context, token string, agent bool, systemID, pageURL string) ([]altinn.Request, string, error)
	ListSystemUsers(ctx context.Context, token, systemID, pageURL string) ([]altinn.SystemUser, string, error)
	RegisterSystem(ctx context.Context, token string, s altinn.System, update bool) error
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

// clientName is the client a call names: name, or the only client.
func (b *Broker) clientName(name string) string {
	if name == "" && b.only != nil {
		return b.only.Name
	}
	return name
}

// systemUserClient resolves the client and checks that it can talk to
// Altinn's vendor API. Call it only after the policy allowed the caller
// this client, so that a caller with no rule for a client learns nothing
// about whether it exists.
func (b *Broker) systemUserClient(name string) (*Client, error) {
	c, err := b.client(b.clientName(name))
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
	if err := b.policy.Load().Check(p.Caller, policy.Request{Client: b.clientName(p.Client), CustomerOrg: org, ExternalRef: p.ExternalRef}); err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	c, err := b.systemUserClient(p.Client)
	if err != nil {
		return nil, false, err
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
// external reference. The policy is checked before Altinn is called: in
// full when the customer org is given; by id, where the org is only known
// from Altinn's answer, the caller must have a rule for the client first,
// and a request of a customer it may not see is answered exactly like one
// that does not exist (ErrNotFound). The error still wraps
// ErrPermissionDenied then, for the audit.
func (b *Broker) GetSystemUserRequest(ctx context.Context, l SystemUserLookup) (*altinn.Request, error) {
	if err := checkString("client", l.Client, MaxClientLen); err != nil {
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
		if _, err := uuid.Parse(l.ID); err != nil || len(l.ID) != 36 {
			return nil, fieldError("id", "not a request id (a UUID)")
		}
	case l.CustomerOrg != "":
		var err error
		if org, err = orgno.Parse(l.CustomerOrg); err != nil {
			return nil, fieldError("customer_org", "not an organisation number: %v", err)
		}
		if err := checkString("external_ref", l.ExternalRef, MaxExternalRefLen); err != nil {
			return nil, err
		}
	default:
		return nil, fieldError("id", "give id, or customer_org (and external_ref)")
	}
	name := b.clientName(l.Client)
	pol := b.policy.Load()
	if org != "" {
		if err := pol.Check(l.Caller, policy.Request{Client: name, CustomerOrg: org, ExternalRef: l.ExternalRef}); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
		}
	} else if !pol.AllowsClient(l.Caller, name) {
		// Check names what is refused: the caller, or the client.
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, pol.Check(l.Caller, policy.Request{Client: name}))
	}
	c, err := b.systemUserClient(l.Client)
	if err != nil {
		return nil, err
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestRead)
	if err != nil {
		return nil, err
	}
	var r *altinn.Request
	if l.ID != "" {
		r, err = c.Vendor.GetRequest(ctx, tok.AccessToken, l.Agent, l.ID)
		var pe *altinn.ProblemError
		if errors.As(err, &pe) && pe.StatusCode == http.StatusNotFound {
			return nil, ErrNotFound
		}
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
	if err := pol.Check(l.Caller, policy.Request{Client: c.Name, CustomerOrg: r.PartyOrgNo, ExternalRef: ref}); err != nil {
		if l.ID != "" {
			return nil, &hiddenError{fmt.Errorf("%w: %w", ErrPermissionDenied, err)}
		}
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	if strings.EqualFold(r.Status, "accepted") {
		b.forgetRefusals(c.Name, r.PartyOrgNo)
	}
	return r, nil
}

// hiddenError is a refusal the caller must not tell from a missing
// request: it is ErrNotFound to errors.Is, and its message is
// ErrNotFound's, while it still wraps the refusal for the audit.
type hiddenError struct{ refusal error }

func (e *hiddenError) Error() string { return ErrNotFound.Error() }

func (e *hiddenError) Unwrap() []error { return []error{ErrNotFound, e.refusal} }

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

// requireAll checks that the caller may act for every customer of the
// client named name: its policy rule must list customer_orgs "*". Lists
// and the system register span customers.
func (b *Broker) requireAll(caller, name string) error {
	if err := b.policy.Load().Check(caller, policy.Request{Client: b.clientName(name), CustomerOrg: "*"}); err != nil {
		return fmt.Errorf("%w: %w (listing and registering need customer_orgs \"*\")", ErrPermissionDenied, err)
	}
	return nil
}

// The lists a page token may be bound to.
const (
	listRequests      = "requests"
	listAgentRequests = "agent_requests"
	listSystemUsers   = "system_users"
)

// ListSystemUserRequests returns one page of the client's requests and the
// next page token ("" on the last page).
func (b *Broker) ListSystemUserRequests(ctx context.Context, caller, client string, agent bool, pageToken string) ([]altinn.Request, string, error) {
	list := listRequests
	if agent {
		list = listAgentRequests
	}
	c, bind, page, err := b.listSetup(caller, client, list, pageToken)
	if err != nil {
		return nil, "", err
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestRead)
	if err != nil {
		return nil, "", err
	}
	out, next, err := c.Vendor.ListRequests(ctx, tok.AccessToken, agent, c.SystemID, page)
	if err != nil {
		return nil, "", err
	}
	return out, b.pages.Encode(bind, next), nil
}

// ListSystemUsers returns one page of the client's system users and the next
// page token.
func (b *Broker) ListSystemUsers(ctx context.Context, caller, client, pageToken string) ([]altinn.SystemUser, string, error) {
	c, bind, page, err := b.listSetup(caller, client, listSystemUsers, pageToken)
	if err != nil {
		return nil, "", err
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeSystemRegisterWrite)
	if err != nil {
		return nil, "", err
	}
	out, next, err := c.Vendor.ListSystemUsers(ctx, tok.AccessToken, c.SystemID, page)
	if err != nil {
		return nil, "", err
	}
	return out, b.pages.Encode(bind, next), nil
}

// listSetup checks the caller (policy first), resolves the client, and
// decodes the page token, which must have been issued to this caller for
// this client, system and list.
func (b *Broker) listSetup(caller, client, list, pageToken string) (*Client, pagetoken.Binding, string, error) {
	var bind pagetoken.Binding
	if err := checkString("client", client, MaxClientLen); err != nil {
		return nil, bind, "", err
	}
	if err := b.requireAll(caller, client); err != nil {
		return nil, bind, "", err
	}
	c, err := b.systemUserClient(client)
	if err != nil {
		return nil, bind, "", err
	}
	bind = pagetoken.Binding{Caller: caller, Client: c.Name, SystemID: c.SystemID, List: list}
	if pageToken == "" {
		return c, bind, "", nil
	}
	page, err := b.pages.Decode(bind, pageToken)
	if err != nil {
		return nil, bind, "", fieldError("page_token", "%v", err)
	}
	return c, bind, page, nil
}

// SystemRegistration describes the client's system for the register.
type SystemRegistration struct {
	Caller, Client                       string
	Name, Description                    map[string]string
	Rights, AccessPackages, RedirectURLs []string
	Update                               bool
}

// RegisterSystem creates (or replaces) the client's system in Altinn's
// system register with the client's client_id, and returns its id.
func (b *Broker) RegisterSystem(ctx context.Context, r SystemRegistration) (string, error) {
	if err := checkString("client", r.Client, MaxClientLen); err != nil {
		return "", err
	}
	if len(r.Name) == 0 {
		return "", fieldError("name", "at least one language (nb, nn, en) is required")
	}
	for lang, text := range r.Name {
		if err := checkString("name", lang+text, 256); err != nil {
			return "", err
		}
	}
	for lang, text := range r.Description {
		if err := checkString("description", lang+text, 2048); err != nil {
			return "", err
		}
	}
	var rights []altinn.Right
	for _, id := range r.Rights {
		if msg := checkScope(id); msg != "" {
			return "", fieldError("rights", "resource id %q: %s", id, msg)
		}
		rights = append(rights, altinn.Right{Resource: []altinn.Attribute{{ID: "urn:altinn:resource", Value: id}}})
	}
	var packages []altinn.AccessPackage
	for _, a := range r.AccessPackages {
		if !strings.HasPrefix(a, AccessPackagePrefix) || checkScope(a) != "" {
			return "", fieldError("access_packages", "want an URN starting with %s", AccessPackagePrefix)
		}
		packages = append(packages, altinn.AccessPackage{URN: a})
	}
	for _, u := range r.RedirectURLs {
		if pu, err := url.Parse(u); err != nil || pu.Scheme != "https" || pu.Host == "" || len(u) > MaxResourceLen {
			return "", fieldError("allowed_redirect_urls", "want absolute https URLs")
		}
	}
	if err := b.requireAll(r.Caller, r.Client); err != nil {
		return "", err
	}
	c, err := b.systemUserClient(r.Client)
	if err != nil {
		return "", err
	}
	vendor, _, _ := strings.Cut(c.SystemID, "_")
	if !orgno.Valid(vendor) {
		return "", fieldError("client", "system_id %q does not start with the vendor's organisation number and _", c.SystemID)
	}
	cid, ok := c.Source.(interface{ ClientID() string })
	if !ok {
		return "", fieldError("client", "client %q has no Maskinporten client_id", c.Name)
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeSystemRegisterWrite)
	if err != nil {
		return "", err
	}
	err = c.Vendor.RegisterSystem(ctx, tok.AccessToken, altinn.System{
		ID: c.SystemID, Vendor: altinn.OrgID{Authority: maskinporten.OrgAuthority, ID: maskinporten.OrgPrefix + vendor},
		Name: r.Name, Description: r.Description, Rights: rights, AccessPackages: packages,
		ClientID: []string{cid.ClientID()}, AllowedRedirectURLs: r.RedirectURLs, IsVisible: true,
	}, r.Update)
	return c.SystemID, err
}
