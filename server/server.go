// Package server is the gRPC face of the broker: it implements
// tokenbroker.v1.TokenBrokerService on a broker (see Broker), registers the
// standard health service and server reflection, logs one line per call,
// recovers from panics, and maps broker errors to gRPC status codes in one
// place (status.go).
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/audit"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// MaxRequestBytes bounds the size of one request message.
const MaxRequestBytes = 64 << 10

// TokenIssuer is what TokenBrokerService needs of the broker.
type TokenIssuer interface {
	GetToken(ctx context.Context, r broker.Request) (*broker.Token, error)
}

// Broker is what a Server needs of the broker: tokens and the system user
// lifecycle. *broker.Broker is one; tests use fakes.
type Broker interface {
	TokenIssuer
	SystemUsers
}

var _ Broker = (*broker.Broker)(nil)

// Config configures a Server.
type Config struct {
	// Broker serves the tokens and the system users.
	Broker Broker
	// Logger receives one line per call; nil discards.
	Logger *slog.Logger
	// ServerOptions are added to the gRPC server's options (credentials,
	// for instance).
	ServerOptions []grpc.ServerOption
	// StopTimeout bounds a graceful stop before open calls are cut;
	// 0 means 10 s.
	StopTimeout time.Duration
	// Authenticate finds the caller's identity (MTLS, UnixPeer, Fixed).
	// Required: every call but health checks needs an identity.
	Authenticate Authenticator
	// Audit receives one record per GetToken decision; nil discards.
	Audit *audit.Log
	// CallerRate and CallerBurst set a token bucket per caller identity;
	// a CallerRate of 0 means no limit, a CallerBurst of 0 twice the rate
	// (plus one).
	CallerRate  float64
	CallerBurst int
	// Limits bound what a peer can hold before and after it authenticates;
	// zero fields take DefaultLimits.
	Limits Limits
	// Interceptors run after the log interceptor and before
	// authentication (metrics, for instance).
	Interceptors []grpc.UnaryServerInterceptor
}

// Server is the broker's gRPC server.
type Server struct {
	grpc         *grpc.Server
	health       *health.Server
	log          *slog.Logger
	stopTimeout  time.Duration
	authenticate Authenticator
	audit        *audit.Log
	throttle     *audit.Throttle
	limits       *limiters
	conn         Limits
	conns        *connGuard // of the TCP listener being served, if any
	refusedLog   rate.Sometimes
	ready        atomic.Bool
	stopping     atomic.Bool
}

// New builds the gRPC server and registers the services. It does not listen.
func New(cfg Config) (*Server, error) {
	if cfg.Broker == nil {
		return nil, errors.New("server: no broker")
	}
	if cfg.Authenticate == nil {
		return nil, errors.New("server: no authenticator")
	}
	s := &Server{
		health:       health.NewServer(),
		log:          cfg.Logger,
		stopTimeout:  cfg.StopTimeout,
		authenticate: cfg.Authenticate,
		audit:        cfg.Audit,
		throttle:     audit.NewThrottle(cfg.Audit, 0, 0),
	}
	if cfg.CallerRate > 0 {
		burst := cfg.CallerBurst
		if burst <= 0 {
			burst = int(2*cfg.CallerRate) + 1
		}
		s.limits = &limiters{limit: rate.Limit(cfg.CallerRate), burst: burst, m: map[string]*rate.Limiter{}}
	}
	if err := cfg.Limits.Check(); err != nil {
		return nil, fmt.Errorf("server: limits: %w", err)
	}
	s.conn = cfg.Limits.withDefaults()
	s.refusedLog = rate.Sometimes{Interval: 10 * time.Second}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.stopTimeout == 0 {
		s.stopTimeout = DefaultStopTimeout
	}
	opts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.MaxConcurrentStreams(s.conn.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(s.conn.MaxHeaderBytes),
		grpc.ConnectionTimeout(s.conn.HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: s.conn.IdleTimeout,
			// Ping a quiet connection now and then so that a peer that
			// vanished (a half-open connection) is closed.
			Time: 2 * time.Minute, Timeout: 20 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.conn.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.InTapHandle(s.tap),
		grpc.ForceServerCodecV2(newLenientCodec()),
		grpc.ChainUnaryInterceptor(slices.Concat(
			[]grpc.UnaryServerInterceptor{s.recoverUnary, s.badMessageUnary, s.logUnary},
			cfg.Interceptors,
			[]grpc.UnaryServerInterceptor{s.authUnary, s.rateUnary})...),
		grpc.ChainStreamInterceptor(s.recoverStream, s.authStream, s.badMessageStream),
	}, cfg.ServerOptions...)
	s.grpc = grpc.NewServer(opts...)
	tokenbrokerv1.RegisterTokenBrokerServiceServer(s.grpc, &tokenService{broker: cfg.Broker, log: s.log, srv: s})
	tokenbrokerv1.RegisterSystemUserServiceServer(s.grpc, &systemUserService{broker: cfg.Broker, srv: s})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.ready.Store(true)
	return s, nil
}

