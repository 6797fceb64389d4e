package maskinportentest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/orgno"
)

// The emulator follows Altinn's Authentication server, GitHub
// Altinn/altinn-authentication (read at commit ad4f6f3); each rule below
// names the file it comes from, as AUTHN:<path under src/>.

// The Altinn vendor API the emulator serves, under the same base as the
// exchange (…/authentication/api/v1/).
const (
	systemUsersPath  = "/authentication/api/v1/systemuser/vendor/bysystem/"
	registerPath     = "/authentication/api/v1/systemregister/vendor"
	requestPath      = "/authentication/api/v1/systemuser/request/vendor"
	agentRequestPath = "/authentication/api/v1/systemuser/request/vendor/agent"
	confirmPath      = "/accessmanagement/ui/systemuser/request"
)

// DefaultRequestTimeout is the age after which Altinn flags a request
// timedOut (REQUEST_TIMEOUT_DAYS, AUTHN:Persistance/RepositoryImplementations/RequestRepository.cs).
const DefaultRequestTimeout = 180 * 24 * time.Hour

// System is a vendor's system in the emulated system register.
type System struct {
	ID     string
	Vendor string // organisation number
	// ClientID is the Maskinporten client of the system; ClientIDs are
	// more.
	ClientID  string
	ClientIDs []string
	// Rights are resource ids, AccessPackages URNs, RedirectURLs the
	// allowed redirect URLs. Requests may ask only for these.
	Rights, AccessPackages, RedirectURLs []string
	Name, Description                    map[string]string
	IsVisible                            bool
}

// Access packages that Altinn's package register marks isAssignable false
// (meant for client relations; only agent system users can have them) and
// isDelegable false. Source: Altinn/altinn-authentication
// test/Altinn.Platform.Authentication.Tests/Data/Packages/packages.json.
var (
	nonAssignablePackages = []string{
		"urn:altinn:accesspackage:ansvarlig-revisor",
		"urn:altinn:accesspackage:eksplisitt",
		"urn:altinn:accesspackage:forretningsforer-eiendom",
		"urn:altinn:accesspackage:regnskapsforer-lonn",
		"urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet",
		"urn:altinn:accesspackage:regnskapsforer-uten-signeringsrettighet",
		"urn:altinn:accesspackage:revisormedarbeider",
	}
	nonDelegablePackages = []string{"urn:altinn:accesspackage:eksplisitt"}
)

// registered is a system as the emulator stores and answers it, with
// Altinn's JSON names (AUTHN:Core/Models/SystemRegisters/RegisteredSystemResponse.cs).
type registered struct {
	ID                  string            `json:"id"`
	Vendor              orgID             `json:"vendor"`
	Name                map[string]string `json:"name"`
	Description         map[string]string `json:"description"`
	Rights              []right           `json:"rights"`
	AccessPackages      []accessPackage   `json:"accessPackages"`
	ClientID            []string          `json:"clientId"`
	AllowedRedirectURLs []string          `json:"allowedRedirectUrls"`
	IsVisible           bool              `json:"isVisible"`
	IsDeleted           bool              `json:"isDeleted"`
}

type orgID struct {
	Authority string `json:"authority"`
	ID        string `json:"ID"`
}

type right struct {
	Action   string      `json:"action,omitempty"`
	Resource []attribute `json:"resource"`
}

type attribute struct {
	ID    string `json:"id"`
	Value string `json:"value"`
}

type accessPackage struct {
	URN string `json:"urn"`
}

func (s *registered) vendor() string { return strings.TrimPrefix(s.Vendor.ID, "0192:") }

// systemUserRequest is a request as the emulator stores and answers it,
// with Altinn's JSON names (AUTHN:Core/Models/SystemUsers/RequestSystemResponse.cs).
// TimedOut has no JSON name there, so ASP.NET's default camelCase applies.
type systemUserRequest struct {
	ID             string          `json:"id"`
	ExternalRef    string          `json:"externalRef"`
	SystemID       string          `json:"systemId"`
	PartyOrgNo     string          `json:"partyOrgNo"`
	Rights         []right         `json:"rights,omitempty"`
	AccessPackages []accessPackage `json:"accessPackages,omitempty"`
	Status         string          `json:"status"`
	RedirectURL    string          `json:"redirectUrl,omitempty"`
	ConfirmURL     string          `json:"confirmUrl"`
	Created        time.Time       `json:"created"`
	TimedOut       bool            `json:"timedOut"`
	agent          bool
}

