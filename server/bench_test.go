package server_test

import (
	"context"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkCacheHit and BenchmarkHealthCheck run the same gRPC stack over
// loopback; their ratio is what figure 1 of BENCHMARKS.md measures with ghz.
func BenchmarkCacheHit(b *testing.B) {
	h := newHarness(b)
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
	h := newHarness(b)
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
