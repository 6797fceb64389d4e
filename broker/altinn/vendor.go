package altinn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/redact"
)

// The base URLs of Altinn's authentication API, paired with the
// Maskinporten environments like the exchange URLs.
const (
	TT02BaseURL = "https://platform.tt02.altinn.no/authentication/api/v1"
	ProdBaseURL = "https://platform.altinn.no/authentication/api/v1"
)

// Scopes the vendor needs at Maskinporten for system user requests.
const (
	ScopeRequestWrite = "altinn:authentication/systemuser.request.write"
	ScopeRequestRead  = "altinn:authentication/systemuser.request.read"
)

// BaseURLFor returns the API base URL that pairs with env, or override when
// not empty; an override naming the other environment's host is refused.
func BaseURLFor(env, override string) (string, error) {
	return paired("base_url", env, override, TT02BaseURL, ProdBaseURL)
}

// Right is a right of a standard system user: one resource.
type Right struct {
	// Action is an optional action on the resource (Core/Models/Right.cs);
	// kept so that an update writes back the rights it read.
	Action   string      `json:"action,omitempty"`
	Resource []Attribute `json:"resource"`
}

// Attribute is an id/value pair, as Altinn writes resources.
type Attribute struct {
	ID    string `json:"id"`
	Value string `json:"value"`
}

// AccessPackage names an access package by its URN.
type AccessPackage struct {
	URN string `json:"urn"`
}

// Request is a system user request, with Altinn's JSON names.
type Request struct {
	ID             string          `json:"id,omitempty"`
	ExternalRef    string          `json:"externalRef,omitempty"`
	SystemID       string          `json:"systemId"`
	PartyOrgNo     string          `json:"partyOrgNo"`
	Rights         []Right         `json:"rights,omitempty"`
	AccessPackages []AccessPackage `json:"accessPackages,omitempty"`
	Status         string          `json:"status,omitempty"`
	RedirectURL    string          `json:"redirectUrl,omitempty"`
	ConfirmURL     string          `json:"confirmUrl,omitempty"`
	Created        time.Time       `json:"created,omitzero"`
	// TimedOut is Altinn's flag for a request older than 180 days; its
	// Status stays New. Altinn's model (RequestSystemResponse.cs) gives
	// the property no JSON name, so ASP.NET writes it camelCase; Go's
	// decoder matches it whatever its case.
	TimedOut bool `json:"timedOut,omitempty"`
}

// ProblemError is an error answer of Altinn's API (RFC 7807), with the
// AUTH-000nn / AUTH.VLD-000nn code when one is found in it.
type ProblemError struct {
	StatusCode int
	Code       string
	Detail     string
}

