// Command tokenbroker serves Maskinporten system user tokens over gRPC, and
// has a few commands for people:
//
//	tokenbroker serve --config FILE   serve with the given configuration
//	tokenbroker dev [--listen ADDR]   run everything on this machine against
//	                                  a built-in Maskinporten emulator
//	tokenbroker token ...             get a token and show its claims
//	tokenbroker explain ...           show the grant that would be sent
//	tokenbroker check --config FILE   validate a config, load every key
//	tokenbroker keygen --out FILE     write a new key, print its public JWK
//	tokenbroker jwks --config FILE    print the public JWKs of the config
//	tokenbroker keys status|rotate    show or run the key rotation
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/server/daemon"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
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
  tokenbroker token --org ORG --scope SCOPE [--addr ADDR | --unix PATH] [--cacert F --cert F --key F] [--raw]
                                    get a token from a running broker and describe it
  tokenbroker explain --config FILE --org ORG --scope SCOPE
                                    show the grant that would be sent (never signed)
  tokenbroker check --config FILE   validate a config and load every key
  tokenbroker keygen --out FILE [--bits 2048|3072] [--kid KID]
                                    write a new RSA key (0600) and print its public JWK
  tokenbroker jwks --config FILE    print the public JWK set of every configured key
  tokenbroker keys status --config FILE
                                    every rotating client: registered keys and their expiry, active,
                                    next, last rotation, next due
  tokenbroker keys rotate --config FILE --client NAME [--dry-run] [--force]
                                    rotate a client's key now (the broker's own code path)
  tokenbroker signer serve --key URI --kid KID --listen unix:/path | host:port [--tls-cert F --tls-key F --client-ca F]
                                    run an external signer holding one key
`

// run dispatches a subcommand. It returns when ctx ends or the command fails.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stderr, serveHooks{})
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr, nil, nil)
	case "token":
		return runToken(ctx, args[1:], stdout, stderr)
	case "explain":
		return runExplain(args[1:], stdout, stderr)
	case "check":
		return runCheck(args[1:], stdout, stderr)
	case "keygen":
		return runKeygen(args[1:], stdout, stderr)
	case "jwks":
		return runJWKS(args[1:], stdout, stderr)
	case "keys":
		return runKeys(ctx, args[1:], stdout, stderr)
	case "signer":
		return runSigner(ctx, args[1:], stderr, nil)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// serveHooks let tests watch and steer runServe.
type serveHooks struct {
	// ready receives the TCP listen address once the broker listens.
	ready chan<- string
	// reload, when it receives, reloads the policy as SIGHUP does.
	reload <-chan struct{}
	// probeInterval replaces the configured probe interval when not zero.
	probeInterval time.Duration
	// looked, when not nil, receives after every look the config watcher
	// takes at the file, so that tests can wait for looks instead of time.
	looked chan<- struct{}
	// built, when not nil, receives what serve assembled.
	built func(daemon.Components)
	// applyRotation, when not nil, fails the apply of a new rotation
	// state when it returns an error (daemon.Hooks.ApplyRotation).
	applyRotation func(client string, active string) error
	// tlsInterval replaces tls.reload_interval when not zero; tlsLooked,
	// when not nil, receives after every look at the TLS files, and
	// svidUpdated after every update of the SPIFFE Workload API.
	tlsInterval time.Duration
	tlsLooked   chan<- struct{}
	svidUpdated chan<- tlsmaterial.CertInfo
}

// daemon returns the hooks as daemon.Run takes them.
func (h serveHooks) daemon() daemon.Hooks {
	d := daemon.Hooks{Reload: h.reload, ProbeInterval: h.probeInterval, Looked: h.looked, Built: h.built,
		TLSInterval: h.tlsInterval, TLSLooked: h.tlsLooked, SVIDUpdated: h.svidUpdated, ApplyRotation: h.applyRotation}
	if h.ready != nil {
		d.Ready = func(addr string) { h.ready <- addr }
	}
	return d
}

// runServe serves with a config file until ctx ends. SIGHUP (or
// hooks.reload) reloads the keys and the policy from the file, all or
// nothing; a config that fails to load changes nothing.
func runServe(ctx context.Context, args []string, stderr io.Writer, hooks serveHooks) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("serve: --config is required")
	}
	cfg, err := daemon.Load(*configPath)
	if err != nil {
		return err
	}
	return daemon.Run(ctx, cfg, daemon.Options{ConfigPath: *configPath, Stderr: stderr, Hooks: hooks.daemon()})
}
