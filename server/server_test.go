package server_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/audit"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
	"github.com/tokenbroker/tokenbroker/server/logtest"
)

const (
	clientID = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"
	scope    = "altinn:systembruker.demo"
	approved = "310904473"
)

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = logtest.Buffer

// harness is a broker served over real gRPC on loopback, in front of the
// Maskinporten emulator. When the test ends it checks that the log and every
// error the client saw hold no grant and no token.
type harness struct {
	emu    *maskinportentest.Emulator
	broker *broker.Broker
	client tokenbrokerv1.TokenBrokerServiceClient
	conn   *grpc.ClientConn
	log    *syncBuffer
	audit  *syncBuffer

	mu     sync.Mutex
	errors []string
}

func newHarness(t testing.TB, opts ...func(*server.Config)) *harness {
	t.Helper()
	return newHarnessWith(t, nil, opts...)
}

// newHarnessWith is newHarness with the HTTP client that talks to the
// emulator (nil for the default).
func newHarnessWith(t testing.TB, httpClient *http.Client, opts ...func(*server.Config)) *harness {
	t.Helper()
	h := &harness{log: &syncBuffer{}}
	logger := slog.New(slog.NewJSONHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	emu.Record()
	h.emu = emu
	key := signertest.Key(t, signertest.KeyA, "kid-a")
	pub, err := key.PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.AddClient(maskinportentest.Client{ID: clientID, Org: "991825827", SystemID: "991825827_smartcloud",
		Scopes: []string{scope, "skatteetaten:kravogbetalinger"}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser(clientID, approved, "")
	mp, err := maskinporten.New(maskinporten.Config{
		ClientID:    clientID,
		Key:         key,
		Environment: maskinporten.Environment{Name: "emulator", Issuer: emu.Issuer(), TokenURL: srv.URL + "/token"},
		HTTPClient:  httpClient,
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{
		Policy:  policy.AllowAll(),
		Clients: []broker.Client{{Name: "smartcloud", Scopes: []string{scope, "skatteetaten:kravogbetalinger"}, Source: mp}},
		Logger:  logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	h.broker = b
	h.audit = &syncBuffer{}
	scfg := server.Config{Broker: b, Logger: logger, Authenticate: server.Fixed(identity.MustParse("local:test-caller")), Audit: audit.New(h.audit)}
	for _, o := range opts {
		o(&scfg)
	}
	s, err := server.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.conn = conn
	h.client = tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		emu.CheckNoLeaks(t, "the log", h.log.String())
		emu.CheckNoLeaks(t, "the audit log", h.audit.String())
		h.mu.Lock()
		emu.CheckNoLeaks(t, "an error message", strings.Join(h.errors, "\n"))
		h.mu.Unlock()
	})
	return h
}

func (h *harness) get(t testing.TB, r *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.client.GetToken(ctx, r)
	if err != nil {
		h.mu.Lock()
		h.errors = append(h.errors, err.Error())
		h.mu.Unlock()
	}
	return resp, err
}

func validRequest() *tokenbrokerv1.GetTokenRequest {
	return &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved, Scopes: []string{scope}}
}

func TestGetTokenEndToEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	start := time.Now()
	resp, err := h.get(t, validRequest())
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAccessToken() == "" || resp.GetTokenType() != "Bearer" || resp.GetCached() {
		t.Errorf("first response: type %q cached %v", resp.GetTokenType(), resp.GetCached())
	}
	if exp := resp.GetExpiresAt().AsTime(); exp.Before(start.Add(110*time.Second)) || exp.After(start.Add(125*time.Second)) {
		t.Errorf("expires_at %v, want about two minutes ahead", exp)
	}
	if resp.GetSystemuserId() == "" || resp.GetSystemId() != "991825827_smartcloud" || resp.GetClient() != "smartcloud" ||
		resp.GetKeyId() != "kid-a" || resp.GetCustomerOrg() != approved || len(resp.GetScopes()) != 1 {
		t.Errorf("response fields: %v", resp)
	}
	again, err := h.get(t, &tokenbrokerv1.GetTokenRequest{Client: "smartcloud", CustomerOrg: "0192:" + approved, Scopes: []string{scope}})
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetCached() || again.GetAccessToken() != resp.GetAccessToken() {
		t.Error("second call was not served from the cache")
	}
	if n := h.emu.Requests(); n != 1 {
		t.Errorf("emulator saw %d grants, want 1", n)
	}
}

func TestGetTokenStampede(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const callers = 200
	var wg sync.WaitGroup
	tokens := make(chan string, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := h.get(t, validRequest())
			if err != nil {
				t.Error(err)
				return
			}
			tokens <- resp.GetAccessToken()
		}()
	}
	wg.Wait()
	close(tokens)
	distinct := map[string]bool{}
	for tok := range tokens {
		distinct[tok] = true
	}
	if n := h.emu.Requests(); n != 1 || len(distinct) != 1 {
		t.Errorf("%d grants and %d distinct tokens for %d concurrent callers, want 1 and 1\n%s", n, len(distinct), callers, h.log.String())
	}
}

func TestGetTokenNoSystemUser(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	_, err := h.get(t, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "314250052", Scopes: []string{scope}})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "MP-303") || !strings.Contains(st.Message(), "approve a system user") {
		t.Fatalf("status = %v, want FailedPrecondition with MP-303 and advice", st)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.GetReason() != "MP-303" || info.GetDomain() != server.MaskinportenDomain ||
		info.GetMetadata()["error"] != "invalid_altinn_customer_configuration" {
		t.Errorf("ErrorInfo = %v", info)
	}
}

