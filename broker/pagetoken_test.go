package broker_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

// TestOversizedPageTokenRefused: a page token far larger than any next
// link is refused as a bad page_token before anything goes upstream.
func TestOversizedPageTokenRefused(t *testing.T) {
	t.Parallel()
	v := &recordingVendor{}
	src := &fakeSource{lifetime: 10 * time.Minute, now: time.Now}
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), SweepInterval: -1, Clients: []broker.Client{{
		Name: "demo", Scopes: []string{scope}, Source: src, Exchanger: passExchanger{}, SystemID: "991825827_demo", Vendor: v,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	huge := base64.RawURLEncoding.EncodeToString([]byte(strings.Repeat("x", 4096)))
	_, _, err = b.ListSystemUsers(context.Background(), "admin", "", huge)
	var fe *broker.FieldError
	if !errors.As(err, &fe) || fe.Field != "page_token" {
		t.Errorf("4 KiB page token: %v, want a FieldError for page_token", err)
	}
	if src.calls.Load() != 0 || v.calls != 0 {
		t.Errorf("%d token fetches and %d vendor calls for a refused page token", src.calls.Load(), v.calls)
	}
}