func (e *ProblemError) Error() string {
	s := fmt.Sprintf("altinn: HTTP %d", e.StatusCode)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

var authCodeRE = regexp.MustCompile(`AUTH(\.VLD)?-\d{5}`)

// Vendor calls Altinn's system user request API with the vendor's Altinn
// token.
type Vendor struct {
	base string
	// origin is the base's scheme and host, basePath its path: page
	// references are paths under basePath, always requested at origin.
	origin, basePath string
	http             *http.Client
}

// NewVendor returns a client for the API at base; a nil client means one
// with a 30 s timeout.
func NewVendor(base string, client *http.Client) *Vendor {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	v := &Vendor{base: strings.TrimSuffix(base, "/"), http: client}
	v.origin = v.base
	if u, err := url.Parse(v.base); err == nil && u.Host != "" {
		v.origin, v.basePath = u.Scheme+"://"+u.Host, u.Path
	}
	return v
}

func requestPath(agent bool) string {
	if agent {
		return "/systemuser/request/vendor/agent"
	}
	return "/systemuser/request/vendor"
}

// CreateRequest posts r. existing is true when Altinn answered with a
// pending request it already had for the same system, party and external
// reference (200 instead of 201).
//
// Altinn answers 200 with the request it has for the same system, party and
// external reference whatever its status, Rejected and Denied included
// (RequestSystemUserController.cs CreateRequest); see DeleteRequest.
func (v *Vendor) CreateRequest(ctx context.Context, token string, agent bool, r Request) (out *Request, existing bool, err error) {
	body, _ := json.Marshal(r)
	status, err := v.do(ctx, token, http.MethodPost, requestPath(agent), body, &out)
	return out, status == http.StatusOK, err
}

// DeleteRequest deletes the request id. Altinn serves standard and agent
// requests on one route and answers 202 with no body
// (RequestSystemUserController.cs DeleteRequestByRequestId). It does not
// check that the request belongs to the vendor: read it first.
func (v *Vendor) DeleteRequest(ctx context.Context, token, id string) error {
	_, err := v.do(ctx, token, http.MethodDelete, requestPath(false)+"/"+url.PathEscape(id), nil, nil)
	return err
}

// GetRequest reads a request by id.
func (v *Vendor) GetRequest(ctx context.Context, token string, agent bool, id string) (*Request, error) {
	var out *Request
	_, err := v.do(ctx, token, http.MethodGet, requestPath(agent)+"/"+url.PathEscape(id), nil, &out)
	return out, err
}

// GetRequestByExternalRef reads the request of a system, party and external
// reference.
func (v *Vendor) GetRequestByExternalRef(ctx context.Context, token string, agent bool, systemID, org, ref string) (*Request, error) {
	var out *Request
	p := requestPath(agent) + "/byexternalref/" + url.PathEscape(systemID) + "/" + url.PathEscape(org) + "/" + url.PathEscape(ref)
	_, err := v.do(ctx, token, http.MethodGet, p, nil, &out)
	return out, err
}

const maxVendorAnswer = 1 << 20

// maxDetail bounds the text of Altinn's answer kept in an error.
const maxDetail = 300

func (v *Vendor) do(ctx context.Context, token, method, path string, body []byte, out any) (int, error) {
	return v.doURL(ctx, token, method, v.base+path, body, out)
}

func (v *Vendor) doURL(ctx context.Context, token, method, target string, body []byte, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, fmt.Errorf("altinn: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := v.http.Do(req)
	if err != nil {
		return 0, &ProblemError{Detail: "Altinn could not be reached: " + redact.Cut(strings.ReplaceAll(err.Error(), token, redact.Mark), maxDetail)}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxVendorAnswer))
	if out == nil && (resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusOK) {
		return resp.StatusCode, nil
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		pe := &ProblemError{StatusCode: resp.StatusCode, Code: authCodeRE.FindString(string(data))}
		var p struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		if json.Unmarshal(data, &p) == nil {
			pe.Detail = p.Detail
			if pe.Detail == "" {
				pe.Detail = p.Title
			}
		}
		// Cleaned before it is cut: an answer that echoes the vendor's
		// token must not leave a piece of it in the error.
		pe.Detail = redact.Cut(strings.ReplaceAll(pe.Detail, token, redact.Mark), maxDetail)
		return resp.StatusCode, pe
	}
	if err := json.Unmarshal(data, out); err != nil {
		return resp.StatusCode, &ProblemError{StatusCode: resp.StatusCode, Detail: "malformed answer"}
	}
	return resp.StatusCode, nil
}

// ScopeSystemRegisterWrite is the scope the vendor needs for the system
// register and its system users.
const ScopeSystemRegisterWrite = "altinn:authentication/systemregister.write"

// SystemUser is a system user of a vendor's system, as Altinn lists it.
type SystemUser struct {
	ID               string    `json:"id"`
	IntegrationTitle string    `json:"integrationTitle"`
	SystemID         string    `json:"systemId"`
	ReporteeOrgNo    string    `json:"reporteeOrgNo"`
	Created          time.Time `json:"created"`
	IsDeleted        bool      `json:"isDeleted"`
	ExternalRef      string    `json:"externalRef"`
	UserType         string    `json:"userType"`
}

// page is Altinn's paged list shape.
type page[T any] struct {
	Links struct {
		Next *string `json:"next"`
	} `json:"links"`
	Data []T `json:"data"`
}

// ListRequests returns one page of the system's requests and the
// reference of the next page ("" on the last). pageRef "" starts at the
// first page; other values must be references this client returned.
func (v *Vendor) ListRequests(ctx context.Context, token string, agent bool, systemID, pageRef string) ([]Request, string, error) {
	var p page[Request]
	nextRef, err := v.list(ctx, token, requestPath(agent)+"/bysystem/", systemID, pageRef, &p)
	return p.Data, nextRef, err
}

// ListSystemUsers returns one page of the system's system users, like
// ListRequests.
func (v *Vendor) ListSystemUsers(ctx context.Context, token, systemID, pageRef string) ([]SystemUser, string, error) {
	var p page[SystemUser]
	nextRef, err := v.list(ctx, token, "/systemuser/vendor/bysystem/", systemID, pageRef, &p)
	return p.Data, nextRef, err
}

// list reads one page of the list at prefix+systemID and checks Altinn's
// next link.
func (v *Vendor) list(ctx context.Context, token, prefix, systemID, pageRef string, p interface{ next() *string }) (string, error) {
	want := v.basePath + prefix + systemID
	target := v.basePath + prefix + url.PathEscape(systemID)
	if pageRef != "" {
		ref, err := PageRef(want, pageRef)
		if err != nil {
			return "", &ProblemError{StatusCode: http.StatusBadRequest, Detail: "page_token: " + err.Error()}
		}
		target = ref
	}
	if _, err := v.doURL(ctx, token, http.MethodGet, v.origin+target, nil, p); err != nil {
		return "", err
	}
	n := p.next()
	if n == nil || *n == "" {
		return "", nil
	}
	ref, err := PageRef(want, *n)
	if err != nil {
		// Altinn's answer is not forwarded: the link is not the next page
		// of this list.
		return "", &ProblemError{StatusCode: http.StatusBadGateway, Detail: "Altinn's links.next is not a page of this list: " + err.Error()}
	}
	return ref, nil
}

func (p *page[T]) next() *string { return p.Links.Next }

// PageRef checks a link to a page of the list whose (unescaped) path is
// listPath and returns the reference to request: the list's path, escaped,
// and the link's query. The link is parsed, never compared as a string; its
// scheme and host are ignored (Altinn builds links.next with the host its
// gateway forwarded, which need not be the base URL the broker calls, so
// that host is neither trusted nor contacted). Refused: userinfo, a path
// other than listPath, dot segments, percent-encoded dots, slashes and
// backslashes, and a malformed query.
func PageRef(listPath, link string) (string, error) {
	if len(link) > 2048 {
		return "", errors.New("link too long")
	}
	u, err := url.Parse(link)
	switch {
	case err != nil:
		return "", errors.New("not a URL")
	case u.User != nil:
		return "", errors.New("link with userinfo")
	case u.Opaque != "", u.Scheme != "" && u.Scheme != "https" && u.Scheme != "http":
		return "", errors.New("not an http(s) link")
	}
	escaped := strings.ToLower(u.EscapedPath())
	for _, enc := range []string{"%2e", "%2f", "%5c"} {
		if strings.Contains(escaped, enc) {
			return "", errors.New("percent-encoded dot, slash or backslash in the path")
		}
	}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == "." || seg == ".." {
			return "", errors.New("dot segment in the path")
		}
	}
	if strings.Contains(u.Path, "\\") || path.Clean(u.Path) != u.Path {
		return "", errors.New("path not in normal form")
	}
	if u.Path != listPath {
		return "", errors.New("link to another list or system")
	}
	if _, err := url.ParseQuery(u.RawQuery); err != nil {
		return "", errors.New("malformed query")
	}
	ref := (&url.URL{Path: listPath}).EscapedPath()
	if u.RawQuery != "" {
		ref += "?" + u.RawQuery
	}
	return ref, nil
}