func TestGetTokenScopeNotConfigured(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	_, err := h.get(t, &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved, Scopes: []string{scope, "krr:global/kontaktinformasjon.read"}})
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "krr:global/kontaktinformasjon.read") {
		t.Fatalf("status = %v, want PermissionDenied naming the scope", st)
	}
	if n := h.emu.Requests(); n != 0 {
		t.Errorf("emulator saw %d grants, want 0", n)
	}
}

func TestGetTokenUpstreamFails(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.emu.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "internal", http.StatusInternalServerError)
		return true
	})
	_, err := h.get(t, validRequest())
	if st := status.Convert(err); st.Code() != codes.Unavailable {
		t.Fatalf("status = %v, want Unavailable", st)
	}
	h.emu.SetHook(nil)
	if _, err := h.get(t, validRequest()); err != nil {
		t.Fatalf("after recovery: %v (a failure must not be cached)", err)
	}
}

func TestGetTokenInvalidArguments(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	tests := []struct {
		name  string
		req   *tokenbrokerv1.GetTokenRequest
		code  codes.Code
		field string
	}{
		{"org_123456789", &tokenbrokerv1.GetTokenRequest{CustomerOrg: "123456789", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_987654321", &tokenbrokerv1.GetTokenRequest{CustomerOrg: "987654321", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_999888777", &tokenbrokerv1.GetTokenRequest{CustomerOrg: "999888777", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_8_digits", &tokenbrokerv1.GetTokenRequest{CustomerOrg: "12345678", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_10_digits", &tokenbrokerv1.GetTokenRequest{CustomerOrg: "1234567890", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_letters", &tokenbrokerv1.GetTokenRequest{CustomerOrg: "abcdefghi", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_leading_space", &tokenbrokerv1.GetTokenRequest{CustomerOrg: " 310904473", Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"org_empty", &tokenbrokerv1.GetTokenRequest{Scopes: []string{scope}}, codes.InvalidArgument, "customer_org"},
		{"no_scopes", &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved}, codes.InvalidArgument, "scopes"},
		{"unknown_client", &tokenbrokerv1.GetTokenRequest{Client: "other", CustomerOrg: approved, Scopes: []string{scope}}, codes.InvalidArgument, "client"},
		{"negative_min_validity", &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved, Scopes: []string{scope}, MinValidity: durationpb.New(-time.Second)}, codes.InvalidArgument, "min_validity"},
		{"invalid_duration", &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved, Scopes: []string{scope}, MinValidity: &durationpb.Duration{Seconds: 1, Nanos: -1}}, codes.InvalidArgument, "min_validity"},
		{"min_validity_past_lifetime", &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved, Scopes: []string{scope}, MinValidity: durationpb.New(30 * time.Minute)}, codes.OutOfRange, "min_validity"},
		{"huge_request", &tokenbrokerv1.GetTokenRequest{CustomerOrg: approved, Scopes: []string{scope}, ExternalRef: strings.Repeat("x", 1<<20)}, codes.ResourceExhausted, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.get(t, tc.req)
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.HasPrefix(st.Message(), tc.field) {
				t.Fatalf("status = %v, want %v starting with %q", st, tc.code, tc.field)
			}
			if tc.code != codes.InvalidArgument {
				return
			}
			var br *errdetails.BadRequest
			for _, d := range st.Details() {
				if b, ok := d.(*errdetails.BadRequest); ok {
					br = b
				}
			}
			if br == nil || len(br.GetFieldViolations()) != 1 || br.GetFieldViolations()[0].GetField() != tc.field {
				t.Errorf("BadRequest detail = %v, want one violation of %s", br, tc.field)
			}
		})
	}
	// The server is still up and serves a valid request.
	if _, err := h.get(t, validRequest()); err != nil {
		t.Fatalf("valid request after the bad ones: %v", err)
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	hc := healthpb.NewHealthClient(h.conn)
	for _, svc := range []string{"", "tokenbroker.v1.TokenBrokerService"} {
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, resp, err)
		}
	}
}

