// Package spiffetest is a SPIFFE Workload API for tests: it streams the
// X.509-SVID and bundles a test sets, and a new set to every open stream,
// as a SPIRE agent does on a rotation. go-spiffe's own fake lives in an
// internal package; this one speaks the same public protocol
// (github.com/spiffe/go-spiffe/v2/proto/spiffe/workload). The real SPIRE
// test is cmd/tokenbroker's TestSPIRE.
package spiffetest

import (
	"encoding/pem"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// Update is what the agent sends: the workload's SVID (a certificate of
// tlstest whose URI SAN is its SPIFFE ID), the CAs of its own trust domain,
// and the CAs of federated trust domains by name ("other.org").
type Update struct {
	SPIFFEID  string
	SVID      *tlstest.Issued
	Bundle    []*tlstest.CA
	Federated map[string][]*tlstest.CA
}

// WorkloadAPI is a Workload API on a unix socket.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	addr string

	mu      sync.Mutex
	current *workload.X509SVIDResponse
	changed chan struct{} // closed and replaced on every Set
}

// Start serves a Workload API in a temporary directory until the test
// ends; it answers nothing until the first Set.
func Start(tb testing.TB) *WorkloadAPI {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	w := &WorkloadAPI{addr: "unix://" + path, changed: make(chan struct{})}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, w)
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	return w
}

// Addr is the socket's address, unix:///PATH.
func (w *WorkloadAPI) Addr() string { return w.addr }

// Set sends u to every stream, now and to those that open later.
func (w *WorkloadAPI) Set(tb testing.TB, u Update) {
	tb.Helper()
	key, _ := pem.Decode(u.SVID.KeyPEM)
	var chain []byte
	for _, der := range u.SVID.TLS.Certificate {
		chain = append(chain, der...)
	}
	resp := &workload.X509SVIDResponse{
		Svids:            []*workload.X509SVID{{SpiffeId: u.SPIFFEID, X509Svid: chain, X509SvidKey: key.Bytes, Bundle: cas(u.Bundle)}},
		FederatedBundles: map[string][]byte{},
	}
	for td, c := range u.Federated {
		resp.FederatedBundles["spiffe://"+td] = cas(c)
	}
	w.mu.Lock()
	w.current = resp
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

func cas(c []*tlstest.CA) []byte {
	var out []byte
	for _, ca := range c {
		out = append(out, ca.Cert.Raw...)
	}
	return out
}

// FetchX509SVID streams the current update, then every new one.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	var sent *workload.X509SVIDResponse
	for {
		w.mu.Lock()
		cur, changed := w.current, w.changed
		w.mu.Unlock()
		if cur != nil && cur != sent {
			if err := stream.Send(cur); err != nil {
				return err
			}
			sent = cur
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
}

// FetchX509Bundles is not used by X509Source.
func (w *WorkloadAPI) FetchX509Bundles(*workload.X509BundlesRequest, grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return status.Error(codes.Unimplemented, "not in this fake")
}