// System is a system in Altinn's system register, as the vendor registers
// it.
type System struct {
	ID                  string            `json:"id"`
	Vendor              OrgID             `json:"vendor"`
	Name                map[string]string `json:"name"`
	Description         map[string]string `json:"description"`
	Rights              []Right           `json:"rights,omitempty"`
	AccessPackages      []AccessPackage   `json:"accessPackages,omitempty"`
	ClientID            []string          `json:"clientId"`
	AllowedRedirectURLs []string          `json:"allowedRedirectUrls,omitempty"`
	// IsVisible is always sent: Altinn's default is true
	// (RegisterSystemRequest.cs), which it refuses for client-relation
	// packages.
	IsVisible bool `json:"isVisible"`
	// IsDeleted is set on a system Altinn has deleted (read only).
	IsDeleted bool `json:"isDeleted,omitempty"`
}

// ClientRelationPackages are the access packages meant for client
// relations (accountants, auditors, property managers), which Altinn's
// package register marks isAssignable false. Altinn refuses them on a
// system registered with isVisible true (AUTH.VLD-00018,
// SystemRegisterController.cs ValidateAccessPackages); agent system users
// use them. Source: Altinn/altinn-authentication
// test/Altinn.Platform.Authentication.Tests/Data/Packages/packages.json.
var ClientRelationPackages = []string{
	"urn:altinn:accesspackage:ansvarlig-revisor",
	"urn:altinn:accesspackage:eksplisitt",
	"urn:altinn:accesspackage:forretningsforer-eiendom",
	"urn:altinn:accesspackage:regnskapsforer-lonn",
	"urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet",
	"urn:altinn:accesspackage:regnskapsforer-uten-signeringsrettighet",
	"urn:altinn:accesspackage:revisormedarbeider",
}

// GetSystem reads the vendor's system id from the register.
func (v *Vendor) GetSystem(ctx context.Context, token, id string) (*System, error) {
	var out *System
	_, err := v.do(ctx, token, http.MethodGet, "/systemregister/vendor/"+url.PathEscape(id), nil, &out)
	if err == nil && out == nil {
		err = &ProblemError{StatusCode: http.StatusBadGateway, Detail: "malformed answer"}
	}
	return out, err
}

// OrgID is an ISO 6523 organisation identifier as Altinn writes it.
type OrgID struct {
	Authority string `json:"authority"`
	ID        string `json:"ID"`
}

// RegisterSystem creates s in the system register, or with update replaces
// it whole: every field Altinn keeps is overwritten by s (PUT "replaces the
// entire registered system", SystemRegisterController.cs), client ids
// included.
func (v *Vendor) RegisterSystem(ctx context.Context, token string, s System, update bool) error {
	body, _ := json.Marshal(s)
	var ignored json.RawMessage
	if update {
		_, err := v.do(ctx, token, http.MethodPut, "/systemregister/vendor/"+url.PathEscape(s.ID), body, &ignored)
		return err
	}
	_, err := v.do(ctx, token, http.MethodPost, "/systemregister/vendor", body, &ignored)
	return err
}
