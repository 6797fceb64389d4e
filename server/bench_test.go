package server_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/server"
)

// BenchmarkCacheHit and BenchmarkHealthCheck run the same gRPC stack over
// loopback; their ratio is what figure 1 of BENCHMARKS.md measures with ghz.
// devLike configures the server as dev mode does: a text log to nowhere and
// no audit log.
func devLike(c *server.Config) {
	c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c.Audit = nil
}

func BenchmarkCacheHit(b *testing.B) {
	h := newHarness(b, devLike)
	if _, err := h.client.GetToken(context.Background(), validRequest()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := h.client.GetToken(context.Background(), validRequest()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkHealthCheck(b *testing.B) {
	h := newHarness(b, devLike)
	hc := healthpb.NewHealthClient(h.conn)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
