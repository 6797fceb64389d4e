package altinn_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
)

// TestPageOfAnotherListRefused: a next link of the system's requests is
// not a page of its system users (nor of another system's): the vendor
// token goes nowhere the first page would not have gone.
func TestPageOfAnotherListRefused(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"data":[],"links":{}}`))
	}))
	defer srv.Close()
	v := altinn.NewVendor(srv.URL, srv.Client())
	ctx := context.Background()
	for _, page := range []string{
		srv.URL + "/systemuser/request/vendor/bysystem/991825827_demo?token=2",
		srv.URL + "/systemuser/vendor/bysystem/991825827_other?token=2",
	} {
		_, _, err := v.ListSystemUsers(ctx, "vendor-token", "991825827_demo", page)
		var pe *altinn.ProblemError
		if !errors.As(err, &pe) || pe.StatusCode != 400 {
			t.Errorf("page %s: %v, want a 400 ProblemError", page, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests reached Altinn for refused pages", n)
	}
	if _, _, err := v.ListSystemUsers(ctx, "vendor-token", "991825827_demo", srv.URL+"/systemuser/vendor/bysystem/991825827_demo?token=2"); err != nil {
		t.Errorf("a page of this list: %v", err)
	}
}
