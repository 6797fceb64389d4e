package daemon

import (
	"context"
	"testing"
)

// TestTracingSwitch: tracing is off unless the config or OTEL_TRACES_EXPORTER
// turns it on. Not parallel: it sets environment variables.
func TestTracingSwitch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     string
		enabled bool
		want    bool
	}{
		{"default_off", "", false, false},
		{"env_none", "none", false, false},
		{"env_console", "console", false, true},
		{"config_on", "console", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_EXPORTER", tc.env)
			tp, stop, err := SetupTracing(context.Background(), tc.enabled)
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			if (tp != nil) != tc.want {
				t.Errorf("provider %v, want one: %v", tp, tc.want)
			}
		})
	}
}