func TestLogHasOneLinePerCall(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for i := 0; i < 3; i++ {
		if _, err := h.get(t, validRequest()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.get(t, &tokenbrokerv1.GetTokenRequest{CustomerOrg: "123456789", Scopes: []string{scope}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad org: %v, want InvalidArgument", err)
	}
	n := strings.Count(h.log.String(), `"msg":"rpc"`)
	if n != 4 {
		t.Errorf("%d rpc log lines for 4 calls:\n%s", n, h.log.String())
	}
	if !strings.Contains(h.log.String(), `"code":"InvalidArgument"`) || !strings.Contains(h.log.String(), `"cached":true`) {
		t.Errorf("log lacks the code or the cache flag:\n%s", h.log.String())
	}
}

func TestHealthHTTP(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if _, err := h.get(t, validRequest()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.HTTPHandler(h.broker, nil, nil, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep struct {
		Status  string `json:"status"`
		Clients map[string]struct {
			ClockSkewSeconds  *float64 `json:"clock_skew_seconds"`
			ClockSkewTooLarge bool     `json:"clock_skew_too_large"`
		} `json:"clients"`
		Cache struct {
			Entries int64 `json:"entries"`
			Misses  int64 `json:"misses"`
		} `json:"cache"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatal(err)
	}
	c, ok := rep.Clients["smartcloud"]
	if resp.StatusCode != 200 || rep.Status != "ok" || !ok || c.ClockSkewSeconds == nil || c.ClockSkewTooLarge ||
		rep.Cache.Entries != 1 || rep.Cache.Misses != 1 {
		t.Errorf("healthz = %d %+v", resp.StatusCode, rep)
	}
}

// TestSystemUserCallsAudited: SystemUserService decisions reach the audit
// log too (here a refusal: the test client has no system in the register).
func TestSystemUserCallsAudited(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	su := tokenbrokerv1.NewSystemUserServiceClient(h.conn)
	_, err := su.CreateSystemUserRequest(context.Background(), &tokenbrokerv1.CreateSystemUserRequestRequest{CustomerOrg: approved, Rights: []string{"r"}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "client: ") {
		t.Fatalf("create without a system: %v, want InvalidArgument naming client", err)
	}
	for _, want := range []string{`"method":"/tokenbroker.v1.SystemUserService/CreateSystemUserRequest"`, `"caller":"local:test-caller"`, `"decision":"invalid"`, `"customer_org":"310904473"`} {
		if !strings.Contains(h.audit.String(), want) {
			t.Errorf("audit lacks %s:\n%s", want, h.audit.String())
		}
	}
}
