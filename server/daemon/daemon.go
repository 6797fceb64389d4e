// Package daemon assembles the whole broker from a parsed config, for the
// serve and dev commands alike: the HTTP clients tuned for Maskinporten and
// Altinn, hedgers and breakers, the key ring, the broker, metrics, tracing,
// audit, the gRPC servers, the operator endpoints, the signer probes and
// config reloads; and it stops them in one order.
package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenbroker/tokenbroker/broker/audit"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/metrics"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
)

// Options are what Run takes besides the config.
type Options struct {
	// ConfigPath is the file the config was read from: SIGHUP and the
	// config watcher reload it. Empty means no reloads (dev mode).
	ConfigPath string
	// BaseDir resolves the config's relative paths; default the config
	// file's directory.
	BaseDir string
	// Stderr receives the log (unless Logger is set) and the audit log
	// when its sink is stderr.
	Stderr io.Writer
	// Logger, when not nil, replaces the JSON logger at log_level.
	Logger *slog.Logger
	// OpenKey, when not nil, opens the keys instead of package keys (dev
	// mode's in-memory key).
	OpenKey func(context.Context, signer.Spec) (*signer.Key, error)
	// Hooks let tests watch and steer Run.
	Hooks Hooks
}

// Hooks let tests watch and steer Run.
type Hooks struct {
	// Ready, when not nil, is called with the TCP listen address once the
	// broker listens.
	Ready func(addr string)
	// Reload, when it receives, reloads the config as SIGHUP does.
	Reload <-chan struct{}
	// ProbeInterval replaces the configured probe interval when not zero.
	ProbeInterval time.Duration
	// Looked, when not nil, receives after every look the config watcher
	// takes at the file, so that tests can wait for looks instead of time.
	Looked chan<- struct{}
	// Built, when not nil, receives what Run assembled, before it serves.
	Built func(Components)
	// TLSInterval replaces tls.reload_interval when not zero; TLSLooked,
	// when not nil, receives after every look at the TLS files, and
	// SVIDUpdated after every update of the SPIFFE Workload API.
	TLSInterval time.Duration
	TLSLooked   chan<- struct{}
	SVIDUpdated chan<- tlsmaterial.CertInfo
	// Rotation, when not nil, gets the running key rotation (when a client
	// rotates), to rotate on demand as `keys rotate` does. Do not close it.
	Rotation func(*Rotation)
	// ApplyRotation, when not nil, is asked before a client's new rotation
	// state (active is its active kid) is applied to the key ring; an
	// error fails the apply, as a new key this replica cannot open does.
	ApplyRotation func(client, active string) error
}

