package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

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

// BenchmarkFigureHitLatency measures what one caller sees: sequential calls
// over loopback with the generated Go client, a GetToken cache hit and a
// Health/Check alternating so that both see the same machine, and reports
// the median and p99 of each and their ratios. The product promises a p99
// far below a millisecond on a cache hit.
func BenchmarkFigureHitLatency(b *testing.B) {
	const n = 10_000
	h := newHarness(b, devLike)
	hc := healthpb.NewHealthClient(h.conn)
	ctx := context.Background()
	if _, err := h.client.GetToken(ctx, validRequest()); err != nil {
		b.Fatal(err)
	}
	token := make([]time.Duration, 0, n*b.N)
	health := make([]time.Duration, 0, n*b.N)
	for i := 0; i < n*b.N; i++ {
		start := time.Now()
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			b.Fatal(err)
		}
		health = append(health, time.Since(start))
		start = time.Now()
		resp, err := h.client.GetToken(ctx, validRequest())
		if err != nil {
			b.Fatal(err)
		}
		token = append(token, time.Since(start))
		if !resp.GetCached() {
			b.Fatal("a call after the first was not a cache hit")
		}
	}
	slices.Sort(token)
	slices.Sort(health)
	q := func(l []time.Duration, f float64) float64 { return float64(l[int(float64(len(l)-1)*f)]) / 1e3 }
	fmt.Printf("FIGURE hit_latency calls=%d token_median_us=%.0f token_p99_us=%.0f health_median_us=%.0f health_p99_us=%.0f median_ratio=%.2f p99_ratio=%.2f\n",
		len(token), q(token, 0.5), q(token, 0.99), q(health, 0.5), q(health, 0.99),
		q(token, 0.5)/q(health, 0.5), q(token, 0.99)/q(health, 0.99))
}
