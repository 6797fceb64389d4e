package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
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
	GetSystem(ctx context.Context, token, id string) (*altinn.System, error)
	DeleteRequest(ctx context.Context, token, id string) error
}

// SystemUserRequestParams describe a system user request to create.
type SystemUserRequestParams struct {
	Caller, Client, CustomerOrg, ExternalRef, RedirectURL string
	Rights, AccessPackages                                []string
	Agent                                                 bool
	// ReplaceRejected deletes a Rejected, Denied or timed-out request for
	// the same customer and external reference before creating, so that
	// the customer is asked again.
	ReplaceRejected bool
}

// CreatedRequest is the answer to CreateSystemUserRequest.
type CreatedRequest struct {
	*altinn.Request
	// Existing is true when Altinn returned a request it already had.
	Existing bool
	// Replaced is the id of the request deleted for ReplaceRejected.
	Replaced string
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
// the client's system. Altinn returns the request it already has for the
// same customer and external reference whatever its status; with
// ReplaceRejected a Rejected, Denied or timed-out one is deleted first.
//
// When a request was deleted for ReplaceRejected and creating the new one
// then failed, the error comes with a CreatedRequest holding only
// Replaced, so that the deletion can still be audited.
func (b *Broker) CreateSystemUserRequest(ctx context.Context, p SystemUserRequestParams) (*CreatedRequest, error) {
	r, existing, replaced, err := b.createSystemUserRequest(ctx, p)
	switch {
	case err != nil && replaced != "":
		return &CreatedRequest{Replaced: replaced}, err
	case err != nil:
		return nil, err
	}
	return &CreatedRequest{Request: r, Existing: existing, Replaced: replaced}, nil
}

func (b *Broker) createSystemUserRequest(ctx context.Context, p SystemUserRequestParams) (*altinn.Request, bool, string, error) {
	org, err := orgno.Parse(p.CustomerOrg)
	if err != nil {
		return nil, false, "", fieldError("customer_org", "not an organisation number: %v", err)
	}
	if err := checkExternalRef(p.ExternalRef); err != nil {
		return nil, false, "", err
	}
	if err := checkString("client", p.Client, MaxClientLen); err != nil {
		return nil, false, "", err
	}
	if p.RedirectURL != "" {
		u, err := url.Parse(p.RedirectURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || len(p.RedirectURL) > MaxResourceLen {
			return nil, false, "", fieldError("redirect_url", "want an absolute https URL")
		}
	}
	switch {
	case len(p.Rights) > MaxScopes || len(p.AccessPackages) > MaxScopes:
		return nil, false, "", fieldError("rights", "at most %d rights and %d access packages", MaxScopes, MaxScopes)
	case p.Agent && len(p.Rights) > 0:
		return nil, false, "", fieldError("rights", "an agent request takes access packages only")
	case p.Agent && len(p.AccessPackages) == 0:
		return nil, false, "", fieldError("access_packages", "an agent request needs at least one access package")
	case !p.Agent && len(p.Rights) == 0 && len(p.AccessPackages) == 0:
		return nil, false, "", fieldError("rights", "a request needs rights or access packages")
	}
	var rights []altinn.Right
	for _, r := range p.Rights {
		if msg := checkScope(r); msg != "" {
			return nil, false, "", fieldError("rights", "resource id %q: %s", r, msg)
		}
		rights = append(rights, altinn.Right{Resource: []altinn.Attribute{{ID: "urn:altinn:resource", Value: r}}})
	}
	var packages []altinn.AccessPackage
	for _, a := range p.AccessPackages {
		if !strings.HasPrefix(a, AccessPackagePrefix) || checkScope(a) != "" {
			return nil, false, "", fieldError("access_packages", "want an URN starting with %s", AccessPackagePrefix)
		}
		packages = append(packages, altinn.AccessPackage{URN: a})
	}
	if err := b.policy.Load().Check(p.Caller, policy.Request{Client: b.clientName(p.Client), CustomerOrg: org, ExternalRef: p.ExternalRef}); err != nil {
		return nil, false, "", fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	c, err := b.systemUserClient(p.Client)
	if err != nil {
		return nil, false, "", err
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestWrite)
	if err != nil {
		return nil, false, "", err
	}
	var replaced string
	if p.ReplaceRejected {
		if replaced, err = b.replaceRejected(ctx, c, p.Agent, org, p.ExternalRef, tok.AccessToken); err != nil {
			return nil, false, "", err
		}
	}
	r, existing, err := c.Vendor.CreateRequest(ctx, tok.AccessToken, p.Agent, altinn.Request{
		SystemID: c.SystemID, PartyOrgNo: org, ExternalRef: p.ExternalRef, Rights: rights,
		AccessPackages: packages, RedirectURL: p.RedirectURL,
	})
	return r, existing, replaced, err
}

// replaceRejected deletes the request Altinn has for (system, org, ref) if
// it is Rejected, Denied or timed out, and returns its id. Altinn would
// otherwise return that request again instead of asking the customer
// (RequestSystemUserController.cs CreateRequest and CreateAgentRequest).
func (b *Broker) replaceRejected(ctx context.Context, c *Client, agent bool, org, ref, writeToken string) (string, error) {
	read, err := b.vendorToken(ctx, c, altinn.ScopeRequestRead)
	if err != nil {
		return "", err
	}
	if ref == "" {
		ref = org
	}
	old, err := c.Vendor.GetRequestByExternalRef(ctx, read.AccessToken, agent, c.SystemID, org, ref)
	var pe *altinn.ProblemError
	switch {
	case errors.As(err, &pe) && pe.StatusCode == http.StatusNotFound:
		return "", nil
	case err != nil:
		return "", err
	case !Replaceable(old):
		return "", nil
	}
	if err := c.Vendor.DeleteRequest(ctx, writeToken, old.ID); err != nil {
		return "", err
	}
	return old.ID, nil
}

// Replaceable reports whether r is a request the customer can no longer
// approve: Rejected, Denied, or timed out (Altinn's timedOut flag, or a
// status Timedout). Altinn sets the flag by age alone, so an accepted
// request gets it too; that one is never replaceable.
func Replaceable(r *altinn.Request) bool {
	switch strings.ToLower(r.Status) {
	case "rejected", "denied", "timedout":
		return true
	case "accepted":
		return false
	}
	return r.TimedOut
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
		if err := checkRequestID(l.ID); err != nil {
			return nil, err
		}
	case l.CustomerOrg != "":
		var err error
		if org, err = orgno.Parse(l.CustomerOrg); err != nil {
			return nil, fieldError("customer_org", "not an organisation number: %v", err)
		}
		if err := checkExternalRef(l.ExternalRef); err != nil {
			return nil, err
		}
	default:
		return nil, fieldError("id", "give id, or customer_org (and external_ref)")
	}
	var (
		r   *altinn.Request
		err error
	)
	if l.ID != "" {
		if r, _, err = b.requestByID(ctx, l); err != nil {
			return nil, err
		}
	} else {
		name := b.clientName(l.Client)
		if err := b.policy.Load().Check(l.Caller, policy.Request{Client: name, CustomerOrg: org, ExternalRef: l.ExternalRef}); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
		}
		c, err := b.systemUserClient(l.Client)
		if err != nil {
			return nil, err
		}
		tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestRead)
		if err != nil {
			return nil, err
		}
		ref := l.ExternalRef
		if ref == "" {
			ref = org
		}
		if r, err = c.Vendor.GetRequestByExternalRef(ctx, tok.AccessToken, l.Agent, c.SystemID, org, ref); err != nil {
			return nil, err
		}
		// Altinn's answer is checked too, in case it is not what was
		// asked for.
		if r.SystemID != c.SystemID {
			return nil, &hiddenError{fmt.Errorf("%w: request of system %q, not of client %q's system", ErrPermissionDenied, r.SystemID, c.Name)}
		}
		if err := b.checkRequestPolicy(l.Caller, c, r); err != nil {
			return nil, err
		}
	}
	if strings.EqualFold(r.Status, "accepted") {
		b.forgetRefusals(b.clientName(l.Client), r.PartyOrgNo)
	}
	return r, nil
}

