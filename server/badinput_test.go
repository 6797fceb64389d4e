package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// rawCodec sends bytes as they are, so that a test can send what a proto
// library would refuse to encode (invalid UTF-8 in a string field).
type rawCodec struct{}

type rawMsg struct{ b []byte }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(*rawMsg).b)}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	v.(*rawMsg).b = data.Materialize()
	return nil
}
func (rawCodec) Name() string { return "proto" }

// field numbers of GetTokenRequest.
const (
	fClient      = 1
	fCustomerOrg = 2
	fScopes      = 3
	fExternalRef = 4
	fResource    = 5
)

// rawRequest encodes a GetTokenRequest that is valid except for override,
// which replaces (or, for scopes, is) the named field's values.
func rawRequest(field protowire.Number, values ...string) []byte {
	fields := map[protowire.Number][]string{
		fCustomerOrg: {approved},
		fScopes:      {scope},
	}
	fields[field] = values
	var b []byte
	for _, num := range []protowire.Number{fClient, fCustomerOrg, fScopes, fExternalRef, fResource} {
		for _, v := range fields[num] {
			b = protowire.AppendTag(b, num, protowire.BytesType)
			b = protowire.AppendString(b, v)
		}
	}
	return b
}

func TestBadInputBattery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	names := map[protowire.Number]string{fClient: "client", fCustomerOrg: "customer_org", fScopes: "scopes", fExternalRef: "external_ref", fResource: "resource"}
	type tc struct {
		name  string
		body  []byte
		code  codes.Code
		field string
	}
	var cases []tc
	for num, name := range names {
		add := func(what string, code codes.Code, values ...string) {
			cases = append(cases, tc{name + "_" + what, rawRequest(num, values...), code, name})
		}
		add("invalid_utf8", codes.InvalidArgument, "ab\xff\xfecd")
		add("nul", codes.InvalidArgument, "a\x00b")
		add("newline", codes.InvalidArgument, "a\nb")
		add("escape", codes.InvalidArgument, "a\x1b[31mb")
		add("huge_10KiB", codes.InvalidArgument, strings.Repeat("9", 10<<10))
		add("huge_1MiB", codes.ResourceExhausted, strings.Repeat("9", 1<<20))
	}
	cases = append(cases,
		tc{"customer_org_empty", rawRequest(fCustomerOrg), codes.InvalidArgument, "customer_org"},
		tc{"scopes_empty", rawRequest(fScopes), codes.InvalidArgument, "scopes"},
		tc{"scope_empty_string", rawRequest(fScopes, ""), codes.InvalidArgument, "scopes"},
		tc{"scopes_10000", rawRequest(fScopes, strings.Split(strings.Repeat("a:b,", 10000), ",")[:10000]...), codes.InvalidArgument, "scopes"},
		tc{"empty_message", nil, codes.InvalidArgument, "customer_org"},
		tc{"garbage_wire", []byte{0xff, 0xff, 0xff, 0xff}, codes.InvalidArgument, "request"},
		tc{"truncated_field", []byte{0x0a, 0x10, 0x41}, codes.InvalidArgument, "client"},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out rawMsg
			err := h.conn.Invoke(ctx, tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, &rawMsg{b: c.body}, &out,
				grpc.ForceCodecV2(rawCodec{}))
			st := status.Convert(err)
			h.mu.Lock()
			h.errors = append(h.errors, st.Message())
			h.mu.Unlock()
			if st.Code() != c.code {
				t.Fatalf("status %v, want %v", st, c.code)
			}
			if c.code == codes.InvalidArgument {
				if !strings.HasPrefix(st.Message(), c.field+": ") || len(st.Message()) > 300 {
					t.Errorf("message %q: want it to start with %q and stay short", st.Message(), c.field+": ")
				}
				var br *errdetails.BadRequest
				for _, d := range st.Details() {
					if b, ok := d.(*errdetails.BadRequest); ok {
						br = b
					}
				}
				if br == nil || br.GetFieldViolations()[0].GetField() != c.field {
					t.Errorf("BadRequest detail %v, want field %s", br, c.field)
				}
			}
		})
	}
	if _, err := h.get(t, validRequest()); err != nil {
		t.Fatalf("valid request after the battery: %v", err)
	}
	if n := h.emu.Requests(); n != 1 {
		t.Errorf("%d grants, want 1: no bad request may reach Maskinporten", n)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	// One call an hour after a burst of two: the bucket cannot refill
	// between the calls below, however slowly the machine runs them.
	h := newHarness(t, func(c *server.Config) { c.CallerRate, c.CallerBurst = 1.0/3600, 2 })
	for i := 0; i < 2; i++ {
		if _, err := h.get(t, validRequest()); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	_, err := h.get(t, validRequest())
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("third call: %v, want ResourceExhausted", st)
	}
	var ri *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			ri = r
		}
	}
	if ri == nil || ri.GetRetryDelay().AsDuration() <= 0 || ri.GetRetryDelay().AsDuration() > time.Hour {
		t.Errorf("RetryInfo = %v, want a delay of up to an hour", ri)
	}
	if !strings.Contains(h.audit.String(), `"decision":"rate_limited"`) {
		t.Error("rate-limited call not audited")
	}
	// Health checks are not rate limited.
	hc := healthpb.NewHealthClient(h.conn)
	for i := 0; i < 5; i++ {
		if resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health check %d while rate limited: %v %v", i, resp, err)
		}
	}
}
