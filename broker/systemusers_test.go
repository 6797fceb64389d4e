package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// passExchanger returns the Maskinporten token as the Altinn token.
type passExchanger struct{}

func (passExchanger) Exchange(_ context.Context, mp *maskinporten.Token) (*maskinporten.Token, error) {
	return mp, nil
}

// recordingVendor answers every call and counts them.
type recordingVendor struct{ calls int }

func (v *recordingVendor) CreateRequest(_ context.Context, _ string, _ bool, r altinn.Request) (*altinn.Request, bool, error) {
	v.calls++
	r.ID, r.Status = "8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11", "New"
	return &r, false, nil
}
func (v *recordingVendor) GetRequest(context.Context, string, bool, string) (*altinn.Request, error) {
	v.calls++
	return &altinn.Request{ID: "x", PartyOrgNo: "314250052", Status: "New"}, nil
}
func (v *recordingVendor) GetRequestByExternalRef(context.Context, string, bool, string, string, string) (*altinn.Request, error) {
	v.calls++
	return &altinn.Request{}, nil
}
func (v *recordingVendor) ListRequests(context.Context, string, bool, string, string) ([]altinn.Request, string, error) {
	v.calls++
	return nil, "", nil
}
func (v *recordingVendor) ListSystemUsers(context.Context, string, string, string) ([]altinn.SystemUser, string, error) {
	v.calls++
	return nil, "", nil
}
func (v *recordingVendor) RegisterSystem(context.Context, string, altinn.System, bool) error {
	v.calls++
	return nil
}
func (v *recordingVendor) GetSystem(context.Context, string, string) (*altinn.System, error) {
	v.calls++
	return &altinn.System{}, nil
}
func (v *recordingVendor) DeleteRequest(context.Context, string, string) error {
	v.calls++
	return nil
}

// TestSystemUserPolicy: the system user calls follow the caller policy;
// lists span customers and need customer_orgs "*".
func TestSystemUserPolicy(t *testing.T) {
	t.Parallel()
	pol, err := policy.New([]policy.Rule{
		{Callers: []string{"unix:billing"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"310904473"}},
		{Callers: []string{"unix:admin"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := &recordingVendor{}
	src := &fakeSource{lifetime: 10 * time.Minute, now: time.Now}
	b, err := broker.New(broker.Config{Policy: pol, SweepInterval: -1, Clients: []broker.Client{{
		Name: "demo", Scopes: []string{scope}, Source: src, Exchanger: passExchanger{}, SystemID: "991825827_demo", Vendor: v,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	create := func(caller, org string) error {
		_, err := b.CreateSystemUserRequest(ctx, broker.SystemUserRequestParams{Caller: caller, CustomerOrg: org, Rights: []string{"r"}})
		return err
	}
	if err := create("unix:billing", "310904473"); err != nil {
		t.Fatalf("allowed org: %v", err)
	}
	if err := create("unix:billing", "314250052"); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("other org: %v, want ErrPermissionDenied", err)
	}
	// Another org's request reads as a missing one; the error still
	// wraps the refusal, for the audit.
	if _, err := b.GetSystemUserRequest(ctx, broker.SystemUserLookup{Caller: "unix:billing", ID: "8f7d0c52-7a39-4e2f-9f55-0c3f3c3e9b11"}); !errors.Is(err, broker.ErrNotFound) ||
		!errors.Is(err, broker.ErrPermissionDenied) || err.Error() != broker.ErrNotFound.Error() {
		t.Errorf("reading another org's request: %v, want ErrNotFound wrapping ErrPermissionDenied", err)
	}
	if _, _, err := b.ListSystemUsers(ctx, "unix:billing", "", ""); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("listing without customer_orgs \"*\": %v", err)
	}
	if _, _, err := b.ListSystemUsers(ctx, "unix:admin", "", ""); err != nil {
		t.Errorf("admin listing: %v", err)
	}
	if _, err := b.RegisterSystem(ctx, broker.SystemRegistration{Caller: "unix:billing", Name: map[string]string{"nb": "x"}, Description: map[string]string{"nb": "x"}}); !errors.Is(err, broker.ErrPermissionDenied) {
		t.Errorf("billing registering: %v", err)
	}
	// One vendor token (the write scope) and one read-scope token were
	// fetched; the denied calls made no upstream call of their own.
	if n := src.calls.Load(); n != 3 {
		t.Errorf("%d vendor token fetches, want 3 (write, read, register)", n)
	}
	if v.calls != 3 {
		t.Errorf("%d vendor API calls, want 3", v.calls)
	}
}

// TestReplaceable: only requests the customer can no longer approve are
// replaced; an accepted one never is, even with Altinn's age flag.
func TestReplaceable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status   string
		timedOut bool
		want     bool
	}{
		{"Rejected", false, true}, {"denied", false, true}, {"Timedout", false, true},
		{"New", true, true}, {"New", false, false}, {"Accepted", true, false}, {"accepted", false, false},
	} {
		if got := broker.Replaceable(&altinn.Request{Status: tc.status, TimedOut: tc.timedOut}); got != tc.want {
			t.Errorf("Replaceable(%s, timedOut %v) = %v, want %v", tc.status, tc.timedOut, got, tc.want)
		}
	}
}

// mergeVendor has a registered system and keeps what RegisterSystem
// writes.
type mergeVendor struct {
	recordingVendor
	current, written altinn.System
}

func (v *mergeVendor) GetSystem(context.Context, string, string) (*altinn.System, error) {
	s := v.current
	return &s, nil
}

func (v *mergeVendor) RegisterSystem(_ context.Context, _ string, s altinn.System, _ bool) error {
	v.written = s
	return nil
}

// TestRegisterSystemMerge: an update writes back everything it read
// (rights with their action, other clients' ids, packages, redirect URLs,
// visibility) and changes only what the caller set.
func TestRegisterSystemMerge(t *testing.T) {
	t.Parallel()
	read := altinn.Right{Action: "read", Resource: []altinn.Attribute{{ID: "urn:altinn:resource", Value: "r"}}}
	v := &mergeVendor{current: altinn.System{ID: "991825827_demo", Name: map[string]string{"nb": "Old"}, Description: map[string]string{"nb": "Old"},
		Rights: []altinn.Right{read}, AccessPackages: []altinn.AccessPackage{{URN: "urn:altinn:accesspackage:regnskapsforer-lonn"}},
		ClientID: []string{"other-client"}, AllowedRedirectURLs: []string{"https://x.example/"}}}
	src := idSource{&fakeSource{lifetime: 10 * time.Minute, now: time.Now}}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), SweepInterval: -1, Clients: []broker.Client{{
		Name: "demo", Scopes: []string{scope}, Source: src, Exchanger: passExchanger{}, SystemID: "991825827_demo", Vendor: v,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.RegisterSystem(context.Background(), broker.SystemRegistration{Update: true, Name: map[string]string{"nb": "New"},
		Description: map[string]string{"nb": "New"}}); err != nil {
		t.Fatal(err)
	}
	w := v.written
	if w.Name["nb"] != "New" || len(w.Rights) != 1 || w.Rights[0].Action != "read" || len(w.AccessPackages) != 1 ||
		len(w.AllowedRedirectURLs) != 1 || w.IsVisible || !slices.Equal(w.ClientID, []string{"other-client", "our-client"}) {
		t.Errorf("written %+v", w)
	}
}

// idSource is a fakeSource with a Maskinporten client id.
type idSource struct{ *fakeSource }

func (idSource) ClientID() string { return "our-client" }
