package server_test

import (
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// The tests of issue 15: each of Altinn's rules that the broker got wrong,
// through the gRPC API against the emulator, which follows Altinn's server.

// wantField checks that err is InvalidArgument naming field, with word in
// its message.
func wantField(t *testing.T, what string, err error, field, word string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), field+": ") || !strings.Contains(st.Message(), word) {
		t.Errorf("%s: %v, want InvalidArgument naming %s and %q", what, err, field, word)
	}
}

// noUpstream runs call and fails if it reached Maskinporten or Altinn.
func (h *suHarness) noUpstream(t *testing.T, what string, call func() error) error {
	t.Helper()
	before := h.upstream.Load()
	err := call()
	if n := h.upstream.Load() - before; n != 0 {
		t.Errorf("%s: %d upstream calls, want none", what, n)
	}
	return err
}

func altinnCode(err error) string {
	for _, d := range status.Convert(err).Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok && i.GetDomain() == server.AltinnDomain {
			return i.GetReason()
		}
	}
	return ""
}

// TestRegisterAgentSystemInvisible (issue 15, point 1): a system with a
// client-relation package registers with is_visible false by default; asked
// to be visible, it is refused before any call, naming the package.
func TestRegisterAgentSystemInvisible(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	reg := &tokenbrokerv1.RegisterSystemRequest{Client: "fresh", Name: map[string]string{"nb": "Regnskap"},
		Description: map[string]string{"nb": "Regnskap for klienter"}, AccessPackages: []string{suAgentPackage}}
	visible := proto.Clone(reg).(*tokenbrokerv1.RegisterSystemRequest)
	visible.IsVisible = proto.Bool(true)
	err := h.noUpstream(t, "visible", func() error { _, err := h.su.RegisterSystem(as(t, "admin"), visible); return err })
	wantField(t, "a visible system with a client-relation package", err, "access_packages", suAgentPackage)
	if _, err := h.su.RegisterSystem(as(t, "admin"), reg); err != nil {
		t.Fatalf("registering with the default: %v", err)
	}
	sys, ok := h.emu.RegisteredSystem(suFresh)
	if !ok || sys.IsVisible || !slices.Equal(sys.ClientIDs, []string{suFreshClient}) || !slices.Equal(sys.AccessPackages, []string{suAgentPackage}) {
		t.Errorf("registered %+v", sys)
	}
}

// TestRegisterSystemNeedsDescription (issue 15, point 2): name and
// description are required per language (nb, nn or en) and checked before
// any call; Altinn would fail on a null description with a server error.
func TestRegisterSystemNeedsDescription(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	name := map[string]string{"nb": "Regnskap"}
	for what, tc := range map[string]struct {
		req         *tokenbrokerv1.RegisterSystemRequest
		field, word string
	}{
		"no_description":   {&tokenbrokerv1.RegisterSystemRequest{Client: "fresh", Name: name}, "description", "required"},
		"no_name":          {&tokenbrokerv1.RegisterSystemRequest{Client: "fresh", Description: name}, "name", "required"},
		"other_language":   {&tokenbrokerv1.RegisterSystemRequest{Client: "fresh", Name: map[string]string{"de": "x"}, Description: map[string]string{"de": "x"}}, "name", `"de"`},
		"blank":            {&tokenbrokerv1.RegisterSystemRequest{Client: "fresh", Name: name, Description: map[string]string{"nb": " "}}, "description", "empty"},
		"missing_language": {&tokenbrokerv1.RegisterSystemRequest{Client: "fresh", Name: map[string]string{"nb": "x", "en": "x"}, Description: name}, "description", "en"},
	} {
		err := h.noUpstream(t, what, func() error { _, err := h.su.RegisterSystem(as(t, "admin"), tc.req); return err })
		wantField(t, what, err, tc.field, tc.word)
	}
	if _, ok := h.emu.RegisteredSystem(suFresh); ok {
		t.Error("a refused registration reached the register")
	}
}