// AddSystem registers s in the emulated system register.
func (e *Emulator) AddSystem(s System) {
	r := &registered{ID: s.ID, Vendor: orgID{"iso6523-actorid-upis", "0192:" + s.Vendor}, Name: s.Name, Description: s.Description,
		AllowedRedirectURLs: s.RedirectURLs, IsVisible: s.IsVisible}
	if s.ClientID != "" {
		r.ClientID = append(r.ClientID, s.ClientID)
	}
	r.ClientID = append(r.ClientID, s.ClientIDs...)
	for _, id := range s.Rights {
		r.Rights = append(r.Rights, right{Resource: []attribute{{ID: "urn:altinn:resource", Value: id}}})
	}
	for _, p := range s.AccessPackages {
		r.AccessPackages = append(r.AccessPackages, accessPackage{URN: p})
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.initAltinn()
	e.systems[s.ID] = r
}

// RegisteredSystem returns the system id as the register holds it.
func (e *Emulator) RegisteredSystem(id string) (System, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.systems[id]
	if !ok {
		return System{}, false
	}
	s := System{ID: r.ID, Vendor: r.vendor(), ClientIDs: slices.Clone(r.ClientID), RedirectURLs: slices.Clone(r.AllowedRedirectURLs),
		Name: r.Name, Description: r.Description, IsVisible: r.IsVisible}
	for _, x := range r.Rights {
		for _, a := range x.Resource {
			s.Rights = append(s.Rights, a.Value)
		}
	}
	for _, p := range r.AccessPackages {
		s.AccessPackages = append(s.AccessPackages, p.URN)
	}
	return s, true
}

// AddOrganisations adds organisations to the emulated business register.
// Altinn refuses a request for a customer it cannot find there
// (AUTH-00000, AUTHN:Authentication/Services/RequestSystemUserService.cs
// ValidateCustomerOrgNo); in TT02 the register is Tenor's test data.
func (e *Emulator) AddOrganisations(orgs ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.initAltinn()
	for _, o := range orgs {
		e.organisations[o] = true
	}
}

// SetRequestTimeout sets the age after which requests are flagged timedOut
// (DefaultRequestTimeout unless set).
func (e *Emulator) SetRequestTimeout(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requestTimeout = d
}

// Backdate moves the creation of request id back by d, as if it had been
// made that much earlier.
func (e *Emulator) Backdate(id string, d time.Duration) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.suRequests[id]
	if !ok {
		return fmt.Errorf("no request %s", id)
	}
	r.Created = r.Created.Add(-d)
	return nil
}

func (e *Emulator) initAltinn() {
	if e.systems == nil {
		e.systems = map[string]*registered{}
		e.suRequests = map[string]*systemUserRequest{}
		e.organisations = map[string]bool{}
	}
}

// Decide approves (or, with approve false, rejects) the pending request
// id, as the customer would at its confirm URL. Approval creates the system
// user for every client of the system, so that grants for the customer and
// external reference succeed.
func (e *Emulator) Decide(id string, approve bool) error {
	e.mu.Lock()
	r, ok := e.suRequests[id]
	if !ok {
		e.mu.Unlock()
		return fmt.Errorf("no request %s", id)
	}
	if r.Status != "New" || e.timedOut(r) {
		e.mu.Unlock()
		return fmt.Errorf("request %s is %s (timed out: %v), not New", id, r.Status, e.timedOut(r))
	}
	var clients []string
	if sys := e.systems[r.SystemID]; sys != nil {
		clients = slices.Clone(sys.ClientID)
	}
	if approve {
		r.Status = "Accepted"
	} else {
		r.Status = "Rejected"
	}
	org, ref, agent := r.PartyOrgNo, r.ExternalRef, r.agent
	e.mu.Unlock()
	if approve {
		suID := r.ID // Altinn reuses the request id as the system user id
		e.mu.Lock()
		for _, c := range clients {
			e.systemUsers[systemUserKey{c, org, ref}] = suID
		}
		if agent {
			if e.agentUsers == nil {
				e.agentUsers = map[string]bool{}
			}
			e.agentUsers[suID] = true
		}
		e.mu.Unlock()
	}
	return nil
}

