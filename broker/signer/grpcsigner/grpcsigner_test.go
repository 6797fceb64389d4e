package grpcsigner_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/grpcsigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	signerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/signer/v1"
)

func TestParseURI(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw, base string
		want      grpcsigner.Target
	}{
		{"grpc:unix:/run/signer.sock", "/etc/tb", grpcsigner.Target{Address: "unix:/run/signer.sock"}},
		{"grpc:unix:signer.sock?key-id=k1", "/etc/tb", grpcsigner.Target{Address: "unix:/etc/tb/signer.sock", KeyID: "k1"}},
		{"grpc:signer:7443?ca=ca.pem&cert=/abs/c.pem&key=k.pem", "/etc/tb",
			grpcsigner.Target{Address: "signer:7443", CA: "/etc/tb/ca.pem", Cert: "/abs/c.pem", Key: "/etc/tb/k.pem"}},
	} {
		got, err := grpcsigner.ParseURI(tc.raw, tc.base)
		if err != nil || *got != tc.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tc.raw, got, err, tc.want)
		}
	}
	for _, raw := range []string{
		"file:k.pem",
		"grpc:",
		"grpc:unix:/s?colour=red",
		"grpc:unix:/s?%zz",
		"grpc:unix:/s?ca=ca.pem&cert=c.pem&key=k.pem",
		"grpc:signer:7443",
		"grpc:signer:7443?ca=ca.pem&cert=c.pem",
	} {
		if got, err := grpcsigner.ParseURI(raw, "/etc/tb"); err == nil {
			t.Errorf("ParseURI(%q) = %+v, want refused", raw, got)
		}
	}
}

// serve runs the signer service for key on a unix socket and returns the
// target.
func serve(t *testing.T, key *signer.Key) *grpcsigner.Target {
	t.Helper()
	dir, err := os.MkdirTemp("", "gs") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	signerv1.RegisterSignerServiceServer(srv, grpcsigner.NewService(key))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &grpcsigner.Target{Address: "unix:" + sock, KeyID: key.KeyID}
}

// TestSignOverGRPC: a key opened through the signer service signs grants
// that verify with the served key, for every algorithm.
func TestSignOverGRPC(t *testing.T) {
	t.Parallel()
	priv := signertest.RSA(t, signertest.KeyA)
	target := serve(t, signertest.Key(t, signertest.KeyA, "hsm-a"))
	for _, alg := range []signer.Algorithm{signer.RS256, signer.RS384, signer.RS512} {
		k, err := grpcsigner.Dial(context.Background(), target, "mp-kid", alg, 0)
		if err != nil {
			t.Fatal(err)
		}
		if k.KeyID != "mp-kid" || k.Backend != "grpc" || !k.Signer.Public().(*rsa.PublicKey).Equal(&priv.PublicKey) {
			t.Errorf("opened key %v", k)
		}
		h := alg.Hash().New()
		h.Write([]byte("grant"))
		digest := h.Sum(nil)
		sig, err := k.Sign(nil, digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(&priv.PublicKey, alg.Hash(), digest, sig); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
		if _, err := k.Signer.Sign(nil, make([]byte, 20), crypto.SHA1); err == nil {
			t.Error("SHA-1 signature made")
		}
	}
	other := *target
	other.KeyID = "nope"
	if k, err := grpcsigner.Dial(context.Background(), &other, "k", "", 0); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown key id: %v, %v", k, err)
	}
	if k, err := grpcsigner.Dial(context.Background(), target, "k", "ES256", 0); err == nil {
		t.Errorf("ES256 opened: %v", k)
	}
}

func TestServiceRefusesBadRequests(t *testing.T) {
	t.Parallel()
	s := grpcsigner.NewService(signertest.Key(t, signertest.KeyA, "k"))
	ctx := context.Background()
	for name, r := range map[string]*signerv1.SignRequest{
		"other_key":      {KeyId: "other", Digest: make([]byte, 32), Hash: signerv1.Hash_HASH_SHA256},
		"no_hash":        {Digest: make([]byte, 32)},
		"short_digest":   {Digest: make([]byte, 31), Hash: signerv1.Hash_HASH_SHA256},
		"digest_for_384": {Digest: make([]byte, 32), Hash: signerv1.Hash_HASH_SHA384},
	} {
		if _, err := s.Sign(ctx, r); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.NotFound {
			t.Errorf("%s: %v, want InvalidArgument or NotFound", name, err)
		}
	}
	if _, err := s.GetPublicKey(ctx, &signerv1.GetPublicKeyRequest{KeyId: "other"}); status.Code(err) != codes.NotFound {
		t.Errorf("public key of another key: %v, want NotFound", err)
	}
	for _, h := range []signerv1.Hash{signerv1.Hash_HASH_SHA256, signerv1.Hash_HASH_SHA384, signerv1.Hash_HASH_SHA512} {
		size := map[signerv1.Hash]int{signerv1.Hash_HASH_SHA256: 32, signerv1.Hash_HASH_SHA384: 48, signerv1.Hash_HASH_SHA512: 64}[h]
		if _, err := s.Sign(ctx, &signerv1.SignRequest{Digest: make([]byte, size), Hash: h}); err != nil {
			t.Errorf("%v: %v", h, err)
		}
	}
}

// TestOpenTLSFiles: a TCP target's TLS files must exist and hold what they
// should; the error names the file, never a key.
func TestOpenTLSFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tg := range map[string]*grpcsigner.Target{
		"missing_ca": {Address: "127.0.0.1:1", CA: filepath.Join(dir, "absent.pem"), Cert: "c", Key: "k"},
		"ca_not_pem": {Address: "127.0.0.1:1", CA: notPEM, Cert: "c", Key: "k"},
	} {
		if k, err := grpcsigner.Dial(context.Background(), tg, "k", "", 0); err == nil || !strings.Contains(err.Error(), "ca") {
			t.Errorf("%s: %v, %v", name, k, err)
		}
	}
}

// TestCallTimeoutAndClose: the configured call timeout reaches the signer
// as the call's deadline (an hour, further than any default), and Close
// releases the connection, as the signer side counts it.
func TestCallTimeoutAndClose(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "gs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	raw, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lis := signertest.CountConns(raw)
	deadlines := make(chan time.Time, 1)
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if strings.HasSuffix(info.FullMethod, "/Sign") {
			d, _ := ctx.Deadline()
			deadlines <- d
		}
		return h(ctx, req)
	}))
	signerv1.RegisterSignerServiceServer(srv, grpcsigner.NewService(signertest.Key(t, signertest.KeyA, "a")))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	k, err := grpcsigner.Open(context.Background(), signer.Spec{URI: "grpc:unix:" + sock, KeyID: "a", CallTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Sign(nil, crypto.SHA256.New().Sum(nil)); err != nil {
		t.Fatal(err)
	}
	if left := time.Until(<-deadlines); left < 30*time.Minute {
		t.Errorf("sign deadline %v away, want the configured hour", left)
	}
	if lis.Open() != 1 {
		t.Errorf("%d connections open while the key is, want 1", lis.Open())
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	lis.WaitOpen(t, 0)
	if err := k.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