// TestRegisterSystemUpdateKeepsOthers (issue 15, point 3): an update reads
// the registered system and writes it back whole, changing only what the
// caller set and keeping every other client id, whose grants keep working.
func TestRegisterSystemUpdateKeepsOthers(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	// A second Maskinporten client on the same system, with a system user.
	const other = "0e0e0e0e-1111-4222-8333-444455556666"
	h.emu.AddSystem(maskinportentest.System{ID: suSystem, Vendor: "991825827", ClientIDs: []string{clientID, other},
		Rights: []string{"ske-krav-og-betalinger"}, AccessPackages: []string{suAgentPackage}, RedirectURLs: []string{"https://vendor.example/done"},
		Name: map[string]string{"nb": "Smart"}, Description: map[string]string{"nb": "Smart"}})
	if _, err := h.su.RegisterSystem(as(t, "admin"), &tokenbrokerv1.RegisterSystemRequest{Client: "smartcloud", Update: true,
		Rights: []string{"ske-krav-og-betalinger", "r"}}); err != nil {
		t.Fatal(err)
	}
	sys, _ := h.emu.RegisteredSystem(suSystem)
	if !slices.Equal(sys.ClientIDs, []string{clientID, other}) || !slices.Equal(sys.Rights, []string{"ske-krav-og-betalinger", "r"}) ||
		!slices.Equal(sys.AccessPackages, []string{suAgentPackage}) || !slices.Equal(sys.RedirectURLs, []string{"https://vendor.example/done"}) ||
		sys.Name["nb"] != "Smart" || sys.Description["nb"] != "Smart" || sys.IsVisible {
		t.Errorf("after the update: %+v", sys)
	}
	// Making it visible with its client-relation package is refused after
	// the read, before the write.
	_, err := h.su.RegisterSystem(as(t, "admin"), &tokenbrokerv1.RegisterSystemRequest{Client: "smartcloud", Update: true, IsVisible: proto.Bool(true)})
	wantField(t, "visible with a registered client-relation package", err, "access_packages", suAgentPackage)
	if sys, _ := h.emu.RegisteredSystem(suSystem); sys.IsVisible {
		t.Error("the refused update reached the register")
	}
}