// timedOut reports whether r is older than the request timeout; e.mu is
// held.
func (e *Emulator) timedOut(r *systemUserRequest) bool {
	d := e.requestTimeout
	if d == 0 {
		d = DefaultRequestTimeout
	}
	return r.Created.Before(e.now().Add(-d))
}

// answer is r as Altinn answers it: the timedOut flag is computed when the
// request is read, and status stays as stored (AUTHN:Persistance/RepositoryImplementations/RequestRepository.cs
// ConvertFromReaderToRequest); e.mu is held.
func (e *Emulator) answer(r *systemUserRequest) systemUserRequest {
	out := *r
	out.TimedOut = e.timedOut(r)
	return out
}

// problem writes an RFC 7807 answer carrying an Altinn error code.
func problem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": detail, "status": status, "code": code, "detail": detail})
}

// vendorOrg checks the Altinn token of a vendor call and returns the
// vendor's organisation number.
func (e *Emulator) vendorOrg(r *http.Request) (string, bool) {
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return "", false
	}
	key := jws.WithKey(jwa.RS256, &e.signingKey.PublicKey)
	if e.hmacKey != nil {
		key = jws.WithKey(jwa.HS256, e.hmacKey)
	}
	payload, err := jws.Verify([]byte(bearer), key)
	var c map[string]any
	if err != nil || json.Unmarshal(payload, &c) != nil {
		return "", false
	}
	exp, _ := c["exp"].(float64)
	org, _ := c["urn:altinn:orgNumber"].(string)
	if c["iss"] != strings.TrimSuffix(e.Issuer(), "/")+"/altinn" || org == "" || !time.Unix(int64(exp), 0).After(e.now()) {
		return "", false
	}
	return org, true
}

// listPageSize is small, so that tests page.
const listPageSize = 2

// GatewayHost is the host the emulator writes into links.next. Altinn
// builds the link with Url.Link behind UseForwardedHeaders
// (AUTHN:Authentication/Program.cs, AUTHN:Authentication/Controllers/RequestSystemUserController.cs
// GetAllRequestsForVendor, AUTHN:Authentication/Controllers/SystemUserController.cs),
// so its host is the one Altinn's gateway forwarded, not necessarily the
// base URL a client calls. The emulator uses a host that serves nothing,
// so that a client that follows the link's host fails.
const GatewayHost = "altinn-gateway.invalid"

// writePage answers one page of list, starting at ?token=N, with Altinn's
// links.next as an absolute URL on GatewayHost.
func writePage[T any](w http.ResponseWriter, r *http.Request, list []T) {
	start, _ := strconv.Atoi(r.URL.Query().Get("token"))
	start = min(max(start, 0), len(list))
	end := min(start+listPageSize, len(list))
	out := map[string]any{"data": list[start:end], "links": map[string]any{"next": nil}}
	if end < len(list) {
		out["links"] = map[string]any{"next": fmt.Sprintf("https://%s%s?token=%d", GatewayHost, r.URL.EscapedPath(), end)}
	}
	writeJSON(w, http.StatusOK, out)
}

