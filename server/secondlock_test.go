package server

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/identity"
)

// TestAuthInterceptorsRefuseCallsWithoutCaller: the tap authenticates every
// call, and the unary and stream interceptors are the second lock: a call
// that reaches them without an identity in its context (a tap skipped or
// changed) is refused with Unauthenticated and its handler never runs;
// health passes, and so does a call that carries an identity.
func TestAuthInterceptorsRefuseCallsWithoutCaller(t *testing.T) {
	t.Parallel()
	s := &Server{}
	const getToken = "/tokenbroker.v1.TokenBrokerService/GetToken"
	authed := context.WithValue(context.Background(), callerKey{}, identity.MustParse("local:test"))
	for _, c := range []struct {
		name   string
		ctx    context.Context
		method string
		want   codes.Code
	}{
		{"no caller", context.Background(), getToken, codes.Unauthenticated},
		{"zero identity", context.WithValue(context.Background(), callerKey{}, identity.ID{}), getToken, codes.Unauthenticated},
		{"reflection without caller", context.Background(), "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", codes.Unauthenticated},
		{"health", context.Background(), "/grpc.health.v1.Health/Check", codes.OK},
		{"caller", authed, getToken, codes.OK},
	} {
		ran := false
		_, err := s.authUnary(c.ctx, nil, &grpc.UnaryServerInfo{FullMethod: c.method}, func(context.Context, any) (any, error) {
			ran = true
			return nil, nil
		})
		if got := status.Code(err); got != c.want || ran != (c.want == codes.OK) {
			t.Errorf("unary, %s: %v (handler ran: %v), want %v", c.name, err, ran, c.want)
		}
		ran = false
		err = s.authStream(nil, ctxStream{ctx: c.ctx}, &grpc.StreamServerInfo{FullMethod: c.method}, func(any, grpc.ServerStream) error {
			ran = true
			return nil
		})
		if got := status.Code(err); got != c.want || ran != (c.want == codes.OK) {
			t.Errorf("stream, %s: %v (handler ran: %v), want %v", c.name, err, ran, c.want)
		}
	}
}

// ctxStream is a ServerStream that only has a context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }
