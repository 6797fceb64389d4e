package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker/audit"
	"github.com/tokenbroker/tokenbroker/broker/identity"
)

// An Authenticator returns the identity of the caller of a call, from its
// transport (the TLS client certificate, the unix socket peer), or an error
// saying why it has none.
type Authenticator func(ctx context.Context) (identity.ID, error)

// MTLS authenticates callers by their TLS client certificate, verified
// against roots for client authentication (the certificate must allow
// client auth as an extended key usage). The identity is typed by where it
// comes from (identity.FromCertificate): the SPIFFE ID of the only spiffe
// URI SAN, else "dns:" and the first DNS SAN, else "cn:" and the subject CN
// (refused when a CA of the chain has name constraints, which bound SANs
// only). Only the intermediates the peer sent that chain to roots take
// part, and at most MaxClientChain certificates are looked at.
// The TLS handshake only requests the certificate, so that a missing,
// expired or foreign certificate gets a clear Unauthenticated here rather
// than a failed handshake.
func MTLS(roots *x509.CertPool) Authenticator {
	return MTLSRoots(func() *x509.CertPool { return roots })
}

// MTLSRoots is MTLS with the roots in use at each call, so that a new
// callers' CA (tlsmaterial.Files) applies to calls on open connections
// too.
func MTLSRoots(current func() *x509.CertPool) Authenticator {
	return func(ctx context.Context) (identity.ID, error) {
		certs, err := peerCertificates(ctx)
		if err != nil {
			return identity.ID{}, err
		}
		roots := current()
		chains, err := certs[0].Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: trustedIntermediates(roots, certs[1:]), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return identity.ID{}, fmt.Errorf("client certificate not accepted: %v", err)
		}
		id, err := identity.FromCertificate(certs[0])
		if err == nil && id.Kind() == identity.CN && slices.ContainsFunc(chains, constrained) {
			// Name constraints bound SANs, never the CN: a CA limited to
			// some names could otherwise mint any cn: identity.
			return identity.ID{}, errors.New("client certificate not accepted: its CA has name constraints, which do not bound a subject CN; give it a DNS or SPIFFE SAN")
		}
		return id, err
	}
}

// constrained reports whether a certificate of chain carries name
// constraints.
func constrained(chain []*x509.Certificate) bool {
	return slices.ContainsFunc(chain, func(c *x509.Certificate) bool {
		return c.PermittedDNSDomainsCritical || len(c.PermittedDNSDomains) > 0 || len(c.ExcludedDNSDomains) > 0 ||
			len(c.PermittedIPRanges) > 0 || len(c.ExcludedIPRanges) > 0 || len(c.PermittedEmailAddresses) > 0 ||
			len(c.ExcludedEmailAddresses) > 0 || len(c.PermittedURIDomains) > 0 || len(c.ExcludedURIDomains) > 0
	})
}

// MaxClientChain bounds the certificates a client may present: its own
// and the intermediates between it and the callers' CA.
const MaxClientChain = 6

// trustedIntermediates returns the intermediates the peer sent that chain
// to roots, found from the roots down, so that no signature is ever
// checked with a key the peer chose: chain building checks a signature
// against every candidate parent whose name matches, and a peer without
// a certificate of ours could otherwise send intermediates named like our
// CA with keys that are slow to verify with (P-521, say), and make each of
// its calls cost a hundred such checks before it is refused. Verify checks
// the whole chain again (validity, key usages, constraints).
func trustedIntermediates(roots *x509.CertPool, sent []*x509.Certificate) *x509.CertPool {
	trusted := x509.NewCertPool()
	left := slices.Clone(sent)
	for progress := true; progress; {
		progress = false
		for i, c := range left {
			if c == nil {
				continue
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: trusted, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				trusted.AddCert(c)
				left[i], progress = nil, true
			}
		}
	}
	return trusted
}

// Fixed gives every call the same identity: for plaintext on loopback
// (insecure mode) and dev mode.
func Fixed(id identity.ID) Authenticator {
	return func(context.Context) (identity.ID, error) { return id, nil }
}

