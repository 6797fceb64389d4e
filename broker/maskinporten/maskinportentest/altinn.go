package maskinportentest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/orgno"
)

// The Altinn vendor API the emulator serves, under the same base as the
// exchange (…/authentication/api/v1/).
const (
	systemUsersPath  = "/authentication/api/v1/systemuser/vendor/bysystem/"
	registerPath     = "/authentication/api/v1/systemregister/vendor"
	requestPath      = "/authentication/api/v1/systemuser/request/vendor"
	agentRequestPath = "/authentication/api/v1/systemuser/request/vendor/agent"
	confirmPath      = "/accessmanagement/ui/systemuser/request"
)

// System is a vendor's system in the emulated system register.
type System struct {
	ID       string
	Vendor   string // organisation number
	ClientID string // the Maskinporten client of the system
}

// systemUserRequest is a request as the emulator stores and answers it,
// with Altinn's JSON names.
type systemUserRequest struct {
	ID             string           `json:"id"`
	ExternalRef    string           `json:"externalRef"`
	SystemID       string           `json:"systemId"`
	PartyOrgNo     string           `json:"partyOrgNo"`
	Rights         []map[string]any `json:"rights,omitempty"`
	AccessPackages []map[string]any `json:"accessPackages,omitempty"`
	Status         string           `json:"status"`
	RedirectURL    string           `json:"redirectUrl,omitempty"`
	ConfirmURL     string           `json:"confirmUrl"`
	Created        time.Time        `json:"created"`
	agent          bool
}

// AddSystem registers s in the emulated system register.
func (e *Emulator) AddSystem(s System) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.systems == nil {
		e.systems = map[string]System{}
		e.suRequests = map[string]*systemUserRequest{}
	}
	e.systems[s.ID] = s
}

