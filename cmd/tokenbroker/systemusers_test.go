package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// TestSystemUserFlow runs Altinn's vendor flow in dev mode: a request for a
// new customer, GetToken refused until the customer approves at the confirm
// URL, then granted; an idempotent repost, lookups by id and external ref,
// an agent request that is rejected, and Altinn's errors with their codes.
func TestSystemUserFlow(t *testing.T) {
	t.Parallel()
	env, stdout, stderr, _ := startDev(t)
	env.Emulator.Record()
	t.Cleanup(func() { env.Emulator.CheckNoLeaks(t, "dev output", stdout.String()+stderr.String()) })
	ctx := context.Background()
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	su := tokenbrokerv1.NewSystemUserServiceClient(conn)
	tb := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	const customer = "889640782"
	getToken := func() error {
		_, err := tb.GetToken(rctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: customer, Scopes: []string{devScope}})
		return err
	}
	visit := func(u string) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
	}

	created, err := su.CreateSystemUserRequest(rctx, &tokenbrokerv1.CreateSystemUserRequestRequest{
		CustomerOrg: customer, Rights: []string{"ske-krav-og-betalinger"}, RedirectUrl: "https://vendor.example/done"})
	if err != nil {
		t.Fatal(err)
	}
	req := created.GetRequest()
	if req.GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_NEW || req.GetConfirmUrl() == "" ||
		req.GetSystemId() != devSystemID || req.GetCustomerOrg() != customer || created.GetExisting() || len(req.GetRights()) != 1 {
		t.Fatalf("created %v", created)
	}
	if status.Code(getToken()) != codes.FailedPrecondition {
		t.Error("GetToken before approval did not answer FailedPrecondition")
	}
	again, err := su.CreateSystemUserRequest(rctx, &tokenbrokerv1.CreateSystemUserRequestRequest{
		CustomerOrg: customer, Rights: []string{"ske-krav-og-betalinger"}, RedirectUrl: "https://vendor.example/done"})
	if err != nil || !again.GetExisting() || again.GetRequest().GetId() != req.GetId() {
		t.Errorf("repost: %v %v, want the same pending request", again, err)
	}
	byID, err := su.GetSystemUserRequest(rctx, &tokenbrokerv1.GetSystemUserRequestRequest{Id: req.GetId()})
	if err != nil || byID.GetRequest().GetId() != req.GetId() {
		t.Errorf("get by id: %v %v", byID, err)
	}

	visit(req.GetConfirmUrl() + "&action=approve")
	byRef, err := su.GetSystemUserRequest(rctx, &tokenbrokerv1.GetSystemUserRequestRequest{CustomerOrg: customer})
	if err != nil || byRef.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_ACCEPTED {
		t.Fatalf("get by external ref after approval: %v %v", byRef, err)
	}
	if err := getToken(); err != nil {
		t.Errorf("GetToken after approval: %v", err)
	}
	_, err = su.CreateSystemUserRequest(rctx, &tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: customer, Rights: []string{"ske-krav-og-betalinger"}})
	if st := status.Convert(err); st.Code() != codes.AlreadyExists || !hasAltinnCode(st, "AUTH-00004") {
		t.Errorf("request for an existing system user: %v, want AlreadyExists with AUTH-00004", err)
	}

	// An agent request, rejected by the customer.
	agent, err := su.CreateSystemUserRequest(rctx, &tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: "313775429", ExternalRef: "clients",
		Agent: true, AccessPackages: []string{"urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet"}})
	if err != nil || !agent.GetRequest().GetAgent() || !strings.Contains(agent.GetRequest().GetConfirmUrl(), "agentrequest") {
		t.Fatalf("agent request: %v %v", agent, err)
	}
	if err := env.Emulator.Decide(agent.GetRequest().GetId(), false); err != nil {
		t.Fatal(err)
	}
	got, err := su.GetSystemUserRequest(rctx, &tokenbrokerv1.GetSystemUserRequestRequest{Id: agent.GetRequest().GetId(), Agent: true})
	if err != nil || got.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_REJECTED {
		t.Errorf("rejected agent request: %v %v", got, err)
	}

	// Lists page through Altinn's links.next (the emulator pages by 2).
	for _, org := range []string{"123456785", "910753614"} {
		if _, err := su.CreateSystemUserRequest(rctx, &tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: org, Rights: []string{"ske-krav-og-betalinger"}}); err != nil {
			t.Fatal(err)
		}
	}
	var reqs []string
	pages := 0
	for token := ""; ; {
		page, err := su.ListSystemUserRequests(rctx, &tokenbrokerv1.ListSystemUserRequestsRequest{PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range page.GetRequests() {
			reqs = append(reqs, r.GetCustomerOrg())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(reqs) != 3 || pages != 2 {
		t.Errorf("requests %v over %d pages, want 3 over 2", reqs, pages)
	}
	var users []string
	for token := ""; ; {
		page, err := su.ListSystemUsers(rctx, &tokenbrokerv1.ListSystemUsersRequest{PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page.GetSystemUsers() {
			users = append(users, u.GetCustomerOrg())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(users) != len(devCustomers)+1 || !slices.Contains(users, customer) {
		t.Errorf("system users %v, want the %d dev customers and %s", users, len(devCustomers), customer)
	}
	if _, err := su.ListSystemUsers(rctx, &tokenbrokerv1.ListSystemUsersRequest{PageToken: "not base64!"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}
	foreign := base64.RawURLEncoding.EncodeToString([]byte("https://elsewhere.example/steal?token=2"))
	if _, err := su.ListSystemUsers(rctx, &tokenbrokerv1.ListSystemUsersRequest{PageToken: foreign}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("page token pointing elsewhere: %v, want InvalidArgument", err)
	}

	// The system register: the dev system exists, so creating it again is
	// AlreadyExists; an update works.
	reg := &tokenbrokerv1.RegisterSystemRequest{Name: map[string]string{"nb": "Demo", "en": "Demo"},
		Description: map[string]string{"nb": "Demo", "en": "Demo"}, Rights: []string{"ske-krav-og-betalinger"},
		AllowedRedirectUrls: []string{"https://vendor.example/done"}}
	if _, err := su.RegisterSystem(rctx, reg); status.Code(err) != codes.AlreadyExists {
		t.Errorf("registering an existing system: %v, want AlreadyExists", err)
	}
	reg.Update = true
	if r, err := su.RegisterSystem(rctx, reg); err != nil || r.GetSystemId() != devSystemID {
		t.Errorf("updating the system: %v %v", r, err)
	}
	if _, err := su.RegisterSystem(rctx, &tokenbrokerv1.RegisterSystemRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("registering without a name: %v", err)
	}

	// Errors: bad input before any call, Altinn's own after.
	for name, tc := range map[string]struct {
		req  *tokenbrokerv1.CreateSystemUserRequestRequest
		code codes.Code
		word string
	}{
		"bad_org":           {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: "123456789", Rights: []string{"r"}}, codes.InvalidArgument, "customer_org"},
		"nothing_asked":     {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: customer}, codes.InvalidArgument, "rights"},
		"agent_with_rights": {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: customer, Agent: true, Rights: []string{"r"}}, codes.InvalidArgument, "rights"},
		"bad_package":       {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: customer, AccessPackages: []string{"package"}}, codes.InvalidArgument, "access_packages"},
		"http_redirect":     {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: customer, Rights: []string{"r"}, RedirectUrl: "http://x"}, codes.InvalidArgument, "redirect_url"},
	} {
		_, err := su.CreateSystemUserRequest(rctx, tc.req)
		if st := status.Convert(err); st.Code() != tc.code || !strings.HasPrefix(st.Message(), tc.word) {
			t.Errorf("%s: %v, want %v naming %s", name, err, tc.code, tc.word)
		}
	}
	_, err = su.GetSystemUserRequest(rctx, &tokenbrokerv1.GetSystemUserRequestRequest{Id: "8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11"})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "id: no such system user request" {
		t.Errorf("unknown request: %v, want NotFound", err)
	}
}

func hasAltinnCode(st *status.Status, code string) bool {
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok && i.GetDomain() == server.AltinnDomain && i.GetReason() == code {
			return true
		}
	}
	return false
}

// TestVendorFlowAgentSystem runs the whole vendor flow of issue 15 in dev
// mode: the system gets a client-relation package (refused while visible),
// an accountant is asked for an agent system user, rejects, is asked again
// (replace_rejected), approves; another request times out; and GetToken
// works for the accountant.
func TestVendorFlowAgentSystem(t *testing.T) {
	t.Parallel()
	env, stdout, stderr, _ := startDev(t)
	env.Emulator.Record()
	t.Cleanup(func() { env.Emulator.CheckNoLeaks(t, "dev output", stdout.String()+stderr.String()) })
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	su := tokenbrokerv1.NewSystemUserServiceClient(conn)
	tb := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	visit := func(u string) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", u, resp.StatusCode)
		}
	}
	const accountant = "889640782"
	const auditor = "urn:altinn:accesspackage:ansvarlig-revisor"

	// The system: add a second client-relation package. Visible, Altinn
	// would refuse it; the broker says so before any call.
	_, err = su.RegisterSystem(ctx, &tokenbrokerv1.RegisterSystemRequest{Update: true, IsVisible: proto.Bool(true),
		AccessPackages: []string{devAgentPackage, auditor}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), auditor) {
		t.Errorf("a visible agent system: %v", err)
	}
	if _, err := su.RegisterSystem(ctx, &tokenbrokerv1.RegisterSystemRequest{Update: true, AccessPackages: []string{devAgentPackage, auditor}}); err != nil {
		t.Fatalf("registering the agent packages: %v", err)
	}
	if sys, _ := env.Emulator.RegisteredSystem(devSystemID); sys.IsVisible || len(sys.ClientIDs) != 1 || len(sys.Rights) != 1 ||
		!slices.Equal(sys.AccessPackages, []string{devAgentPackage, auditor}) {
		t.Errorf("registered system %+v", sys)
	}

	ask := func(replace bool) *tokenbrokerv1.CreateSystemUserRequestResponse {
		t.Helper()
		r, err := su.CreateSystemUserRequest(ctx, &tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: accountant, Agent: true,
			AccessPackages: []string{devAgentPackage}, ReplaceRejected: replace})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	first := ask(false).GetRequest()
	visit(first.GetConfirmUrl() + "&action=reject")
	if again := ask(false); again.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_REJECTED {
		t.Errorf("asking without replace_rejected: %v, want the rejected request", again)
	}
	second := ask(true)
	if second.GetReplacedRequestId() != first.GetId() || second.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_NEW {
		t.Fatalf("asking again: %v", second)
	}
	getToken := func() error {
		_, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{CustomerOrg: accountant, Scopes: []string{devScope}})
		return err
	}
	if status.Code(getToken()) != codes.FailedPrecondition {
		t.Error("GetToken before approval did not answer FailedPrecondition")
	}
	visit(second.GetRequest().GetConfirmUrl() + "&action=approve")
	got, err := su.GetSystemUserRequest(ctx, &tokenbrokerv1.GetSystemUserRequestRequest{Id: second.GetRequest().GetId(), Agent: true})
	if err != nil || got.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_ACCEPTED {
		t.Fatalf("after approval: %v %v", got, err)
	}
	if err := getToken(); err != nil {
		t.Errorf("GetToken for the approved accountant: %v", err)
	}

	// Another customer never answers: after Altinn's time-out its request
	// reads TIMED_OUT.
	stale, err := su.CreateSystemUserRequest(ctx, &tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: "123456785", Rights: []string{"ske-krav-og-betalinger"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Emulator.Backdate(stale.GetRequest().GetId(), maskinportentest.DefaultRequestTimeout+time.Minute); err != nil {
		t.Fatal(err)
	}
	got, err = su.GetSystemUserRequest(ctx, &tokenbrokerv1.GetSystemUserRequestRequest{CustomerOrg: "123456785"})
	if err != nil || got.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_TIMED_OUT {
		t.Errorf("the stale request: %v %v, want TIMED_OUT", got, err)
	}
}