// Run builds the whole broker from cfg (HTTP clients, hedgers and
// breakers, key ring, broker, metrics, tracing, audit, gRPC servers,
// operator endpoints, probes, reloads) and serves until ctx ends, then
// stops every server gracefully. serve and dev both run through it. cfg
// must have been checked (Load and Parse check).
func Run(ctx context.Context, cfg *Config, o Options) error {
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	baseDir := o.BaseDir
	if baseDir == "" && o.ConfigPath != "" {
		baseDir = filepath.Dir(o.ConfigPath)
	}
	hooks := o.Hooks
	log := o.Logger
	if log == nil {
		log = newLogger(o.Stderr, cfg.LogLevel)
	}
	auditLog, closeAudit, err := openAudit(cfg.Audit.Sink, baseDir, o.Stderr)
	if err != nil {
		return err
	}
	defer closeAudit()
	tp, stopTracing, err := SetupTracing(ctx, cfg.Tracing)
	if err != nil {
		return err
	}
	defer stopTracing()
	m := metrics.New()
	rt, err := buildBroker(ctx, cfg, baseDir, log, telemetry{metrics: m, tracer: tp}, o.OpenKey)
	if err != nil {
		return err
	}
	defer rt.ring.Close()
	defer rt.closeShared()
	b := rt.broker
	defer b.Close()
	m.ObserveBroker(b)
	m.ObserveKeys(rt.metricKeys)
	m.ObserveFallbacks(rt.fallbacks)
	var rotationPass func(client, outcome string)
	if rt.rotation != nil {
		defer rt.rotation.close()
		pass := m.ObserveRotation(rt.rotation.metrics)
		m.ObserveSelfServiceCertificate(func() time.Time { return rt.rotation.certExpiry })
		rotationPass = pass
	}

	var grpcOpts []grpc.ServerOption
	if tp != nil {
		grpcOpts = append(grpcOpts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp))))
	}
	common := server.Config{
		Broker: b, Logger: log, Audit: auditLog,
		Interceptors:  []grpc.UnaryServerInterceptor{m.UnaryInterceptor()},
		ServerOptions: grpcOpts,
		CallerRate:    cfg.Limits.CallerRate, CallerBurst: cfg.Limits.CallerBurst,
		Limits: cfg.Limits.serverLimits(),
	}
	insecureID, unixIDs, unixOther, err := cfg.identities()
	if err != nil {
		return err
	}
	tcpCfg := common
	var healthOpts []server.HealthOption
	if rt.rotation != nil {
		healthOpts = append(healthOpts, server.WithRotation(rt.rotation.health))
	}
	if cfg.Insecure {
		tcpCfg.Authenticate = server.Fixed(insecureID)
		log.Warn("INSECURE: plaintext gRPC without caller authentication on a loopback address; every caller is "+insecureID.String(),
			slog.String("listen", cfg.Listen))
	} else {
		ts, err := openTLS(ctx, cfg.TLS, baseDir, log, hooks)
		if err != nil {
			return err
		}
		defer ts.close()
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go ts.watch(watchCtx)
		tcpCfg.Authenticate = ts.auth
		tcpCfg.ServerOptions = append(slices.Clone(grpcOpts), grpc.Creds(ts.creds))
		m.ObserveTLS(ts.metric)
		healthOpts = append(healthOpts, server.WithTLS(ts.status))
	}
	srv, err := server.New(tcpCfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// The config check saw a name; this is where it really bound (a
	// "localhost" that resolves elsewhere must not serve plaintext).
	if ta, ok := lis.Addr().(*net.TCPAddr); cfg.Insecure && (!ok || !ta.IP.IsLoopback()) {
		lis.Close()
		return fmt.Errorf("insecure: %q bound %s, which is not a loopback address", cfg.Listen, lis.Addr())
	}
	servers := []*server.Server{srv}
	serving := []func() error{func() error { return srv.Serve(ctx, lis) }}
	if cfg.Unix.Path != "" {
		ulis, err := ListenUnix(resolvePath(baseDir, cfg.Unix.Path), cfg.Unix.Mode)
		if err != nil {
			lis.Close()
			return err
		}
		ucfg := common
		ucfg.Authenticate = server.UnixPeer(unixIDs, unixOther)
		ucfg.ServerOptions = append(slices.Clone(grpcOpts), grpc.Creds(server.UnixCredentials()))
		usrv, err := server.New(ucfg)
		if err != nil {
			return err
		}
		servers = append(servers, usrv)
		serving = append(serving, func() error { return usrv.Serve(ctx, ulis) })
		log.Info("serving on unix socket", slog.String("path", ulis.Addr().String()))
	}
	if cfg.HTTPListen != "" {
		stopHTTP, err := serveHTTP(ctx, cfg.HTTPListen, server.HTTPHandler(b, srv.Ready, m.Handler(), rt.keyStatus, healthOpts...), log)
		if err != nil {
			lis.Close()
			return err
		}
		defer stopHTTP()
	}
	rt.ring.Notify(rt.setKey, func(ok bool) {
		for _, s := range servers {
			s.SetServing(ok)
		}
	})
	// After Notify: a rotation's first pass may switch keys at once, and the
	// Maskinporten clients must hear of it.
	if rt.rotation != nil {
		startRotation(ctx, rt, hooks, rotationPass)
	}
	probe := time.Duration(cfg.Maskinporten.SignProbeInterval)
	if hooks.ProbeInterval > 0 {
		probe = hooks.ProbeInterval
	}
	go rt.ring.RunProbes(ctx, probe)
	if o.ConfigPath != "" {
		reloadOnSignal(ctx, o.ConfigPath, rt, log, hooks.Reload, time.Duration(cfg.ConfigWatchInterval), hooks.Looked)
	}
	if hooks.Built != nil {
		c := rt.components(tp, auditLog, common, len(servers), cfg.HTTPListen != "", o.ConfigPath != "")
		c.ProbeInterval = probe
		hooks.Built(c)
	}
	log.Info("serving", slog.String("addr", lis.Addr().String()), slog.Bool("mtls", !cfg.Insecure),
		slog.Int("policy_rules", len(cfg.Policy)))
	if hooks.Ready != nil {
		hooks.Ready(lis.Addr().String())
	}
	errc := make(chan error, len(serving))
	for _, serve := range serving {
		go func() { errc <- serve() }()
	}
	var first error
	for range serving {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	log.Info("stopped")
	return first
}

// reloadOnSignal reloads the config whenever reload (or SIGHUP) fires, and,
// when watch is not zero, whenever a look at the file every watch finds
// its content changed, until ctx ends: keys and policy change atomically
// per client; a config that fails to load changes nothing. A watched
// change that fails is reported once, not at every look. looked, when not
// nil, receives after each look (for tests). It takes SIGHUP and the
// file's digest before it returns, so that neither a signal nor a change
// right after the start is lost; the loop runs in its own goroutine.
func reloadOnSignal(ctx context.Context, path string, rt *running, log *slog.Logger, reload <-chan struct{}, watch time.Duration, looked chan<- struct{}) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	seen := fileDigest(path)
	go func() {
		defer signal.Stop(hup)
		reloadLoop(ctx, path, rt, log, hup, reload, watch, looked, seen)
	}()
}