// Ready mirrors the gRPC health status: true while serving, false once a
// stop has begun or while SetServing(false) holds.
func (s *Server) Ready() bool { return s.ready.Load() }

// SetServing sets the health status of the server and of the token service
// (NOT_SERVING while a signing backend is down, say). After a stop began
// it does nothing.
func (s *Server) SetServing(ok bool) {
	if s.stopping.Load() {
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, st)
	s.ready.Store(ok)
}

// GRPC returns the underlying server, for registering more services.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Serve serves on lis until ctx ends, then stops gracefully: health turns
// NOT_SERVING, open calls get StopTimeout to finish, and the rest are cut.
// It returns nil after a stop caused by ctx.
//
// On a TCP listener the connection limits of Config.Limits apply
// (MaxConnections, MaxPendingPerIP, FirstRequestTimeout).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if lis.Addr().Network() == "tcp" {
		g := newConnGuard(lis, s.conn, func(reason string) {
			s.refusedLog.Do(func() {
				s.log.Warn("closed a connection at a limit (logged at most every 10 s)", slog.String("limit", reason))
			})
		})
		s.conns, lis = g, g
	}
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.stopping.Store(true)
	s.ready.Store(false)
	if GracefulStop(s.grpc, s.health, s.stopTimeout) {
		s.log.Warn("graceful stop timed out; closed open calls")
	}
	if err := s.throttle.Flush(); err != nil {
		s.log.Error("audit write failed", slog.String("error", err.Error()))
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// tokenService implements TokenBrokerService.
type tokenService struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	broker TokenIssuer
	log    *slog.Logger
	srv    *Server
}

