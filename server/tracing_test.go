package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/server"
)

// TestTraces runs GetToken with the instrumentation cmd/tokenbroker uses
// (otelgrpc on the server, otelhttp towards Maskinporten) and an in-memory
// exporter: the spans are there and hold no token and no grant.
func TestTraces(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	httpClient := &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport, otelhttp.WithTracerProvider(tp))}
	h := newHarnessWith(t, httpClient, func(c *server.Config) {
		c.ServerOptions = append(c.ServerOptions, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp))))
	})
	for i := 0; i < 2; i++ {
		if _, err := h.get(t, validRequest()); err != nil {
			t.Fatal(err)
		}
	}
	// The server ends a call's span after the answer is on its way, so the
	// client can be back before the second span is exported: wait for it.
	var rpc, post int
	var dump strings.Builder
	for wait := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		rpc, post = 0, 0
		dump.Reset()
		for _, s := range exp.GetSpans() {
			switch {
			case s.Name == "tokenbroker.v1.TokenBrokerService/GetToken":
				rpc++
			case strings.HasPrefix(s.Name, "HTTP POST") || s.Name == "POST":
				post++
			}
			fmt.Fprintf(&dump, "%s %v %v\n", s.Name, s.Attributes, s.Events)
		}
		if rpc >= 2 || time.Now().After(wait) {
			break
		}
	}
	if rpc != 2 || post != 1 {
		t.Errorf("%d GetToken spans and %d POST spans, want 2 and 1 (one fetch, one hit):\n%s", rpc, post, dump.String())
	}
	h.emu.CheckNoLeaks(t, "the spans", dump.String())
}
