package server_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/audit"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// System user harness: two clients of one vendor, whose systems are
// siblings ("…_smartcloud" and "…_smartcloud2"), served over gRPC with a
// restrictive policy. The caller is taken from the x-test-caller metadata,
// so one connection can act as any caller.
const (
	suSystem  = "991825827_smartcloud"
	suSibling = "991825827_smartcloud2"
	suBase    = "/authentication/api/v1"
	suFresh   = "991825827_fresh"
	// suFreshClient is the Maskinporten client of suFresh.
	suFreshClient = "5b1f3c7a-2d4e-4f60-8a9b-0c1d2e3f4a5b"
	// suAgentPackage is a package meant for client relations.
	suAgentPackage = "urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet"
)

type suHarness struct {
	emu      *maskinportentest.Emulator
	su       tokenbrokerv1.SystemUserServiceClient
	tb       tokenbrokerv1.TokenBrokerServiceClient
	log      *syncBuffer
	audit    *syncBuffer
	upstream atomic.Int64 // every call that reached Maskinporten or Altinn
	hook     atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
}

var suRules = []policy.Rule{
	{Callers: []string{"unix:admin", "unix:admin2"}, Clients: []string{"smartcloud", "fresh"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}},
	{Callers: []string{"unix:sibling-admin"}, Clients: []string{"smartcloud2"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}},
	{Callers: []string{"unix:billing"}, Clients: []string{"smartcloud"}, Scopes: []string{"*"}, CustomerOrgs: []string{approved}},
}

func newSUHarness(t *testing.T) *suHarness {
	t.Helper()
	h := &suHarness{log: &syncBuffer{}, audit: &syncBuffer{}}
	logger := slog.New(slog.NewJSONHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	emu.Record()
	h.emu = emu
	emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		h.upstream.Add(1)
		if f := h.hook.Load(); f != nil {
			return (*f)(w, r)
		}
		return false
	})
	emu.AddOrganisations(approved, "314250052", "313775429", "123456785")
	vendorScopes := []string{altinn.ScopeRequestWrite, altinn.ScopeRequestRead, altinn.ScopeSystemRegisterWrite, scope}
	var clients []broker.Client
	for i, c := range []struct{ name, id, system, kid string }{
		{"smartcloud", clientID, suSystem, "kid-a"},
		{"smartcloud2", "0d6a4c1e-8a55-4a0f-a1cb-2f3e4b5c6d7e", suSibling, "kid-b"},
		{"fresh", suFreshClient, suFresh, "kid-c"}, // its system is not registered yet
	} {
		key := signertest.Key(t, []string{signertest.KeyA, signertest.KeyB, signertest.KeyA}[i], c.kid)
		pub, err := key.PublicJWK()
		if err != nil {
			t.Fatal(err)
		}
		if err := emu.AddClient(maskinportentest.Client{ID: c.id, Org: "991825827", SystemID: c.system, Scopes: vendorScopes, Keys: []jwk.Key{pub}}); err != nil {
			t.Fatal(err)
		}
		if c.name != "fresh" {
			emu.AddSystem(maskinportentest.System{ID: c.system, Vendor: "991825827", ClientID: c.id, Rights: []string{"ske-krav-og-betalinger", "r"},
				AccessPackages: []string{suAgentPackage}, Name: map[string]string{"nb": "Smart"}, Description: map[string]string{"nb": "Smart"}})
		}
		mp, err := maskinporten.New(maskinporten.Config{ClientID: c.id, Key: key,
			Environment: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"}})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, broker.Client{Name: c.name, Scopes: []string{scope}, Source: mp,
			Exchanger: altinn.NewExchanger(srv.URL+maskinportentest.ExchangePath, nil), SystemID: c.system,
			Vendor: altinn.NewVendor(srv.URL+suBase, nil)})
	}
	pol, err := policy.New(suRules)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{Policy: pol, Clients: clients, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	s, err := server.New(server.Config{Broker: b, Logger: logger, Audit: audit.New(h.audit),
		Authenticate: func(ctx context.Context) (identity.ID, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			if v := md.Get("x-test-caller"); len(v) == 1 {
				return identity.New(identity.Unix, v[0])
			}
			return identity.New(identity.Unix, "nobody")
		}})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.su = tokenbrokerv1.NewSystemUserServiceClient(conn)
	h.tb = tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		emu.CheckNoLeaks(t, "the log", h.log.String())
		emu.CheckNoLeaks(t, "the audit log", h.audit.String())
	})
	return h
}