// checkRequestID checks a request id: Altinn's ids are UUIDs.
func checkRequestID(id string) error {
	if err := checkString("id", id, 64); err != nil {
		return err
	}
	if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
		return fieldError("id", "not a request id (a UUID)")
	}
	return nil
}

// checkRequestPolicy checks the caller against the customer org and
// external reference of a request Altinn returned.
func (b *Broker) checkRequestPolicy(caller string, c *Client, r *altinn.Request) error {
	ref := r.ExternalRef
	if ref == r.PartyOrgNo {
		ref = ""
	}
	if err := b.policy.Load().Check(caller, policy.Request{Client: c.Name, CustomerOrg: r.PartyOrgNo, ExternalRef: ref}); err != nil {
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	return nil
}

// requestByID reads the request l.ID, whose customer is only known from
// Altinn's answer: a caller with no rule for the client is refused before
// the call, and a request of another system of the vendor, or of a
// customer the caller may not see, is ErrNotFound, exactly like a missing
// one (a hiddenError, which still
// wraps the refusal for the audit).
func (b *Broker) requestByID(ctx context.Context, l SystemUserLookup) (*altinn.Request, *Client, error) {
	name := b.clientName(l.Client)
	if pol := b.policy.Load(); !pol.AllowsClient(l.Caller, name) {
		// Check names what is refused: the caller, or the client.
		return nil, nil, fmt.Errorf("%w: %w", ErrPermissionDenied, pol.Check(l.Caller, policy.Request{Client: name}))
	}
	c, err := b.systemUserClient(l.Client)
	if err != nil {
		return nil, nil, err
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestRead)
	if err != nil {
		return nil, nil, err
	}
	r, err := c.Vendor.GetRequest(ctx, tok.AccessToken, l.Agent, l.ID)
	var pe *altinn.ProblemError
	switch {
	case errors.As(err, &pe) && pe.StatusCode == http.StatusNotFound:
		return nil, nil, ErrNotFound
	case err != nil:
		return nil, nil, err
	}
	// Altinn answers by id for every system of the vendor, not only the
	// client's: a request of another client's system is not this
	// client's to read or delete, whatever the policy says of its
	// customer.
	if r.SystemID != c.SystemID {
		return nil, nil, &hiddenError{fmt.Errorf("%w: request of system %q, not of client %q's system", ErrPermissionDenied, r.SystemID, c.Name)}
	}
	if err := b.checkRequestPolicy(l.Caller, c, r); err != nil {
		return nil, nil, &hiddenError{err}
	}
	return r, c, nil
}

// DeleteSystemUserRequest deletes the request l.ID (standard, or agent with
// l.Agent) and returns what it was. The request is read first, with the
// same rules as GetSystemUserRequest by id: Altinn's delete does not check
// who owns the request (RequestSystemUserController.cs
// DeleteRequestByRequestId), the read does.
func (b *Broker) DeleteSystemUserRequest(ctx context.Context, l SystemUserLookup) (*altinn.Request, error) {
	if err := checkString("client", l.Client, MaxClientLen); err != nil {
		return nil, err
	}
	if err := checkRequestID(l.ID); err != nil {
		return nil, err
	}
	r, c, err := b.requestByID(ctx, l)
	if err != nil {
		return nil, err
	}
	tok, err := b.vendorToken(ctx, c, altinn.ScopeRequestWrite)
	if err != nil {
		return nil, err
	}
	if err := c.Vendor.DeleteRequest(ctx, tok.AccessToken, r.ID); err != nil {
		return nil, err
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
	// IsVisible nil means false on create and the registered value on
	// update.
	IsVisible *bool
}

// languages are the language codes Altinn's register takes for a system's
// name and description.
var languages = []string{"nb", "nn", "en"}

// checkTexts checks a name or description map: known languages, text that
// is not blank. required says that at least one language is needed.
func checkTexts(field string, texts map[string]string, limit int, required bool) error {
	if required && len(texts) == 0 {
		return fieldError(field, "required in at least one of nb, nn, en")
	}
	for lang, text := range texts {
		if !slices.Contains(languages, lang) {
			if err := checkString(field, lang, 16); err != nil {
				return err
			}
			return fieldError(field, "language %q: want nb, nn or en", lang)
		}
		if err := checkString(field, text, limit); err != nil {
			return err
		}
		if strings.TrimSpace(text) == "" {
			return fieldError(field, "%s: empty", lang)
		}
	}
	return nil
}

// sameLanguages checks that name and description come in the same
// languages: Altinn shows both in the customer's language.
func sameLanguages(name, description map[string]string) error {
	for lang := range name {
		if _, ok := description[lang]; !ok {
			return fieldError("description", "missing in %s, a language of name", lang)
		}
	}
	for lang := range description {
		if _, ok := name[lang]; !ok {
			return fieldError("name", "missing in %s, a language of description", lang)
		}
	}
	return nil
}

// needInvisible returns the client-relation packages among packages, which
// Altinn refuses on a visible system (AUTH.VLD-00018).
func needInvisible(packages []altinn.AccessPackage) []string {
	var out []string
	for _, p := range packages {
		if slices.Contains(altinn.ClientRelationPackages, p.URN) {
			out = append(out, p.URN)
		}
	}
	return out
}

func checkVisible(visible bool, packages []altinn.AccessPackage) error {
	if bad := needInvisible(packages); visible && len(bad) > 0 {
		return fieldError("access_packages", "%s %s meant for client relations: Altinn takes them only on a system with is_visible false (AUTH.VLD-00018)",
			strings.Join(bad, ", "), map[bool]string{true: "is", false: "are"}[len(bad) == 1])
	}
	return nil
}

// RegisterSystem creates the client's system in Altinn's system register
// with the client's client_id, or with Update changes it, and returns its
// id. Name and description are checked before any call. An update reads
// the registered system, changes only the fields given (an empty list or
// map keeps the registered one), keeps every client id already on it and
// adds this client's, and writes the whole system back, because Altinn's
// update replaces it. Altinn gives no version or ETag to detect a change
// between the read and the write (SystemRegisterController.cs
// UpdateWholeRegisteredSystem), so two concurrent updates can lose one.
func (b *Broker) RegisterSystem(ctx context.Context, r SystemRegistration) (string, error) {
	if err := checkString("client", r.Client, MaxClientLen); err != nil {
		return "", err
	}
	if err := checkTexts("name", r.Name, 256, !r.Update); err != nil {
		return "", err
	}
	if err := checkTexts("description", r.Description, 2048, !r.Update); err != nil {
		return "", err
	}
	if !r.Update || (len(r.Name) > 0 && len(r.Description) > 0) {
		if err := sameLanguages(r.Name, r.Description); err != nil {
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
	if err := checkVisible(r.IsVisible != nil && *r.IsVisible, packages); err != nil {
		return "", err
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
	s := altinn.System{
		ID: c.SystemID, Vendor: altinn.OrgID{Authority: maskinporten.OrgAuthority, ID: maskinporten.OrgPrefix + vendor},
		Name: r.Name, Description: r.Description, Rights: rights, AccessPackages: packages,
		ClientID: []string{cid.ClientID()}, AllowedRedirectURLs: r.RedirectURLs, IsVisible: r.IsVisible != nil && *r.IsVisible,
	}
	if r.Update {
		cur, err := c.Vendor.GetSystem(ctx, tok.AccessToken, c.SystemID)
		if err != nil {
			return "", err
		}
		s = merge(*cur, s, r)
		if err := sameLanguages(s.Name, s.Description); err != nil {
			return "", err
		}
		if err := checkVisible(s.IsVisible, s.AccessPackages); err != nil {
			return "", err
		}
	}
	return c.SystemID, c.Vendor.RegisterSystem(ctx, tok.AccessToken, s, r.Update)
}

// merge returns the registered system cur with the fields r sets taken
// from want, and want's client id added to cur's.
func merge(cur, want altinn.System, r SystemRegistration) altinn.System {
	out := cur
	out.ID, out.Vendor, out.IsDeleted = want.ID, want.Vendor, false
	if len(r.Name) > 0 {
		out.Name = want.Name
	}
	if len(r.Description) > 0 {
		out.Description = want.Description
	}
	if len(r.Rights) > 0 {
		out.Rights = want.Rights
	}
	if len(r.AccessPackages) > 0 {
		out.AccessPackages = want.AccessPackages
	}
	if len(r.RedirectURLs) > 0 {
		out.AllowedRedirectURLs = want.AllowedRedirectURLs
	}
	if r.IsVisible != nil {
		out.IsVisible = *r.IsVisible
	}
	out.ClientID = slices.Clone(cur.ClientID)
	for _, id := range want.ClientID {
		if !slices.Contains(out.ClientID, id) {
			out.ClientID = append(out.ClientID, id)
		}
	}
	return out
}