// serveVendor answers the vendor API (system user requests, system users,
// system register); it reports whether the path was one of it.
func (e *Emulator) serveVendor(w http.ResponseWriter, r *http.Request) bool {
	p := r.URL.Path
	if p == confirmPath || p == "/accessmanagement/ui/systemuser/agentrequest" {
		e.serveConfirm(w, r)
		return true
	}
	if strings.HasPrefix(p, systemUsersPath) || strings.HasPrefix(p, registerPath) {
		vendor, ok := e.vendorOrg(r)
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		if strings.HasPrefix(p, systemUsersPath) {
			e.listSystemUsers(w, r, vendor, strings.TrimPrefix(p, systemUsersPath))
		} else {
			e.register(w, r, vendor, strings.Trim(strings.TrimPrefix(p, registerPath), "/"))
		}
		return true
	}
	agent := strings.HasPrefix(p, agentRequestPath)
	base := requestPath
	if agent {
		base = agentRequestPath
	}
	if !strings.HasPrefix(p, requestPath) {
		return false
	}
	vendor, ok := e.vendorOrg(r)
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		return true
	}
	rest := strings.Trim(strings.TrimPrefix(p, base), "/")
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "bysystem/"):
		sysID := strings.TrimPrefix(rest, "bysystem/")
		e.mu.Lock()
		var list []systemUserRequest
		for _, q := range e.suRequests {
			if sys := e.systems[q.SystemID]; q.SystemID == sysID && q.agent == agent && sys != nil && sys.vendor() == vendor {
				list = append(list, e.answer(q))
			}
		}
		e.mu.Unlock()
		slices.SortFunc(list, func(a, b systemUserRequest) int {
			return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.ID, b.ID))
		})
		writePage(w, r, list)
	case r.Method == http.MethodPost && rest == "":
		e.createRequest(w, r, vendor, agent)
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "byexternalref/"):
		parts := strings.Split(strings.TrimPrefix(rest, "byexternalref/"), "/")
		if len(parts) != 3 {
			problem(w, 400, "AUTH-00010", "want byexternalref/{systemId}/{orgNo}/{externalRef}")
			return true
		}
		e.answerRequest(w, vendor, agent, func(q *systemUserRequest) bool {
			return q.SystemID == parts[0] && q.PartyOrgNo == parts[1] && q.ExternalRef == parts[2]
		})
	case r.Method == http.MethodGet && rest != "" && !strings.Contains(rest, "/"):
		if _, err := uuid.Parse(rest); err != nil {
			problem(w, 400, "AUTH-00010", "request id is not a GUID")
			return true
		}
		e.answerRequest(w, vendor, agent, func(q *systemUserRequest) bool { return q.ID == rest })
	case r.Method == http.MethodDelete && !agent && rest != "" && !strings.Contains(rest, "/"):
		e.deleteRequest(w, rest)
	default:
		problem(w, 404, "AUTH-00010", "not found")
	}
	return true
}