// Decide approves (or, with approve false, rejects) the pending request
// id, as the customer would at its confirm URL. Approval creates the system
// user, so that grants for the customer and external reference succeed.
func (e *Emulator) Decide(id string, approve bool) error {
	e.mu.Lock()
	r, ok := e.suRequests[id]
	var sys System
	if ok {
		sys = e.systems[r.SystemID]
	}
	e.mu.Unlock()
	switch {
	case !ok:
		return fmt.Errorf("no request %s", id)
	case r.Status != "New":
		return fmt.Errorf("request %s is %s, not New", id, r.Status)
	}
	e.mu.Lock()
	if approve {
		r.Status = "Accepted"
	} else {
		r.Status = "Rejected"
	}
	e.mu.Unlock()
	if approve {
		id := e.ApproveSystemUser(sys.ClientID, r.PartyOrgNo, r.ExternalRef)
		if r.agent {
			e.mu.Lock()
			if e.agentUsers == nil {
				e.agentUsers = map[string]bool{}
			}
			e.agentUsers[id] = true
			e.mu.Unlock()
		}
	}
	return nil
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
// (Altinn/altinn-authentication src/Authentication/Program.cs,
// src/Authentication/Controllers/RequestSystemUserController.cs
// GetAllRequestsForVendor, SystemUserController.cs), so its host is the one
// Altinn's gateway forwarded, not necessarily the base URL a client calls.
// The emulator uses a host that serves nothing, so that a client that
// follows the link's host fails.
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
		var list []*systemUserRequest
		for _, q := range e.suRequests {
			if q.SystemID == sysID && q.agent == agent && e.systems[q.SystemID].Vendor == vendor {
				list = append(list, q)
			}
		}
		e.mu.Unlock()
		slices.SortFunc(list, func(a, b *systemUserRequest) int {
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
	default:
		problem(w, 404, "AUTH-00010", "not found")
	}
	return true
}

func (e *Emulator) answerRequest(w http.ResponseWriter, vendor string, agent bool, match func(*systemUserRequest) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, q := range e.suRequests {
		if match(q) && q.agent == agent && e.systems[q.SystemID].Vendor == vendor {
			writeJSON(w, http.StatusOK, q)
			return
		}
	}
	problem(w, 404, "AUTH-00010", "request not found")
}

func (e *Emulator) createRequest(w http.ResponseWriter, r *http.Request, vendor string, agent bool) {
	var in systemUserRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil {
		problem(w, 400, "AUTH.VLD-00000", "malformed body")
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sys, ok := e.systems[in.SystemID]
	switch {
	case !ok:
		problem(w, 404, "AUTH-00011", "unknown systemId")
		return
	case sys.Vendor != vendor:
		problem(w, 403, "AUTH-00023", "the system belongs to another vendor")
		return
	case !orgno.Valid(in.PartyOrgNo):
		problem(w, 400, "AUTH.VLD-00000", "partyOrgNo is not an organisation number")
		return
	case agent && (len(in.AccessPackages) == 0 || len(in.Rights) > 0):
		problem(w, 400, "AUTH-00001", "an agent request takes access packages only")
		return
	case !agent && len(in.Rights) == 0 && len(in.AccessPackages) == 0:
		problem(w, 400, "AUTH-00001", "no rights or access packages")
		return
	case in.RedirectURL != "" && !strings.HasPrefix(in.RedirectURL, "https://"):
		problem(w, 400, "AUTH-00021", "redirect URL invalid")
		return
	}
	if in.ExternalRef == "" {
		in.ExternalRef = in.PartyOrgNo
	}
	for _, q := range e.suRequests {
		if q.SystemID == in.SystemID && q.PartyOrgNo == in.PartyOrgNo && q.ExternalRef == in.ExternalRef && q.agent == agent {
			switch q.Status {
			case "New":
				writeJSON(w, http.StatusOK, q) // Altinn returns the pending request again
				return
			case "Accepted":
				problem(w, 400, "AUTH-00004", "a system user already exists for this system, party and external reference")
				return
			}
		}
	}
	in.ID, in.Status, in.Created, in.agent = uuid.NewString(), "New", e.now().UTC(), agent
	base := strings.TrimSuffix(e.issuer, "/")
	in.ConfirmURL = base + confirmPath + "?id=" + in.ID
	if agent {
		in.ConfirmURL = base + "/accessmanagement/ui/systemuser/agentrequest?id=" + in.ID
	}
	e.suRequests[in.ID] = &in
	w.Header().Set("Location", base+"/authentication/api/v1/systemuser/request/"+in.ID)
	writeJSON(w, http.StatusCreated, &in)
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
	e.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "system user request %s\nsystem %s, customer %s, external ref %s: %s\napprove: %s&action=approve\nreject:  %s&action=reject\n",
		q.ID, q.SystemID, q.PartyOrgNo, q.ExternalRef, q.Status, q.ConfirmURL, q.ConfirmURL)
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
	if ok && sys.Vendor == vendor {
		for k, id := range e.systemUsers {
			if k.clientID == sys.ClientID {
				typ := "standard"
				if e.agentUsers[id] {
					typ = "agent"
				}
				list = append(list, systemUser{ID: id, SystemID: sysID, ReporteeOrgNo: k.org, ExternalRef: k.externalRef, UserType: typ, Created: e.now().UTC()})
			}
		}
	}
	e.mu.Unlock()
	if !ok || sys.Vendor != vendor {
		problem(w, 404, "AUTH-00011", "unknown systemId")
		return
	}
	slices.SortFunc(list, func(a, b systemUser) int {
		return strings.Compare(a.ReporteeOrgNo+a.ExternalRef, b.ReporteeOrgNo+b.ExternalRef)
	})
	writePage(w, r, list)
}

// register creates (POST) or replaces (PUT /{id}) a system.
func (e *Emulator) register(w http.ResponseWriter, r *http.Request, vendor, id string) {
	var in struct {
		ID     string `json:"id"`
		Vendor struct {
			ID string `json:"ID"`
		} `json:"vendor"`
		ClientID []string `json:"clientId"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil {
		problem(w, 400, "AUTH.VLD-00000", "malformed body")
		return
	}
	owner, _, _ := strings.Cut(in.ID, "_")
	switch {
	case !strings.HasPrefix(in.Vendor.ID, "0192:"):
		problem(w, 400, "AUTH.VLD-00000", "vendor must be a 0192 organisation identifier")
		return
	case strings.TrimPrefix(in.Vendor.ID, "0192:") != vendor:
		w.WriteHeader(http.StatusForbidden)
		return
	case owner != vendor || strings.ContainsAny(in.ID, " /"):
		problem(w, 400, "AUTH.VLD-00001", "system id must be <vendor orgno>_<name> without spaces")
		return
	case len(in.ClientID) != 1:
		problem(w, 400, "AUTH.VLD-00004", "want exactly one clientId")
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.systems == nil {
		e.systems = map[string]System{}
		e.suRequests = map[string]*systemUserRequest{}
	}
	_, exists := e.systems[in.ID]
	switch {
	case r.Method == http.MethodPost && id == "" && exists:
		problem(w, 400, "AUTH.VLD-00002", "system id already exists")
		return
	case r.Method == http.MethodPut && (id != in.ID || !exists):
		problem(w, 404, "AUTH-00011", "unknown systemId")
		return
	case r.Method != http.MethodPost && r.Method != http.MethodPut:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	e.systems[in.ID] = System{ID: in.ID, Vendor: vendor, ClientID: in.ClientID[0]}
	writeJSON(w, http.StatusOK, uuid.NewString())
}
