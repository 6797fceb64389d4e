package server_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/server"
)

// TestGracefulStop: without open calls the stop is graceful; a call that
// does not end (a health Watch) is cut after the timeout, and the health
// service said NOT_SERVING first.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	start := func() (*grpc.Server, *health.Server, healthpb.HealthClient) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		hs := health.NewServer()
		healthpb.RegisterHealthServer(g, hs)
		go func() { _ = g.Serve(lis) }()
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return g, hs, healthpb.NewHealthClient(conn)
	}

	g, hs, _ := start()
	if server.GracefulStop(g, hs, time.Minute) {
		t.Error("a server without calls was not stopped gracefully")
	}

	g, hs, c := start()
	w, err := c.Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v, %v", r, err)
	}
	if !server.GracefulStop(g, hs, 50*time.Millisecond) {
		t.Error("an open watch was not cut")
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health before the cut: %v, %v; want NOT_SERVING", r, err)
	}
}
