// Package tokenbrokerclient is the Go client of tokenbroker: dial helpers
// for mTLS (certificate files or a SPIFFE X509Source), unix sockets and
// plaintext loopback, and a TokenSource that
// implements golang.org/x/oauth2.TokenSource for one customer organisation
// and scope set, so that a service gets an *http.Client carrying system
// user tokens in three lines:
//
//	conn, err := tokenbrokerclient.DialMTLS("tokenbroker:50051", "ca.pem", "me.pem", "me-key.pem")
//	ts := tokenbrokerclient.NewTokenSource(conn, tokenbrokerclient.Request{CustomerOrg: "310904473", Scopes: []string{"skatteetaten:kravogbetalinger"}})
//	httpClient := oauth2.NewClient(ctx, ts)
package tokenbrokerclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// DialMTLS connects to target with TLS, trusting the CA in caFile and
// presenting the client certificate and key in certFile and keyFile.
func DialMTLS(target, caFile, certFile, keyFile string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tokenbrokerclient: CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tokenbrokerclient: CA: %s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tokenbrokerclient: client certificate: %w", err)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	return grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
}

// SPIFFESource is what DialSPIFFE needs: the caller's X.509-SVID and the
// trust bundles. *workloadapi.X509Source (go-spiffe v2) is one, and keeps
// both current as the SPIRE agent rotates them.
type SPIFFESource interface {
	x509svid.Source
	x509bundle.Source
}

// DialSPIFFE connects to target with mutual TLS from source: the caller
// presents its X.509-SVID (the one source holds at each handshake, so a
// rotation applies to new connections) and accepts the broker when the
// broker's SVID verifies against source's bundles and broker accepts its
// SPIFFE ID, e.g. tlsconfig.AuthorizeID(spiffeid.RequireFromString(
// "spiffe://example.org/tokenbroker")). No certificate file is needed:
//
//	src, err := workloadapi.NewX509Source(ctx) // $SPIFFE_ENDPOINT_SOCKET
//	conn, err := tokenbrokerclient.DialSPIFFE("tokenbroker:50051", src, tlsconfig.AuthorizeID(brokerID))
func DialSPIFFE(target string, source SPIFFESource, broker tlsconfig.Authorizer, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if source == nil || broker == nil {
		return nil, errors.New("tokenbrokerclient: DialSPIFFE needs a source and an authorizer of the broker's SPIFFE ID")
	}
	cfg := tlsconfig.MTLSClientConfig(source, source, broker)
	cfg.MinVersion = tls.VersionTLS12
	return grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
}

// DialUnix connects to the broker's unix socket at path; the broker knows
// the caller by its uid.
func DialUnix(path string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
}

// DialInsecure connects without TLS, for a broker in dev or insecure mode on
// loopback.
func DialInsecure(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
}

// Request names the tokens a TokenSource gets; see GetTokenRequest.
type Request struct {
	Client      string
	CustomerOrg string
	Scopes      []string
	ExternalRef string
	Resource    string
	// MinValidity is how long a token handed out must still live; the
	// TokenSource reuses its last token while it does. 0 means 30 s.
	MinValidity time.Duration
	// Timeout bounds one GetToken call made by Token; 0 means 10 s.
	Timeout time.Duration
}

// TokenSource gets tokens for one Request from the broker and keeps the last
// one while it stays valid for MinValidity. It is safe for concurrent use;
// concurrent callers share one call to the broker.
type TokenSource struct {
	client tokenbrokerv1.TokenBrokerServiceClient
	req    Request
	now    func() time.Time

	mu  sync.Mutex
	tok *oauth2.Token
}

var _ oauth2.TokenSource = (*TokenSource)(nil)

// NewTokenSource returns a TokenSource over conn.
func NewTokenSource(conn grpc.ClientConnInterface, r Request) *TokenSource {
	if r.MinValidity <= 0 {
		r.MinValidity = 30 * time.Second
	}
	if r.Timeout <= 0 {
		r.Timeout = 10 * time.Second
	}
	r.Scopes = append([]string(nil), r.Scopes...)
	return &TokenSource{client: tokenbrokerv1.NewTokenBrokerServiceClient(conn), req: r, now: time.Now}
}

// Token implements oauth2.TokenSource with a background context bounded by
// the request's Timeout.
func (ts *TokenSource) Token() (*oauth2.Token, error) {
	return ts.TokenContext(context.Background())
}

// TokenContext returns the cached token if it lives at least MinValidity
// more, and otherwise asks the broker for one. Errors are the broker's gRPC
// status errors (test them with status.Code).
func (ts *TokenSource) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.tok != nil && ts.tok.Expiry.Sub(ts.now()) >= ts.req.MinValidity {
		return ts.tok, nil
	}
	ctx, cancel := context.WithTimeout(ctx, ts.req.Timeout)
	defer cancel()
	resp, err := ts.client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{
		Client:      ts.req.Client,
		CustomerOrg: ts.req.CustomerOrg,
		Scopes:      ts.req.Scopes,
		ExternalRef: ts.req.ExternalRef,
		Resource:    ts.req.Resource,
		MinValidity: durationpb.New(ts.req.MinValidity),
	})
	if err != nil {
		return nil, err
	}
	if resp.GetAccessToken() == "" || resp.GetExpiresAt() == nil {
		return nil, errors.New("tokenbrokerclient: answer without token or expiry")
	}
	tok := &oauth2.Token{AccessToken: resp.GetAccessToken(), TokenType: resp.GetTokenType(), Expiry: resp.GetExpiresAt().AsTime()}
	ts.tok = tok
	return tok, nil
}
