package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// fakeBroker is a server.Broker whose GetToken is a function; its system
// user methods are those of the embedded nil interface (they panic: the
// tests that use it make no such call).
type fakeBroker struct {
	server.SystemUsers
	getToken func(context.Context, broker.Request) (*broker.Token, error)
}

var _ server.Broker = (*fakeBroker)(nil)

func (f *fakeBroker) GetToken(ctx context.Context, r broker.Request) (*broker.Token, error) {
	return f.getToken(ctx, r)
}

// dialFake serves a Server on b over bufconn and returns a client.
func dialFake(t *testing.T, b server.Broker) tokenbrokerv1.TokenBrokerServiceClient {
	t.Helper()
	s, err := server.New(server.Config{Broker: b, Authenticate: server.Fixed(identity.MustParse("local:fake"))})
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return tokenbrokerv1.NewTokenBrokerServiceClient(conn)
}

// TestGetTokenAgainstFake: the service hands the broker the request as the
// caller sent it, with the authenticated caller, and the broker's token
// back field by field; no Maskinporten, no keys.
func TestGetTokenAgainstFake(t *testing.T) {
	t.Parallel()
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var got broker.Request
	c := dialFake(t, &fakeBroker{getToken: func(_ context.Context, r broker.Request) (*broker.Token, error) {
		got = r
		return &broker.Token{Token: &maskinporten.Token{AccessToken: "opaque", TokenType: "Bearer", ExpiresAt: exp,
			Scopes: r.Scopes, SystemUserID: "su-1", SystemID: "991825827_x"},
			Client: "one", KeyID: "kid-1", CustomerOrg: r.CustomerOrg, Cached: true, Kind: broker.KindAltinn}, nil
	}})
	resp, err := c.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Client: "one", CustomerOrg: "310904473",
		Scopes: []string{"a:b"}, ExternalRef: "ref", Kind: tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN})
	if err != nil {
		t.Fatal(err)
	}
	if got.Caller != "local:fake" || got.Client != "one" || got.CustomerOrg != "310904473" || got.ExternalRef != "ref" ||
		len(got.Scopes) != 1 || got.Kind != broker.KindAltinn {
		t.Errorf("the broker got %+v", got)
	}
	if resp.GetAccessToken() != "opaque" || !resp.GetExpiresAt().AsTime().Equal(exp) || resp.GetKeyId() != "kid-1" ||
		resp.GetSystemuserId() != "su-1" || !resp.GetCached() || resp.GetKind() != tokenbrokerv1.TokenKind_TOKEN_KIND_ALTINN {
		t.Errorf("response %v", resp)
	}
}

// TestGetTokenErrorsAgainstFake: each kind of broker error reaches the
// caller as its gRPC code, and an unknown one as a bare Internal.
func TestGetTokenErrorsAgainstFake(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{&broker.FieldError{Field: "customer_org", Reason: "bad"}, codes.InvalidArgument},
		{fmt.Errorf("%w: no rule", broker.ErrPermissionDenied), codes.PermissionDenied},
		{broker.ErrScopeNotAllowed, codes.PermissionDenied},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("secret detail"), codes.Internal},
	} {
		c := dialFake(t, &fakeBroker{getToken: func(context.Context, broker.Request) (*broker.Token, error) { return nil, tc.err }})
		_, err := c.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{"a:b"}})
		if st := status.Convert(err); st.Code() != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, st, tc.want)
		} else if tc.want == codes.Internal && st.Message() == "secret detail" {
			t.Errorf("an internal error's detail reached the caller")
		}
	}
}

func identityLocal() identity.ID { return identity.MustParse("local:fake") }
