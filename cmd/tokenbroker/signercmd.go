package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/broker/signer/grpcsigner"
	signerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/signer/v1"
	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// runSigner runs the external signer: `tokenbroker signer serve` holds one
// key from any backend URI and serves SignerService on a unix socket, or on
// TCP with mutual TLS. ready, when not nil, receives the address.
func runSigner(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	if len(args) == 0 || args[0] != "serve" {
		return errors.New("signer: usage: tokenbroker signer serve --key URI --kid KID --listen unix:/path | host:port [--tls-cert F --tls-key F --client-ca F]")
	}
	fs := flag.NewFlagSet("signer serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyURI := fs.String("key", "", "signer URI of the key to hold (file:, pkcs11:, ...)")
	kid := fs.String("kid", "", "the key's id")
	alg := fs.String("alg", "", "RS256 (default), RS384 or RS512")
	listen := fs.String("listen", "", "unix:/path, or host:port for TCP with mutual TLS")
	tlsCert := fs.String("tls-cert", "", "server certificate (TCP)")
	tlsKey := fs.String("tls-key", "", "server key (TCP)")
	clientCA := fs.String("client-ca", "", "CA of the broker's client certificate (TCP)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *keyURI == "" || *listen == "" {
		return errors.New("signer serve: --key and --listen are required")
	}
	if strings.HasPrefix(*keyURI, "grpc:") {
		return errors.New("signer serve: --key cannot be another grpc: signer")
	}
	key, err := daemon.OpenKey(daemon.KeyConfig{KID: *kid, Signer: *keyURI, Algorithm: *alg}, "")
	if err != nil {
		return fmt.Errorf("signer serve: key: %w", err)
	}
	defer key.Close()
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	var opts []grpc.ServerOption
	var lis net.Listener
	if path, ok := strings.CutPrefix(*listen, "unix:"); ok {
		if *tlsCert != "" {
			return errors.New("signer serve: TLS flags make no sense on a unix socket")
		}
		if lis, err = daemon.ListenUnix(path, "0600"); err != nil {
			return err
		}
	} else {
		if *tlsCert == "" || *tlsKey == "" || *clientCA == "" {
			return errors.New("signer serve: TCP needs --tls-cert, --tls-key and --client-ca")
		}
		_, roots, err := daemon.LoadTLS(daemon.TLSConfig{Cert: *tlsCert, Key: *tlsKey, ClientCA: *clientCA}, "")
		if err != nil {
			return err
		}
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{cert}, ClientCAs: roots,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		})))
		if lis, err = net.Listen("tcp", *listen); err != nil {
			return fmt.Errorf("signer serve: %w", err)
		}
	}
	srv := grpc.NewServer(opts...)
	signerv1.RegisterSignerServiceServer(srv, grpcsigner.NewService(key))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	log.Info("signer serving", slog.String("addr", lis.Addr().String()), slog.String("kid", key.KeyID), slog.String("backend", key.Backend))
	if ready != nil {
		ready <- lis.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	if server.GracefulStop(srv, hs, 0) {
		log.Warn("graceful stop timed out; closed open calls")
	}
	if p, ok := strings.CutPrefix(*listen, "unix:"); ok {
		_ = os.Remove(p)
	}
	return nil
}