// as returns a context that calls as caller, bounded in time.
func as(t *testing.T, caller string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "x-test-caller", caller)
}

func (h *suHarness) setHook(f func(http.ResponseWriter, *http.Request) bool) {
	if f == nil {
		h.hook.Store(nil)
		return
	}
	h.hook.Store(&f)
}

func (h *suHarness) create(t *testing.T, org string) *tokenbrokerv1.SystemUserRequest {
	t.Helper()
	r, err := h.su.CreateSystemUserRequest(as(t, "admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: "smartcloud", CustomerOrg: org, Rights: []string{"ske-krav-og-betalinger"}})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetRequest()
}

// TestPageTokensCannotBeForged (issue 12, point 4): a page token is bound to
// the caller, the client, its system and the list; tokens of the old kind
// (Altinn's link in base64) pointing at a sibling system, "../", "%2e%2e"
// or a foreign host are refused before any call to Altinn.
func TestPageTokensCannotBeForged(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	for _, org := range []string{approved, "314250052", "313775429"} {
		h.create(t, org)
	}
	first, err := h.su.ListSystemUserRequests(as(t, "admin"), &tokenbrokerv1.ListSystemUserRequestsRequest{Client: "smartcloud"})
	if err != nil || first.GetNextPageToken() == "" || len(first.GetRequests()) != 2 {
		t.Fatalf("first page: %v %v", first, err)
	}
	tok := first.GetNextPageToken()
	// The emulator's links.next names a host that serves nothing
	// (GatewayHost); the second page comes from the base URL.
	second, err := h.su.ListSystemUserRequests(as(t, "admin"), &tokenbrokerv1.ListSystemUserRequestsRequest{Client: "smartcloud", PageToken: tok})
	if err != nil || len(second.GetRequests()) != 1 || second.GetNextPageToken() != "" {
		t.Fatalf("second page: %v %v", second, err)
	}
	if strings.Contains(tok, base64.RawURLEncoding.EncodeToString([]byte("https://"))) {
		t.Error("the page token carries Altinn's link as it came")
	}

	old := func(link string) string { return base64.RawURLEncoding.EncodeToString([]byte(link)) }
	// Today's clients and a forged token use the emulator's real base URL,
	// which a forger can learn from a confirm URL.
	base := strings.TrimSuffix(h.emu.Issuer(), "/") + suBase
	for name, tc := range map[string]struct {
		caller, token string
		agent         bool
		users         bool
		client        string
	}{
		"sibling_system":   {caller: "admin", token: old(base + "/systemuser/request/vendor/bysystem/" + suSibling)},
		"dot_dot":          {caller: "admin", token: old(base + "/systemuser/request/vendor/bysystem/" + suSystem + "/../" + suSibling)},
		"encoded_dot_dot":  {caller: "admin", token: old(base + "/systemuser/request/vendor/bysystem/" + suSystem + "/%2e%2e/" + suSibling)},
		"foreign_host":     {caller: "admin", token: old("https://attacker.example" + suBase + "/systemuser/request/vendor/bysystem/" + suSystem + "?token=0")},
		"other_caller":     {caller: "admin2", token: tok},
		"other_list_agent": {caller: "admin", token: tok, agent: true},
		"other_list_users": {caller: "admin", token: tok, users: true},
		"other_client":     {caller: "sibling-admin", token: tok, client: "smartcloud2"},
		"truncated":        {caller: "admin", token: tok[:len(tok)-2]},
	} {
		before := h.upstream.Load()
		client := tc.client
		if client == "" {
			client = "smartcloud"
		}
		var err error
		if tc.users {
			_, err = h.su.ListSystemUsers(as(t, tc.caller), &tokenbrokerv1.ListSystemUsersRequest{Client: client, PageToken: tc.token})
		} else {
			_, err = h.su.ListSystemUserRequests(as(t, tc.caller), &tokenbrokerv1.ListSystemUserRequestsRequest{Client: client, Agent: tc.agent, PageToken: tc.token})
		}
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "page_token: ") {
			t.Errorf("%s: %v, want InvalidArgument naming page_token", name, err)
		}
		if n := h.upstream.Load() - before; n != 0 {
			t.Errorf("%s: %d calls reached Maskinporten or Altinn", name, n)
		}
	}
}

// TestAltinnNextLinkChecked (issue 12, point 4): a links.next from Altinn
// that is not the next page of the same list of the same system is an
// upstream error; it is neither followed nor handed to the caller.
func TestAltinnNextLinkChecked(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	list := suBase + "/systemuser/vendor/bysystem/" + suSystem
	for name, next := range map[string]string{
		"sibling_system":  "https://platform.tt02.altinn.no" + suBase + "/systemuser/vendor/bysystem/" + suSibling + "?token=0",
		"dot_dot":         "https://platform.tt02.altinn.no" + list + "/../" + suSibling + "?token=0",
		"encoded_dot_dot": "https://platform.tt02.altinn.no" + list + "/%2e%2e/" + suSibling + "?token=0",
		"encoded_slash":   "https://platform.tt02.altinn.no" + suBase + "/systemuser/vendor/bysystem/" + suSystem + "%2f..%2f" + suSibling,
		"userinfo":        "https://user:secret@platform.tt02.altinn.no" + list + "?token=2",
		"other_list":      "https://platform.tt02.altinn.no" + suBase + "/systemuser/request/vendor/bysystem/" + suSystem + "?token=0",
		"relative_dots":   list + "/./?token=2",
	} {
		h.setHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != list {
				return false
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"links":{"next":` + strings.ReplaceAll(`"`+next+`"`, "\\", "\\\\") + `},"data":[]}`))
			return true
		})
		page, err := h.su.ListSystemUsers(as(t, "admin"), &tokenbrokerv1.ListSystemUsersRequest{Client: "smartcloud"})
		if st := status.Convert(err); st.Code() != codes.Unavailable || page.GetNextPageToken() != "" {
			t.Errorf("%s: %v %v, want Unavailable and no token", name, page, err)
		}
	}
	h.setHook(nil)
}

// TestNoExistenceOracle (issue 12, point 5): by id, a request of a customer
// the caller may not see and a request that does not exist answer the same;
// a caller with no rule for the client is refused before any upstream call,
// whether the client exists or not, on every SystemUserService method.
func TestNoExistenceOracle(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	theirs := h.create(t, "314250052")
	mine := h.create(t, approved)

	get := func(caller, client, id string) (*status.Status, int64) {
		before := h.upstream.Load()
		_, err := h.su.GetSystemUserRequest(as(t, caller), &tokenbrokerv1.GetSystemUserRequestRequest{Client: client, Id: id})
		return status.Convert(err), h.upstream.Load() - before
	}
	if st, _ := get("billing", "smartcloud", mine.GetId()); st.Code() != codes.OK {
		t.Fatalf("own request: %v", st.Err())
	}
	notYours, _ := get("billing", "smartcloud", theirs.GetId())
	missing, _ := get("billing", "smartcloud", "8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11")
	if notYours.Code() != codes.NotFound || !proto.Equal(notYours.Proto(), missing.Proto()) {
		t.Errorf("another customer's request answered %v, a missing one %v: want the same NotFound", notYours.Proto(), missing.Proto())
	}
	// The audit knows which was which.
	if a := h.audit.String(); !strings.Contains(a, `"decision":"deny","code":"NotFound"`) {
		t.Errorf("the audit does not record the refusal behind the NotFound:\n%s", a)
	}

	// No rule for the client: refused before any call, the same way
	// whether the client exists, and by customer org too.
	for _, caller := range []string{"nobody", "sibling-admin"} {
		answers := map[string]map[string]string{}
		for _, client := range []string{"smartcloud", "no-such-client"} {
			answers[client] = map[string]string{}
			calls := map[string]func() error{
				"get_by_id": func() error {
					_, err := h.su.GetSystemUserRequest(as(t, caller), &tokenbrokerv1.GetSystemUserRequestRequest{Client: client, Id: theirs.GetId()})
					return err
				},
				"get_by_org": func() error {
					_, err := h.su.GetSystemUserRequest(as(t, caller), &tokenbrokerv1.GetSystemUserRequestRequest{Client: client, CustomerOrg: "314250052"})
					return err
				},
				"create": func() error {
					_, err := h.su.CreateSystemUserRequest(as(t, caller), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: client, CustomerOrg: "314250052", Rights: []string{"r"}})
					return err
				},
				"list_requests": func() error {
					_, err := h.su.ListSystemUserRequests(as(t, caller), &tokenbrokerv1.ListSystemUserRequestsRequest{Client: client, PageToken: "forged"})
					return err
				},
				"list_users": func() error {
					_, err := h.su.ListSystemUsers(as(t, caller), &tokenbrokerv1.ListSystemUsersRequest{Client: client})
					return err
				},
				"register": func() error {
					_, err := h.su.RegisterSystem(as(t, caller), &tokenbrokerv1.RegisterSystemRequest{Client: client,
						Name: map[string]string{"nb": "x"}, Description: map[string]string{"nb": "x"}})
					return err
				},
			}
			for name, call := range calls {
				before := h.upstream.Load()
				st := status.Convert(call())
				if st.Code() != codes.PermissionDenied {
					t.Errorf("%s %s on %s: %v, want PermissionDenied", caller, name, client, st.Err())
				}
				if n := h.upstream.Load() - before; n != 0 {
					t.Errorf("%s %s on %s: %d upstream calls", caller, name, client, n)
				}
				// The answer may echo the client named in the call, and
				// nothing else differs.
				answers[client][name] = strings.ReplaceAll(st.Message(), client, "CLIENT")
			}
		}
		for name, known := range answers["smartcloud"] {
			if unknown := answers["no-such-client"][name]; known != unknown {
				t.Errorf("%s %s: an existing client answers %q, an unknown one %q", caller, name, known, unknown)
			}
		}
	}
	// A customer org the caller may not see: refused before Altinn.
	before := h.upstream.Load()
	_, err := h.su.GetSystemUserRequest(as(t, "billing"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud", CustomerOrg: "314250052"})
	if status.Code(err) != codes.PermissionDenied || h.upstream.Load() != before {
		t.Errorf("by a customer org the caller may not see: %v, %d upstream calls", err, h.upstream.Load()-before)
	}
}

// TestUpstreamTextScrubbed (issue 12, point 9): an Altinn error answer that
// echoes the vendor's bearer token leaves no part of it in the caller's
// error, the log or the audit record, even where the text is cut.
func TestUpstreamTextScrubbed(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	var seen atomic.Pointer[string]
	h.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.URL.Path != suBase+"/systemuser/request/vendor" {
			return false
		}
		bearer := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		seen.Store(&bearer)
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusBadRequest)
		pad := strings.Repeat("x ", 120) // the token straddles the old 300-byte cut
		_, _ = w.Write([]byte(`{"title":"bad","code":"AUTH-00001","detail":"` + pad + `got Authorization: Bearer ` + bearer + ` and ` + bearer[:40] + `"}`))
		return true
	})
	_, err := h.su.CreateSystemUserRequest(as(t, "admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: "smartcloud", CustomerOrg: approved, Rights: []string{"r"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument for AUTH-00001", err)
	}
	tok := seen.Load()
	if tok == nil || len(*tok) < 64 {
		t.Fatal("the hook saw no bearer token")
	}
	for where, text := range map[string]string{"the error": status.Convert(err).Message(), "the log": h.log.String(), "the audit": h.audit.String()} {
		if piece := sharedPiece(*tok, text, 12); piece != "" {
			t.Errorf("%s holds %q, a piece of the bearer token", where, piece)
		}
	}
}

// sharedPiece returns a substring of secret of length n found in text, or
// "".
func sharedPiece(secret, text string, n int) string {
	for i := 0; i+n <= len(secret); i++ {
		if strings.Contains(text, secret[i:i+n]) {
			return secret[i : i+n]
		}
	}
	return ""
}

// TestMaskinportenTextScrubbed (issue 12, point 9): a Maskinporten
// error_description that echoes the grant, whole or cut short, leaves no
// part of it in the caller's error, the log or the audit record.
func TestMaskinportenTextScrubbed(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	var seen atomic.Pointer[string]
	h.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/token" || r.ParseForm() != nil {
			return false
		}
		grant := r.PostForm.Get("assertion")
		seen.Store(&grant)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		desc := "MP-011 Invalid parameter value: " + grant[:60] + " (cut) and whole: " + grant
		body, _ := json.Marshal(map[string]string{"error": "invalid_request", "error_description": desc})
		_, _ = w.Write(body)
		return true
	})
	_, err := h.tb.GetToken(as(t, "admin"), &tokenbrokerv1.GetTokenRequest{Client: "smartcloud", CustomerOrg: approved, Scopes: []string{scope}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("got %v, want FailedPrecondition for MP-011", err)
	}
	grant := seen.Load()
	if grant == nil || len(*grant) < 100 {
		t.Fatal("the hook saw no grant")
	}
	for where, text := range map[string]string{"the error": status.Convert(err).Message(), "the log": h.log.String(), "the audit": h.audit.String()} {
		if piece := sharedPiece(*grant, text, 12); piece != "" {
			t.Errorf("%s holds %q, a piece of the grant", where, piece)
		}
	}
}