func reloadLoop(ctx context.Context, path string, rt *running, log *slog.Logger, hup <-chan os.Signal, reload <-chan struct{}, watch time.Duration, looked chan<- struct{}, seen string) {
	var tick <-chan time.Time
	if watch > 0 {
		t := time.NewTicker(watch)
		defer t.Stop()
		tick = t.C
	}
	for {
		var digest string
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-reload:
		case <-tick:
			digest = fileDigest(path)
			if looked != nil {
				select {
				case looked <- struct{}{}:
				case <-ctx.Done():
					return
				}
			}
			if digest == "" || digest == seen {
				continue
			}
			log.Info("config file changed; reloading")
		}
		if digest == "" {
			digest = fileDigest(path)
		}
		seen = digest
		cfg, err := Load(path)
		if err == nil {
			err = rt.reload(ctx, cfg, filepath.Dir(path))
		}
		if err != nil {
			log.Error("reload failed; keeping the running keys and policy", slog.String("error", err.Error()))
			continue
		}
		log.Info("config reloaded: keys and policy (other changes need a restart)", slog.Int("policy_rules", len(cfg.Policy)))
	}
}

// fileDigest is the SHA-256 of the file at path, or "" when it cannot be
// read (a config map between two versions, say).
func fileDigest(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(data)
	return string(sum[:])
}

// LoadTLS reads the server certificate and the callers' CA. The handshake
// only requests a client certificate; server.MTLS verifies it per call, so
// that a bad one gets a clear Unauthenticated instead of a broken
// connection.
func LoadTLS(c TLSConfig, baseDir string) (credentials.TransportCredentials, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(resolvePath(baseDir, c.Cert), resolvePath(baseDir, c.Key))
	if err != nil {
		return nil, nil, fmt.Errorf("tls.cert/tls.key: %w", err)
	}
	caPEM, err := os.ReadFile(resolvePath(baseDir, c.ClientCA))
	if err != nil {
		return nil, nil, fmt.Errorf("tls.client_ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("tls.client_ca: %s holds no PEM certificate", c.ClientCA)
	}
	return credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}), roots, nil
}

// ListenUnix listens on a unix socket at path, replacing a stale socket
// file, with the given octal mode (default 0660).
func ListenUnix(path, mode string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("unix.path: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("unix.path: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("unix.path: %w", err)
	}
	m := uint64(0o660)
	if mode != "" {
		m, _ = strconv.ParseUint(mode, 8, 32)
	}
	if err := os.Chmod(path, os.FileMode(m)); err != nil {
		lis.Close()
		return nil, fmt.Errorf("unix.mode: %w", err)
	}
	return lis, nil
}

// openAudit opens the audit sink: stderr, or a file opened for appending
// with mode 0600 (audit.OpenFile: a file others can read, or owned by
// another user, is refused).
func openAudit(sink, baseDir string, stderr io.Writer) (*audit.Log, func(), error) {
	if sink == "" || sink == "stderr" {
		return audit.New(stderr), func() {}, nil
	}
	path := resolvePath(baseDir, strings.TrimPrefix(sink, "file:"))
	f, err := audit.OpenFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("audit.sink: %w", err)
	}
	return audit.New(f), func() { f.Close() }, nil
}

// Limits of the operator endpoints (http_listen): open connections (more
// wait in the listen queue), header bytes of a request, and how long a
// keep-alive connection may stay idle.
const (
	operatorMaxConns       = 64
	operatorMaxHeaderBytes = 16 << 10
)

// operatorIdleTimeout is a variable for tests.
var operatorIdleTimeout = time.Minute

// serveHTTP serves the operator endpoints (/metrics, /healthz, /readyz) on
// addr until stop is called.
func serveHTTP(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http_listen: %w", err)
	}
	// Nobody authenticates here, so what a peer can hold is bounded: a
	// few connections, small headers, and no connection kept open idle
	// (Go keeps an idle keep-alive connection forever unless told, and
	// the process's file descriptors are the gRPC listener's too).
	lis = netutil.LimitListener(lis, operatorMaxConns)
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: operatorIdleTimeout, MaxHeaderBytes: operatorMaxHeaderBytes}
	go func() { _ = hs.Serve(lis) }()
	base := "http://" + lis.Addr().String()
	log.Info("operator endpoints", slog.String("metrics", base+"/metrics"), slog.String("healthz", base+"/healthz"),
		slog.String("readyz", base+"/readyz"))
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

// startRotation starts the rotation's loops: the rotators, and the
// followers that apply the state to the key ring and ack it.
func startRotation(ctx context.Context, rt *running, hooks Hooks, pass func(client, outcome string)) {
	apply := rt.applyRotation
	if hooks.ApplyRotation != nil {
		apply = func(ctx context.Context, client string, st rotation.State) error {
			if err := hooks.ApplyRotation(client, st.Active); err != nil {
				return err
			}
			return rt.applyRotation(ctx, client, st)
		}
	}
	rt.rotation.run(ctx, apply, rt.signsWith, pass)
	if hooks.Rotation != nil {
		hooks.Rotation(&Rotation{kr: rt.rotation, cfg: rt.cfg})
	}
}
