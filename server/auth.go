package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker/audit"
)

// An Authenticator returns the identity of the caller of a call, from its
// transport (the TLS client certificate, the unix socket peer), or an error
// saying why it has none.
type Authenticator func(ctx context.Context) (string, error)

// MTLS authenticates callers by their TLS client certificate, verified
// against roots for client authentication. The identity is the SPIFFE ID
// in a URI SAN when present, else the first DNS SAN, else the subject CN.
// The TLS handshake only requests the certificate, so that a missing,
// expired or foreign certificate gets a clear Unauthenticated here rather
// than a failed handshake.
func MTLS(roots *x509.CertPool) Authenticator {
	return func(ctx context.Context) (string, error) {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return "", errors.New("no peer")
		}
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			return "", errors.New("not a TLS connection")
		}
		certs := ti.State.PeerCertificates
		if len(certs) == 0 {
			return "", errors.New("no client certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			return "", fmt.Errorf("client certificate not accepted: %v", err)
		}
		return certIdentity(certs[0])
	}
}

func certIdentity(c *x509.Certificate) (string, error) {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String(), nil
		}
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0], nil
	}
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName, nil
	}
	return "", errors.New("client certificate names no identity (no SPIFFE URI, DNS name or CN)")
}

// Fixed gives every call the same identity: for plaintext on loopback
// (insecure mode) and dev mode.
func Fixed(identity string) Authenticator {
	return func(context.Context) (string, error) { return identity, nil }
}

// UnixPeer authenticates callers on a unix socket by the uid of the peer
// process (credentials from UnixCredentials): identities maps uids to
// identities; a uid not in it gets fallback, or is refused when fallback is
// empty.
func UnixPeer(identities map[uint32]string, fallback string) Authenticator {
	return func(ctx context.Context) (string, error) {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return "", errors.New("no peer")
		}
		ai, ok := p.AuthInfo.(UnixAuthInfo)
		if !ok || !ai.Known {
			return "", errors.New("peer credentials unknown")
		}
		if id, ok := identities[ai.UID]; ok {
			return id, nil
		}
		if fallback != "" {
			return fallback, nil
		}
		return "", fmt.Errorf("uid %d has no identity", ai.UID)
	}
}

// UnixAuthInfo is the AuthInfo of a unix socket connection: the peer's
// credentials as the kernel reports them.
type UnixAuthInfo struct {
	credentials.CommonAuthInfo
	Known         bool
	UID, GID, PID uint32
}

// AuthType implements credentials.AuthInfo.
func (UnixAuthInfo) AuthType() string { return "unix" }

// UnixCredentials are server transport credentials for a unix socket
// listener that record the peer's uid, gid and pid.
func UnixCredentials() credentials.TransportCredentials { return unixCreds{} }

type unixCreds struct{}

func (unixCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, UnixAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (unixCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ai := UnixAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	if uc, ok := c.(*net.UnixConn); ok {
		ai.UID, ai.GID, ai.PID, ai.Known = peerCred(uc)
	}
	return c, ai, nil
}

func (unixCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix"}
}
func (unixCreds) Clone() credentials.TransportCredentials { return unixCreds{} }
func (unixCreds) OverrideServerName(string) error         { return nil }

// callInfo travels in a call's context from the log interceptor inward, so
// that the log line can name the caller that authentication found.
type callInfo struct{ caller string }

type callInfoKey struct{}

// CallerFromContext returns the authenticated identity of the call.
func CallerFromContext(ctx context.Context) (string, bool) {
	ci, ok := ctx.Value(callInfoKey{}).(*callInfo)
	if !ok || ci.caller == "" {
		return "", false
	}
	return ci.caller, true
}

// publicMethods need no caller identity: probes and tools use them.
var publicMethods = map[string]bool{
	"/grpc.health.v1.Health/Check": true,
	"/grpc.health.v1.Health/List":  true,
}

// authUnary finds the caller's identity or answers Unauthenticated.
func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if publicMethods[info.FullMethod] {
		return h(ctx, req)
	}
	id, err := s.authenticate(ctx)
	if err != nil {
		s.auditRefusal(ctx, "", info.FullMethod, req, audit.Unauthenticated, codes.Unauthenticated, err.Error())
		return nil, status.Error(codes.Unauthenticated, "unauthenticated: "+err.Error())
	}
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		ci.caller = id
	} else {
		ctx = context.WithValue(ctx, callInfoKey{}, &callInfo{caller: id})
	}
	return h(ctx, req)
}

// limiters holds one token bucket per caller identity.
type limiters struct {
	limit rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*rate.Limiter
}

// maxLimiters bounds the map; past it, it starts afresh (identities come
// from certificates of a trusted CA, so this is far above real use).
const maxLimiters = 10_000

func (l *limiters) get(id string) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.m[id]
	if !ok {
		if len(l.m) >= maxLimiters {
			l.m = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(l.limit, l.burst)
		l.m[id] = lim
	}
	return lim
}

// rateUnary refuses callers above their rate with ResourceExhausted and a
// RetryInfo saying when to come back.
func (s *Server) rateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	id, ok := CallerFromContext(ctx)
	if !ok || s.limits == nil {
		return h(ctx, req)
	}
	r := s.limits.get(id).Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		msg := fmt.Sprintf("rate limit of caller %q exceeded; retry in %v", id, d.Round(time.Millisecond))
		s.auditRefusal(ctx, id, info.FullMethod, req, audit.RateLimited, codes.ResourceExhausted, msg)
		st, err := status.New(codes.ResourceExhausted, msg).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		if err != nil {
			return nil, status.Error(codes.ResourceExhausted, msg)
		}
		return nil, st.Err()
	}
	return h(ctx, req)
}