// TestAskAgainAfterRejection (issue 15, point 4): Altinn returns a
// rejected request again instead of asking the customer; replace_rejected
// deletes it first (audited), and DeleteSystemUserRequest deletes by id with
// the by-id policy rules.
func TestAskAgainAfterRejection(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	var deletes atomic.Int64
	h.setHook(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodDelete {
			deletes.Add(1)
		}
		return false
	})
	ask := func(replace bool) *tokenbrokerv1.CreateSystemUserRequestResponse {
		t.Helper()
		r, err := h.su.CreateSystemUserRequest(as(t, "admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: "smartcloud",
			CustomerOrg: "314250052", Agent: true, AccessPackages: []string{suAgentPackage}, ReplaceRejected: replace})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	first := ask(false).GetRequest()
	if err := h.emu.Decide(first.GetId(), false); err != nil {
		t.Fatal(err)
	}
	again := ask(false)
	if !again.GetExisting() || again.GetRequest().GetId() != first.GetId() ||
		again.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_REJECTED {
		t.Errorf("posting again: %v, want the rejected request back", again)
	}
	replaced := ask(true)
	if replaced.GetExisting() || replaced.GetReplacedRequestId() != first.GetId() || replaced.GetRequest().GetId() == first.GetId() ||
		replaced.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_NEW {
		t.Errorf("with replace_rejected: %v, want a new request replacing %s", replaced, first.GetId())
	}
	if a := h.audit.String(); !strings.Contains(a, `"method":"/tokenbroker.v1.SystemUserService/DeleteSystemUserRequest"`) {
		t.Errorf("the replacement's deletion is not audited:\n%s", a)
	}
	// A pending request is never replaced.
	if r := ask(true); !r.GetExisting() || r.GetReplacedRequestId() != "" || r.GetRequest().GetId() != replaced.GetRequest().GetId() {
		t.Errorf("replace_rejected on a pending request: %v", r)
	}

	// DeleteSystemUserRequest: another customer's request is NOT_FOUND,
	// like a missing one, and nothing is deleted.
	mine := h.create(t, approved)
	before := deletes.Load()
	_, notYours := h.su.DeleteSystemUserRequest(as(t, "billing"), &tokenbrokerv1.DeleteSystemUserRequestRequest{Client: "smartcloud",
		Id: replaced.GetRequest().GetId(), Agent: true})
	_, missing := h.su.DeleteSystemUserRequest(as(t, "billing"), &tokenbrokerv1.DeleteSystemUserRequestRequest{Client: "smartcloud",
		Id: "8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11"})
	if status.Code(notYours) != codes.NotFound || !proto.Equal(status.Convert(notYours).Proto(), status.Convert(missing).Proto()) || deletes.Load() != before {
		t.Errorf("deleting another customer's request: %v (missing: %v), %d deletes", notYours, missing, deletes.Load()-before)
	}
	if _, err := h.su.DeleteSystemUserRequest(as(t, "billing"), &tokenbrokerv1.DeleteSystemUserRequestRequest{Client: "smartcloud", Id: mine.GetId()}); err != nil {
		t.Fatalf("deleting its own request: %v", err)
	}
	if _, err := h.su.GetSystemUserRequest(as(t, "billing"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud", Id: mine.GetId()}); status.Code(err) != codes.NotFound {
		t.Errorf("reading a deleted request: %v, want NotFound", err)
	}
	err := h.noUpstream(t, "bad id", func() error {
		_, err := h.su.DeleteSystemUserRequest(as(t, "admin"), &tokenbrokerv1.DeleteSystemUserRequestRequest{Client: "smartcloud", Id: "../x"})
		return err
	})
	wantField(t, "a malformed id", err, "id", "UUID")
}

// TestTimedOutRequest (issue 15, point 5): Altinn flags a request older
// than its time-out with timedOut and leaves its status New; the broker
// reports TIMED_OUT.
func TestTimedOutRequest(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	r := h.create(t, "313775429")
	if err := h.emu.Backdate(r.GetId(), maskinportentest.DefaultRequestTimeout+time.Hour); err != nil {
		t.Fatal(err)
	}
	got, err := h.su.GetSystemUserRequest(as(t, "admin"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud", Id: r.GetId()})
	if err != nil || got.GetRequest().GetStatus() != tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_TIMED_OUT {
		t.Errorf("a request past the time-out: %v %v, want TIMED_OUT", got, err)
	}
	// Altinn returns it on a new post too; replace_rejected replaces it.
	again, err := h.su.CreateSystemUserRequest(as(t, "admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: "smartcloud",
		CustomerOrg: "313775429", Rights: []string{"r"}, ReplaceRejected: true})
	if err != nil || again.GetReplacedRequestId() != r.GetId() {
		t.Errorf("asking again after the time-out: %v %v", again, err)
	}
}

// TestExternalRefWhitespace (issue 15, point 6): Altinn stores external
// references trimmed, so one with surrounding whitespace is refused
// everywhere, before any call.
func TestExternalRefWhitespace(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	for _, ref := range []string{" tenant-42", "tenant-42 ", "\u2003tenant-42", "tenant-42\u00a0"} {
		calls := map[string]func() error{
			"GetToken": func() error {
				_, err := h.tb.GetToken(as(t, "admin"), &tokenbrokerv1.GetTokenRequest{Client: "smartcloud", CustomerOrg: approved, Scopes: []string{scope}, ExternalRef: ref})
				return err
			},
			"CreateSystemUserRequest": func() error {
				_, err := h.su.CreateSystemUserRequest(as(t, "admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: "smartcloud", CustomerOrg: approved, Rights: []string{"r"}, ExternalRef: ref})
				return err
			},
			"GetSystemUserRequest": func() error {
				_, err := h.su.GetSystemUserRequest(as(t, "admin"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud", CustomerOrg: approved, ExternalRef: ref})
				return err
			},
		}
		for name, call := range calls {
			err := h.noUpstream(t, name, call)
			wantField(t, name+" with "+strconvQuote(ref), err, "external_ref", "whitespace")
		}
	}
}

func strconvQuote(s string) string { return `"` + s + `"` }

// TestExchangeRejectedIsConfiguration (issue 15, point 7): Altinn's
// exchange answering 401 again after one fresh Maskinporten token is a
// configuration problem: FAILED_PRECONDITION with an ErrorInfo that says
// what to check, not UNAVAILABLE.
func TestExchangeRejectedIsConfiguration(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	h.emu.ApproveSystemUser(clientID, approved, "")
	var exchanges atomic.Int64
	h.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != maskinportentest.ExchangePath {
			return false
		}
		exchanges.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	_, err := h.tb.GetToken(as(t, "admin"), &tokenbrokerv1.GetTokenRequest{Client: "smartcloud", CustomerOrg: approved, Scopes: []string{scope},
		Kind: tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN})
	st := status.Convert(err)
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if st.Code() != codes.FailedPrecondition || info == nil || info.GetReason() != "ALTINN_EXCHANGE_REJECTED" || !strings.Contains(info.GetMetadata()["check"], "consumer") {
		t.Errorf("exchange refused twice: %v (%v), want FailedPrecondition with an ErrorInfo saying what to check", err, info)
	}
	if n := exchanges.Load(); n != 2 {
		t.Errorf("%d exchanges, want 2 (one refetch)", n)
	}
}

// TestAltinnValidationCodesNameTheField (issue 15, point 8): Altinn's
// validation codes are INVALID_ARGUMENT naming the request field, with the
// AUTH code kept.
func TestAltinnValidationCodesNameTheField(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	for what, tc := range map[string]struct {
		req         *tokenbrokerv1.CreateSystemUserRequestRequest
		field, code string
	}{
		// The system has no allowed redirect URLs.
		"redirect_not_allowed": {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: approved, Rights: []string{"r"}, RedirectUrl: "https://vendor.example/done"}, "redirect_url", "AUTH-00026"},
		"right_not_on_system":  {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: approved, Rights: []string{"not-on-the-system"}}, "rights", "AUTH-00001"},
		"package_not_on_system": {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: approved, Agent: true,
			AccessPackages: []string{"urn:altinn:accesspackage:ansvarlig-revisor"}}, "access_packages", "AUTH-00063"},
		"client_package_standard":  {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: approved, AccessPackages: []string{suAgentPackage}}, "access_packages", "AUTH-00064"},
		"customer_not_in_register": {&tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: "910753614", Rights: []string{"r"}}, "customer_org", "AUTH-00000"},
	} {
		tc.req.Client = "smartcloud"
		_, err := h.su.CreateSystemUserRequest(as(t, "admin"), tc.req)
		wantField(t, what, err, tc.field, tc.code)
		if got := altinnCode(err); got != tc.code {
			t.Errorf("%s: Altinn code %q, want %q", what, got, tc.code)
		}
	}
}

// TestReplaceAuditedWhenCreateFails: when the rejected request was deleted
// and creating the new one fails, the deletion is still audited.
func TestReplaceAuditedWhenCreateFails(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	first := h.create(t, "314250052")
	if err := h.emu.Decide(first.GetId(), false); err != nil {
		t.Fatal(err)
	}
	var deleted atomic.Bool
	h.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodDelete:
			deleted.Store(true)
		case r.Method == http.MethodPost && deleted.Load() && strings.HasSuffix(r.URL.Path, "/systemuser/request/vendor"):
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	_, err := h.su.CreateSystemUserRequest(as(t, "admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{Client: "smartcloud",
		CustomerOrg: "314250052", Rights: []string{"ske-krav-og-betalinger"}, ReplaceRejected: true})
	if status.Code(err) != codes.Unavailable || !deleted.Load() {
		t.Fatalf("got %v (deleted %v), want Unavailable after the deletion", err, deleted.Load())
	}
	if a := h.audit.String(); !strings.Contains(a, `"method":"/tokenbroker.v1.SystemUserService/DeleteSystemUserRequest"`) {
		t.Errorf("the deletion is not audited:\n%s", a)
	}
}