func (t *tokenService) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	caller, _ := CallerFromContext(ctx)
	r := broker.Request{
		Caller:      caller,
		Client:      req.GetClient(),
		CustomerOrg: req.GetCustomerOrg(),
		Scopes:      req.GetScopes(),
		ExternalRef: req.GetExternalRef(),
		Resource:    req.GetResource(),
	}
	switch req.GetKind() {
	case tokenbrokerv1.TokenKind_TOKEN_KIND_UNSPECIFIED, tokenbrokerv1.TokenKind_TOKEN_KIND_MASKINPORTEN:
	case tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN:
		r.Kind = broker.KindAltinn
	default:
		return nil, invalidArgument("kind", "want TOKEN_KIND_MASKINPORTEN or TOKEN_KIND_ALTINN")
	}
	// The audit record is built only when there is an audit log: a cache
	// hit should cost as little as the transport allows.
	var rec *audit.Record
	if t.srv.audit != nil {
		rec = &audit.Record{
			Caller: caller, Method: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName,
			Client: r.Client, CustomerOrg: r.CustomerOrg, Scopes: append([]string(nil), r.Scopes...),
			ExternalRef: r.ExternalRef, Resource: r.Resource,
		}
	}
	if d := req.GetMinValidity(); d != nil {
		if err := d.CheckValid(); err != nil {
			st := invalidArgument("min_validity", "not a valid duration")
			t.srv.writeAudit(rec, audit.Invalid, st)
			return nil, st
		}
		r.MinValidity = d.AsDuration()
	}
	tok, err := t.broker.GetToken(ctx, r)
	if err != nil {
		st := toStatus(err)
		if errors.Is(st, errInternal) {
			t.log.ErrorContext(ctx, "GetToken failed", slog.String("error", err.Error()))
		}
		t.srv.writeAudit(rec, decisionOf(err), st)
		return nil, st
	}
	if rec != nil {
		rec.Client, rec.KeyID, rec.CustomerOrg = tok.Client, tok.KeyID, tok.CustomerOrg
		rec.Cached, rec.TokenJTI, rec.TokenSHA256 = tok.Cached, tok.JWTID, tok.Fingerprint
		rec.UpstreamLatencyMS = float64(tok.UpstreamLatency.Microseconds()) / 1000
		t.srv.writeAudit(rec, audit.Allow, nil)
	}
	return &tokenbrokerv1.GetTokenResponse{
		AccessToken:  tok.AccessToken,
		TokenType:    tok.TokenType,
		ExpiresAt:    timestamppb.New(tok.ExpiresAt),
		Scopes:       tok.Scopes,
		SystemuserId: tok.SystemUserID,
		SystemId:     tok.SystemID,
		Client:       tok.Client,
		KeyId:        tok.KeyID,
		CustomerOrg:  tok.CustomerOrg,
		IssuedAt:     timestamppb.New(tok.IssuedAt),
		Cached:       tok.Cached,
		Kind:         kindOf(tok.Kind),
	}, nil
}

func kindOf(k string) tokenbrokerv1.TokenKind {
	if k == broker.KindAltinn {
		return tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN
	}
	return tokenbrokerv1.TokenKind_TOKEN_KIND_MASKINPORTEN
}

// decisionOf classifies a GetToken failure for the audit log.
func decisionOf(err error) string {
	var fe *broker.FieldError
	switch {
	case errors.As(err, &fe):
		return audit.Invalid
	case errors.Is(err, broker.ErrPermissionDenied), errors.Is(err, broker.ErrScopeNotAllowed):
		return audit.Deny
	default:
		return audit.Error
	}
}

// writeAudit completes rec with the outcome and writes it. A failed audit
// write is logged; the call's outcome stands. A nil rec is skipped.
// Unauthenticated, invalid and rate-limited calls go through the throttle,
// keyed by caller (or peer IP when there is none), so that one peer cannot
// flood the sink; every other decision is written.
func (s *Server) writeAudit(rec *audit.Record, decision string, st error) {
	if s.audit == nil || rec == nil {
		return
	}
	rec.Decision = decision
	rec.Code = status.Code(st).String()
	if st != nil {
		rec.Reason = status.Convert(st).Message()
	}
	var err error
	switch decision {
	case audit.Unauthenticated, audit.Invalid, audit.RateLimited:
		key := rec.Caller
		if key == "" {
			key = "peer " + rec.Peer
			if host, _, herr := net.SplitHostPort(rec.Peer); herr == nil {
				key = "peer " + host
			}
		}
		err = s.throttle.Write(key, *rec)
	default:
		err = s.audit.Write(*rec)
	}
	if err != nil {
		s.log.Error("audit write failed", slog.String("error", err.Error()))
	}
}

// auditRefusal records a call refused before it reached its handler.
func (s *Server) auditRefusal(ctx context.Context, caller, method string, req any, decision string, code codes.Code, reason string) {
	if s.audit == nil {
		return
	}
	rec := &audit.Record{Caller: caller, Method: method}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		rec.Peer = p.Addr.String()
	}
	if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok {
		rec.Client, rec.CustomerOrg, rec.Scopes = r.GetClient(), r.GetCustomerOrg(), append([]string(nil), r.GetScopes()...)
		rec.ExternalRef, rec.Resource = r.GetExternalRef(), r.GetResource()
	}
	s.writeAudit(rec, decision, status.Error(code, reason))
}