// UnixPeer authenticates callers on a unix socket by the uid of the peer
// process (credentials from UnixCredentials): identities maps uids to
// identities; a uid not in it gets fallback, or is refused when fallback is
// the zero ID.
func UnixPeer(identities map[uint32]identity.ID, fallback identity.ID) Authenticator {
	return func(ctx context.Context) (identity.ID, error) {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return identity.ID{}, errors.New("no peer")
		}
		ai, ok := p.AuthInfo.(UnixAuthInfo)
		if !ok || !ai.Known {
			return identity.ID{}, errors.New("peer credentials unknown")
		}
		if id, ok := identities[ai.UID]; ok {
			return id, nil
		}
		if !fallback.IsZero() {
			return fallback, nil
		}
		return identity.ID{}, fmt.Errorf("uid %d has no identity", ai.UID)
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

// callerKey carries the caller's identity in a call's context, from the
// authentication in the tap handle inward.
type callerKey struct{}

// CallerFromContext returns the authenticated identity of the call, as its
// canonical string.
func CallerFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(callerKey{}).(identity.ID)
	if !ok || id.IsZero() {
		return "", false
	}
	return id.String(), true
}

// publicMethods need no caller identity: probes and tools use them.
var publicMethods = map[string]bool{
	"/grpc.health.v1.Health/Check": true,
	"/grpc.health.v1.Health/List":  true,
	"/grpc.health.v1.Health/Watch": true,
}

// tap authenticates every call, unary or stream (reflection included), as
// soon as its headers arrive and before its message is read: a peer
// without an identity gets Unauthenticated at once and holds nothing open.
// Health needs no identity; on a connection that has made no
// authenticated call, at most MaxPendingPublicCalls health calls run at a
// time. The identity travels in the call's context.
func (s *Server) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if publicMethods[info.FullMethodName] {
		if p, ok := peer.FromContext(ctx); ok && s.conns != nil {
			if !s.conns.startPublic(p.Addr) {
				return nil, status.Errorf(codes.ResourceExhausted, "at most %d health calls at a time on a connection that has made no authenticated call", MaxPendingPublicCalls)
			}
			// The stream's context ends with the call, however it ends.
			context.AfterFunc(ctx, func() { s.conns.endPublic(p.Addr) })
		}
		return ctx, nil
	}
	id, err := s.authenticate(ctx)
	if err == nil && id.IsZero() {
		err = errors.New("no identity")
	}
	if err != nil {
		// The reason may quote the peer's certificate (x509 errors name
		// candidate issuers): it is cut, so that a peer cannot make every
		// refusal of its calls a large answer.
		msg := clipReason(err.Error())
		s.auditRefusal(ctx, "", info.FullMethodName, nil, audit.Unauthenticated, codes.Unauthenticated, msg)
		return nil, status.Error(codes.Unauthenticated, "unauthenticated: "+msg)
	}
	if p, ok := peer.FromContext(ctx); ok && s.conns != nil {
		s.conns.authenticated(p.Addr)
	}
	return context.WithValue(ctx, callerKey{}, id), nil
}

// maxReason bounds the reason of an authentication refusal.
const maxReason = 256

// clipReason cuts s to maxReason bytes of valid UTF-8.
func clipReason(s string) string {
	if len(s) <= maxReason {
		return s
	}
	return strings.ToValidUTF8(s[:maxReason], "") + "..."
}

// authUnary refuses a call that reached it without an identity (the tap
// authenticates every call; this is the second lock on the door).
func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if _, ok := CallerFromContext(ctx); !ok && !publicMethods[info.FullMethod] {
		return nil, status.Error(codes.Unauthenticated, "unauthenticated")
	}
	return h(ctx, req)
}

// authStream is authUnary for streams (server reflection).
func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if _, ok := CallerFromContext(ss.Context()); !ok && !publicMethods[info.FullMethod] {
		return status.Error(codes.Unauthenticated, "unauthenticated")
	}
	return h(srv, ss)
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
