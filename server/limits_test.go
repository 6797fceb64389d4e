package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/server"
)

// TestLimitsCheck: the limits' ranges live with the limits; zero means the
// default, and each bad value is named. server.New refuses them too.
func TestLimitsCheck(t *testing.T) {
	t.Parallel()
	if err := (server.Limits{}).Check(); err != nil {
		t.Errorf("zero limits: %v", err)
	}
	if err := server.DefaultLimits.Check(); err != nil {
		t.Errorf("the defaults: %v", err)
	}
	for _, tc := range []struct {
		l    server.Limits
		want string
	}{
		{server.Limits{MaxHeaderBytes: 10}, "max_header_bytes"},
		{server.Limits{MaxHeaderBytes: 2 << 20}, "max_header_bytes"},
		{server.Limits{IdleTimeout: -time.Second}, "idle_timeout"},
		{server.Limits{MaxPendingPerIP: -1}, "max_pending_per_ip"},
		{server.Limits{MaxConcurrentStreams: 10001}, "max_concurrent_streams"},
	} {
		if err := tc.l.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%+v) = %v, want %q", tc.l, err, tc.want)
		}
		if _, err := server.New(server.Config{Broker: &fakeBroker{}, Authenticate: server.Fixed(identityLocal()), Limits: tc.l}); err == nil {
			t.Errorf("New with %+v accepted", tc.l)
		}
	}
}
