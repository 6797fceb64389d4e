// Command tokenbroker serves Maskinporten system user tokens over gRPC.
//
//	tokenbroker serve --config FILE   serve with the given configuration
//	tokenbroker dev [--listen ADDR]   run everything on this machine against
//	                                  a built-in Maskinporten emulator
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tokenbroker:", err)
		}
		os.Exit(1)
	}
}

const usage = `usage:
  tokenbroker serve --config FILE   serve tokens with the given configuration
  tokenbroker dev [--listen ADDR]   run against a built-in Maskinporten emulator
`

// run dispatches a subcommand. It returns when ctx ends or the command fails.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stderr, nil)
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr, nil)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// runServe serves with a config file. ready, when not nil, receives the
// listen address once the broker listens.
func runServe(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("serve: --config is required")
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel)
	b, err := buildBroker(ctx, cfg, filepath.Dir(*configPath), log)
	if err != nil {
		return err
	}
	defer b.Close()
	srv, err := server.New(server.Config{Broker: b, Logger: log})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if cfg.HealthListen != "" {
		stopHealth, err := serveHealth(ctx, cfg.HealthListen, b, log)
		if err != nil {
			lis.Close()
			return err
		}
		defer stopHealth()
	}
	log.Info("serving", slog.String("addr", lis.Addr().String()))
	if ready != nil {
		ready <- lis.Addr().String()
	}
	err = srv.Serve(ctx, lis)
	log.Info("stopped")
	return err
}

// serveHealth serves /healthz on addr until ctx ends or stop is called.
func serveHealth(ctx context.Context, addr string, b *broker.Broker, log *slog.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health_listen: %w", err)
	}
	hs := &http.Server{Handler: server.HealthHandler(b), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	log.Info("health endpoint", slog.String("url", "http://"+lis.Addr().String()+"/healthz"))
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}, nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