// deleteRequest deletes a standard or agent request by id: one route for
// both, 202 with no body, and no check of the vendor
// (AUTHN:Authentication/Controllers/RequestSystemUserController.cs
// DeleteRequestByRequestId, AUTHN:Authentication/Services/RequestSystemUserService.cs
// DeleteRequestByRequestId).
func (e *Emulator) deleteRequest(w http.ResponseWriter, id string) {
	if _, err := uuid.Parse(id); err != nil {
		problem(w, 400, "", "request id is not a GUID")
		return
	}
	e.mu.Lock()
	_, ok := e.suRequests[id]
	delete(e.suRequests, id)
	e.mu.Unlock()
	if !ok {
		problem(w, 404, "AUTH-00010", "The Id does not refer to a Request in our system.")
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (e *Emulator) answerRequest(w http.ResponseWriter, vendor string, agent bool, match func(*systemUserRequest) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, q := range e.suRequests {
		if sys := e.systems[q.SystemID]; match(q) && q.agent == agent && sys != nil && sys.vendor() == vendor {
			writeJSON(w, http.StatusOK, e.answer(q))
			return
		}
	}
	problem(w, 404, "AUTH-00010", "The Id does not refer to a Request in our system.")
}

// trimRequest trims the strings of a request body, as Altinn's
// TrimStringsActionFilter does before the controller sees it
// (AUTHN:Authentication/Filters/TrimStringsActionFilter.cs, applied to
// CreateRequest and CreateAgentRequest).
func trimRequest(in *systemUserRequest) {
	for _, s := range []*string{&in.ExternalRef, &in.SystemID, &in.PartyOrgNo, &in.RedirectURL} {
		*s = strings.TrimSpace(*s)
	}
	for i := range in.Rights {
		for j := range in.Rights[i].Resource {
			a := &in.Rights[i].Resource[j]
			a.ID, a.Value = strings.TrimSpace(a.ID), strings.TrimSpace(a.Value)
		}
	}
	for i := range in.AccessPackages {
		in.AccessPackages[i].URN = strings.TrimSpace(in.AccessPackages[i].URN)
	}
}

// createRequest follows AUTHN:Authentication/Controllers/RequestSystemUserController.cs
// (CreateRequest, CreateAgentRequest) and the checks of
// AUTHN:Authentication/Services/RequestSystemUserService.cs in their order.
func (e *Emulator) createRequest(w http.ResponseWriter, r *http.Request, vendor string, agent bool) {
	var in systemUserRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil {
		problem(w, 400, "", "malformed body")
		return
	}
	trimRequest(&in)
	if agent {
		in.Rights = nil // CreateAgentRequestSystemUser has no rights
	}
	if in.ExternalRef == "" {
		in.ExternalRef = in.PartyOrgNo
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.initAltinn()
	sys := e.systems[in.SystemID]
	// A system user for the triple already exists: AUTH-00004.
	if sys != nil {
		for _, c := range sys.ClientID {
			if _, ok := e.systemUsers[systemUserKey{c, in.PartyOrgNo, in.ExternalRef}]; ok {
				problem(w, 400, "AUTH-00004", "Failed to create new SystemUser, existing SystemUser tied to the given System-Id.")
				return
			}
		}
	}
	// A request for the triple exists: it is returned with 200 whatever its
	// status, unless its status is Timedout, which nothing writes (the
	// timedOut flag does not count).
	for _, q := range e.suRequests {
		if q.SystemID == in.SystemID && q.PartyOrgNo == in.PartyOrgNo && q.ExternalRef == in.ExternalRef && q.agent == agent &&
			sys != nil && sys.vendor() == vendor && q.Status != "Timedout" {
			writeJSON(w, http.StatusOK, e.answer(q))
			return
		}
	}
	switch {
	case sys == nil || sys.vendor() != vendor:
		// ValidateVendorOrgNo answers SystemIdNotFound for another
		// vendor's system too.
		problem(w, 404, "AUTH-00011", "The Id does not refer to a Registered System.")
		return
	case !orgno.Valid(in.PartyOrgNo) || !e.organisations[in.PartyOrgNo]:
		problem(w, 400, "AUTH-00000", "Can't resolve the Organisation Number from the logged in Reportee PartyId.")
		return
	}
	if in.RedirectURL != "" {
		// AUTHN:Authentication/Helpers/AuthenticationHelper.cs ValidateRedirectUrl
		if len(sys.AllowedRedirectURLs) == 0 {
			problem(w, 400, "AUTH-00026", "No redirect uris are set for the system")
			return
		}
		if !slices.ContainsFunc(sys.AllowedRedirectURLs, func(u string) bool { return leftPartPath(u) == leftPartPath(in.RedirectURL) }) {
			problem(w, 400, "AUTH-00021", "The RedirectUri was not found or not valid.")
			return
		}
	}
	if code, msg := e.checkAsked(sys, &in, agent); code != "" {
		problem(w, 400, code, msg)
		return
	}
	in.ID, in.Status, in.Created, in.agent = uuid.NewString(), "New", e.now().UTC(), agent
	base := strings.TrimSuffix(e.issuer, "/")
	in.ConfirmURL = base + confirmPath + "?id=" + in.ID
	if agent {
		in.ConfirmURL = base + "/accessmanagement/ui/systemuser/agentrequest?id=" + in.ID
	}
	e.suRequests[in.ID] = &in
	w.Header().Set("Location", base+"/authentication/api/v1/systemuser/request/"+in.ID)
	writeJSON(w, http.StatusCreated, e.answer(&in))
}

// checkAsked checks the rights and packages a request asks for against the
// system's (AUTHN:Authentication/Services/SystemUserService.cs ValidateRights
// and ValidateAccessPackages): a subset of the system's, packages
// assignable for a standard request and delegable for an agent request.
func (e *Emulator) checkAsked(sys *registered, in *systemUserRequest, agent bool) (code, msg string) {
	switch {
	case agent && len(in.AccessPackages) == 0:
		return "AUTH-00058", "No AccessPackages found, an Agent SystemUser must have at least one"
	case !agent && len(in.Rights) == 0 && len(in.AccessPackages) == 0:
		return "AUTH-00059", "No AccessPackages or Single Rights found, a SystemUser must have at least one"
	}
	for _, want := range in.Rights {
		if !slices.ContainsFunc(sys.Rights, func(have right) bool { return slices.Equal(have.Resource, want.Resource) }) {
			return "AUTH-00001", "One or more Right not found or not delegable."
		}
	}
	for _, p := range in.AccessPackages {
		switch {
		case !slices.Contains(sys.AccessPackages, p):
			return "AUTH-00063", "One or more accesspackage is not found in the referenced system in the System Register."
		case agent && slices.Contains(nonDelegablePackages, p.URN):
			return "AUTH-00065", "One or more access packages cannot be delegated because they are not intended for client relationships"
		case !agent && slices.Contains(nonAssignablePackages, p.URN):
			return "AUTH-00064", "One or more access packages cannot be delegated. Either they are intended for clients or they cannot be delegated further."
		}
	}
	return "", ""
}

// leftPartPath is .NET's Uri.GetLeftPart(UriPartial.Path): scheme, host,
// port and path, without query and fragment.
func leftPartPath(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	u.RawQuery, u.Fragment, u.RawFragment = "", "", ""
	return strings.ToLower(u.Scheme+"://"+u.Host) + u.EscapedPath()
}

// serveConfirm is the customer's side: GET shows the request; with
// action=approve or action=reject it decides it.
func (e *Emulator) serveConfirm(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	switch r.URL.Query().Get("action") {
	case "approve", "reject":
		if err := e.Decide(id, r.URL.Query().Get("action") == "approve"); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	e.mu.Lock()
	q, ok := e.suRequests[id]
	var a systemUserRequest
	if ok {
		a = e.answer(q)
	}
	e.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "system user request %s\nsystem %s, customer %s, external ref %s: %s (timed out: %v)\napprove: %s&action=approve\nreject:  %s&action=reject\n",
		a.ID, a.SystemID, a.PartyOrgNo, a.ExternalRef, a.Status, a.TimedOut, a.ConfirmURL, a.ConfirmURL)
}

// systemUser is a system user as the emulator lists it.
type systemUser struct {
	ID            string    `json:"id"`
	SystemID      string    `json:"systemId"`
	ReporteeOrgNo string    `json:"reporteeOrgNo"`
	ExternalRef   string    `json:"externalRef"`
	UserType      string    `json:"userType"`
	Created       time.Time `json:"created"`
	IsDeleted     bool      `json:"isDeleted"`
}

func (e *Emulator) listSystemUsers(w http.ResponseWriter, r *http.Request, vendor, sysID string) {
	e.mu.Lock()
	sys, ok := e.systems[sysID]
	var list []systemUser
	seen := map[string]bool{}
	if ok && sys.vendor() == vendor {
		for k, id := range e.systemUsers {
			if slices.Contains(sys.ClientID, k.clientID) && !seen[id] {
				seen[id] = true
				typ := "standard"
				if e.agentUsers[id] {
					typ = "agent"
				}
				list = append(list, systemUser{ID: id, SystemID: sysID, ReporteeOrgNo: k.org, ExternalRef: k.externalRef, UserType: typ, Created: e.now().UTC()})
			}
		}
	}
	e.mu.Unlock()
	if !ok || sys.vendor() != vendor {
		problem(w, 404, "AUTH-00011", "The Id does not refer to a Registered System.")
		return
	}
	slices.SortFunc(list, func(a, b systemUser) int {
		return strings.Compare(a.ReporteeOrgNo+a.ExternalRef, b.ReporteeOrgNo+b.ExternalRef)
	})
	writePage(w, r, list)
}

// register reads (GET /{id}), creates (POST) or replaces (PUT /{id}) a
// system, following AUTHN:Authentication/Controllers/SystemRegisterController.cs.
func (e *Emulator) register(w http.ResponseWriter, r *http.Request, vendor, id string) {
	if r.Method == http.MethodGet && id != "" {
		e.mu.Lock()
		defer e.mu.Unlock()
		s, ok := e.systems[id]
		switch {
		case !ok:
			w.WriteHeader(http.StatusNotFound)
		case s.vendor() != vendor:
			w.WriteHeader(http.StatusForbidden)
		default:
			writeJSON(w, http.StatusOK, s)
		}
		return
	}
	if (r.Method != http.MethodPost || id != "") && (r.Method != http.MethodPut || id == "") {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&raw); err != nil {
		problem(w, 400, "", "malformed body")
		return
	}
	// name and description are C# required members of
	// RegisterSystemRequest (AUTHN:Core/Models/SystemRegisters/RegisterSystemRequest.cs):
	// a body without them fails model binding (400). One with null passes
	// binding and fails when the system is stored, as a server error.
	for _, f := range []string{"id", "vendor", "name", "description"} {
		if _, ok := raw[f]; !ok {
			writeJSON(w, http.StatusBadRequest, map[string]any{"title": "One or more validation errors occurred.", "status": 400,
				"errors": map[string]any{f: []string{"The " + f + " field is required."}}})
			return
		}
	}
	if string(raw["name"]) == "null" || string(raw["description"]) == "null" {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	// isVisible defaults to true when absent (RegisterSystemRequest.cs).
	in := registered{IsVisible: true}
	body, _ := json.Marshal(raw)
	if err := json.Unmarshal(body, &in); err != nil {
		problem(w, 400, "", "malformed body")
		return
	}
	// TrimStringsActionFilter runs on POST and PUT.
	in.ID = strings.TrimSpace(in.ID)
	in.Vendor.ID = strings.TrimSpace(in.Vendor.ID)
	in.IsDeleted = false
	owner, _, _ := strings.Cut(in.ID, "_")
	switch {
	case !strings.HasPrefix(in.Vendor.ID, "0192:"):
		problem(w, 400, "AUTH.VLD-00000", "the org number identifier is not valid ISO6523 identifier")
		return
	case in.vendor() != vendor:
		w.WriteHeader(http.StatusForbidden)
		return
	case owner != vendor || strings.ContainsAny(in.ID, " /"):
		problem(w, 400, "AUTH.VLD-00001", "The system id does not match the format orgnumber_xxxx...")
		return
	}
	if code, msg := validateSystem(&in); code != "" {
		problem(w, 400, code, msg)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.initAltinn()
	cur, exists := e.systems[in.ID]
	switch {
	case r.Method == http.MethodPost && exists:
		problem(w, 400, "AUTH.VLD-00002", "The system id already exists")
		return
	case r.Method == http.MethodPut && (!exists || cur.vendor() != vendor):
		w.WriteHeader(http.StatusNotFound)
		return
	case r.Method == http.MethodPut && id != in.ID:
		problem(w, 400, "AUTH.VLD-00012", "The system ID in the request body does not match the system ID in the URL")
		return
	}
	for _, c := range in.ClientID {
		for sid, s := range e.systems {
			if sid != in.ID && slices.Contains(s.ClientID, c) {
				problem(w, 400, "AUTH.VLD-00004", "One of the client id is already tagged with an existing system")
				return
			}
		}
	}
	// PUT "replaces the entire registered system": every field, client
	// ids included, is the body's.
	e.systems[in.ID] = &in
	if r.Method == http.MethodPut {
		writeJSON(w, http.StatusOK, map[string]bool{"succeeded": true})
		return
	}
	writeJSON(w, http.StatusOK, uuid.NewString())
}

// validateSystem checks what SystemRegisterController.cs validates in a
// system's body (ValidateRights, ValidateAccessPackages, ValidateClientIds,
// the redirect URL check; codes from AUTHN:Core/Errors/ValidationErrors.cs).
func validateSystem(in *registered) (code, msg string) {
	seen := map[string]bool{}
	for _, r := range in.Rights {
		k := fmt.Sprint(r.Resource)
		if seen[k] {
			return "AUTH.VLD-00006", "One or more duplicate rights found"
		}
		seen[k] = true
	}
	seen = map[string]bool{}
	var nonAssignable []string
	for _, p := range in.AccessPackages {
		if seen[p.URN] {
			return "AUTH.VLD-00007", "One or more duplicate access package(s) found"
		}
		seen[p.URN] = true
		if !strings.HasPrefix(p.URN, "urn:altinn:accesspackage:") {
			return "AUTH.VLD-00008", "One or all the accesspackage(s) is not found in altinn's access packages or is not delegable"
		}
		if slices.Contains(nonAssignablePackages, p.URN) {
			nonAssignable = append(nonAssignable, p.URN)
		}
	}
	if in.IsVisible && len(nonAssignable) > 0 {
		return "AUTH.VLD-00018", "Access packages meant for system user for client relations can't be used in combination with the flag isVisible: true"
	}
	seen = map[string]bool{}
	for _, c := range in.ClientID {
		if seen[c] {
			return "AUTH.VLD-00011", "Request contains duplicate client ids"
		}
		seen[c] = true
	}
	for _, u := range in.AllowedRedirectURLs {
		if pu, err := url.Parse(u); err != nil || pu.Scheme != "https" || pu.Host == "" {
			return "AUTH.VLD-00005", "One or more of the redirect urls format is not valid. The valid format is https://xxx.xx"
		}
	}
	return "", ""
}
