package signertest

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/broker/signer/grpcsigner"
	signerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/signer/v1"
)

// GRPCSigner serves SignerService for test key name (KeyA or KeyB) on a
// unix socket until the test ends. It returns the grpc: signer URI and the
// listener, which counts the connections open to the signer.
func GRPCSigner(tb testing.TB, name string) (uri string, lis *Listener) {
	tb.Helper()
	dir, err := os.MkdirTemp("", "gs") // short: unix socket paths are limited
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	raw, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	lis = CountConns(raw)
	srv := grpc.NewServer()
	signerv1.RegisterSignerServiceServer(srv, grpcsigner.NewService(Key(tb, name, "served")))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	tb.Cleanup(func() {
		srv.Stop()
		if err := <-errc; err != nil {
			tb.Errorf("signertest: signer serve: %v", err)
		}
	})
	return "grpc:unix:" + sock, lis
}
