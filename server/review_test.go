package server_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestRequestByIDStaysInTheClientsSystem (review): Altinn answers a
// request by id for any system of the vendor, not only the system of the
// client whose token asks. A caller allowed one client of a vendor with
// several systems must not read or delete, by id, a request of another
// client's system (here billing, allowed smartcloud for 310904473, and a
// request of smartcloud2 for the same customer). It is answered like a
// request that does not exist.
func TestRequestByIDStaysInTheClientsSystem(t *testing.T) {
	t.Parallel()
	h := newSUHarness(t)
	r, err := h.su.CreateSystemUserRequest(as(t, "sibling-admin"), &tokenbrokerv1.CreateSystemUserRequestRequest{
		Client: "smartcloud2", CustomerOrg: approved, Rights: []string{"ske-krav-og-betalinger"}})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetRequest().GetId()
	missing := "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
	_, errMissing := h.su.GetSystemUserRequest(as(t, "billing"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud", Id: missing})
	got, err := h.su.GetSystemUserRequest(as(t, "billing"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud", Id: id})
	if err == nil {
		t.Errorf("billing read smartcloud2's request %s through smartcloud: system %s", id, got.GetRequest().GetSystemId())
	} else if st, sm := status.Convert(err), status.Convert(errMissing); st.Code() != codes.NotFound || st.Message() != sm.Message() {
		t.Errorf("another system's request: %v; a missing one: %v; want the same NotFound", err, errMissing)
	}
	_, err = h.su.DeleteSystemUserRequest(as(t, "billing"), &tokenbrokerv1.DeleteSystemUserRequestRequest{Client: "smartcloud", Id: id})
	if status.Code(err) != codes.NotFound {
		t.Errorf("delete of smartcloud2's request through smartcloud: %v, want NotFound", err)
	}
	if _, err := h.su.GetSystemUserRequest(as(t, "sibling-admin"), &tokenbrokerv1.GetSystemUserRequestRequest{Client: "smartcloud2", Id: id}); err != nil {
		t.Errorf("smartcloud2's own request after billing's delete: %v", err)
	}
}
