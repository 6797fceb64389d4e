// Package server is the gRPC face of the broker: it implements
// tokenbroker.v1.TokenBrokerService on a *broker.Broker, registers the
// standard health service and server reflection, logs one line per call,
// recovers from panics, and maps broker errors to gRPC status codes in one
// place (status.go).
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// MaxRequestBytes bounds the size of one request message.
const MaxRequestBytes = 64 << 10

// Config configures a Server.
type Config struct {
	// Broker serves the tokens.
	Broker *broker.Broker
	// Logger receives one line per call; nil discards.
	Logger *slog.Logger
	// ServerOptions are added to the gRPC server's options (credentials,
	// for instance).
	ServerOptions []grpc.ServerOption
	// StopTimeout bounds a graceful stop before open calls are cut;
	// 0 means 10 s.
	StopTimeout time.Duration
}

// Server is the broker's gRPC server.
type Server struct {
	grpc        *grpc.Server
	health      *health.Server
	log         *slog.Logger
	stopTimeout time.Duration
}

// New builds the gRPC server and registers the services. It does not listen.
func New(cfg Config) (*Server, error) {
	if cfg.Broker == nil {
		return nil, errors.New("server: no broker")
	}
	s := &Server{
		health:      health.NewServer(),
		log:         cfg.Logger,
		stopTimeout: cfg.StopTimeout,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.stopTimeout == 0 {
		s.stopTimeout = 10 * time.Second
	}
	opts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ChainUnaryInterceptor(s.recoverUnary, s.logUnary),
	}, cfg.ServerOptions...)
	s.grpc = grpc.NewServer(opts...)
	tokenbrokerv1.RegisterTokenBrokerServiceServer(s.grpc, &tokenService{broker: cfg.Broker, log: s.log})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// GRPC returns the underlying server, for registering more services.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Serve serves on lis until ctx ends, then stops gracefully: health turns
// NOT_SERVING, open calls get StopTimeout to finish, and the rest are cut.
// It returns nil after a stop caused by ctx.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(s.stopTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		s.log.Warn("graceful stop timed out; closing open calls")
		s.grpc.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// tokenService implements TokenBrokerService.
type tokenService struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	broker *broker.Broker
	log    *slog.Logger
}

func (t *tokenService) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	r := broker.Request{
		Client:      req.GetClient(),
		CustomerOrg: req.GetCustomerOrg(),
		Scopes:      req.GetScopes(),
		ExternalRef: req.GetExternalRef(),
		Resource:    req.GetResource(),
	}
	if d := req.GetMinValidity(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalidArgument("min_validity", "not a valid duration")
		}
		r.MinValidity = d.AsDuration()
	}
	tok, err := t.broker.GetToken(ctx, r)
	if err != nil {
		st := toStatus(err)
		if st == errInternal {
			t.log.ErrorContext(ctx, "GetToken failed", slog.String("error", err.Error()))
		}
		return nil, st
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
	}, nil
}
