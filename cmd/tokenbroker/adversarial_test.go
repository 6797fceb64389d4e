package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// otherOrgs are another customer (314250052), or no customer, written every
// way we could think of to slip past a check on 310904473.
var otherOrgs = []string{
	"314250052", "0192:314250052", " 314250052", "314250052 ", "\t314250052", "314 250 052", "314-250-052",
	"NO314250052", "no314250052", "３１４２５００５２", "31425005２", "314250052\u200b", "\u200b314250052",
	"310904473\x00314250052", "310904473,314250052", "310904473 314250052", "310904473\n314250052",
	"*", "31*", "3109044*", "?", "%33%31%34%32%35%30%30%35%32", "314250052%00", "0314250052", "3142500520",
	"-314250052", "+314250052", "314250052.0", "3.14250052e8", "0x12BB8A44", "urn:altinn:organization:identifier-no:314250052",
	"0192:310904473:314250052", "0192:", ":310904473", "310904473\u202e", "３１０９０４４７３",
}

// hostileStrings go into every other string field.
var hostileStrings = []string{
	"", "*", "**", "?", "../", "..%2f", "%2e%2e", "%2e%2e%2f..", "/..", "a/../../b", "\x00", "a\x00b", "\x1b[31mred", "a\nb",
	"a\rb", "\u202egnp.exe", "\u200b", "\ufeff", "ａｄｍｉｎ", "smartcloud\u200b", "SMARTCLOUD", "smartcloud ", " smartcloud",
	"${jndi:ldap://x}", "'; DROP TABLE x; --", "<script>", "http://169.254.169.254/", "file:///etc/passwd",
	"spiffe://example.org/ns/prod/sa/billing", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "Bearer abc",
	strings.Repeat("x", 300), strings.Repeat("é", 2000), strings.Repeat("a", 40<<10),
}

// adversarialSetup serves with mTLS: billing (a SPIFFE ID) may get tokens
// for 310904473 with external ref tenant-1 only; payroll (a DNS name) has
// no rule at all. The client has a system id, so SystemUserService works.
func adversarialSetup(t *testing.T) (addr string, billing, payroll *grpc.ClientConn, upstream *atomic.Int64, emu *maskinportentest.Emulator) {
	t.Helper()
	path, callersCA, emu := mtlsSetup(t)
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(cfg), "    customer_orgs: [\"*\"]\n", "    customer_orgs: [\"310904473\"]\n    external_refs: [tenant-1]\n", 1)
	s = strings.Replace(s, "    scopes: [altinn:systembruker.demo]\n    key:", "    scopes: [altinn:systembruker.demo]\n    system_id: 991825827_smartcloud\n    key:", 1)
	exchange := regexp.MustCompile(`exchange_url: "([^"]*)"`).FindStringSubmatch(s)
	s = strings.Replace(s, "altinn:\n", fmt.Sprintf("altinn:\n  base_url: %q\n", strings.TrimSuffix(exchange[1], "/exchange/maskinporten")), 1)
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	emu.Record()
	pub, err := signertest.Key(t, signertest.KeyA, "smartcloud-2026").PublicJWK()
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Keys: []jwk.Key{pub}, Scopes: []string{demoScope,
			altinn.ScopeRequestRead, altinn.ScopeRequestWrite, altinn.ScopeSystemRegisterWrite}}); err != nil {
		t.Fatal(err)
	}
	emu.AddSystem(maskinportentest.System{ID: "991825827_smartcloud", Vendor: "991825827", ClientID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"})
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "tenant-1")
	upstream = &atomic.Int64{}
	emu.SetHook(func(http.ResponseWriter, *http.Request) bool {
		upstream.Add(1)
		return false
	})
	addr, _, stop := startServe(t, path, serveHooks{})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	dial := func(l tlstest.Leaf) *grpc.ClientConn {
		c := callersCA.Issue(t, l)
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: callersCA.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{c.TLS}})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	billing = dial(tlstest.Leaf{URIs: []string{"spiffe://example.org/ns/prod/sa/billing"}})
	payroll = dial(tlstest.Leaf{DNS: []string{"payroll.example.org"}})
	return addr, billing, payroll, upstream, emu
}

// rpcs are the methods under attack, each with a request billing could
// make (or be refused for a reason other than the field under attack).
func rpcs() map[string]proto.Message {
	return map[string]proto.Message{
		tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName: &tokenbrokerv1.GetTokenRequest{
			CustomerOrg: "310904473", Scopes: []string{demoScope}, ExternalRef: "tenant-1"},
		tokenbrokerv1.SystemUserService_CreateSystemUserRequest_FullMethodName: &tokenbrokerv1.CreateSystemUserRequestRequest{
			CustomerOrg: "310904473", ExternalRef: "tenant-1", Rights: []string{"ske-krav-og-betalinger"}},
		tokenbrokerv1.SystemUserService_GetSystemUserRequest_FullMethodName: &tokenbrokerv1.GetSystemUserRequestRequest{
			CustomerOrg: "310904473", ExternalRef: "tenant-1"},
		tokenbrokerv1.SystemUserService_ListSystemUserRequests_FullMethodName: &tokenbrokerv1.ListSystemUserRequestsRequest{},
		tokenbrokerv1.SystemUserService_ListSystemUsers_FullMethodName:        &tokenbrokerv1.ListSystemUsersRequest{},
		tokenbrokerv1.SystemUserService_RegisterSystem_FullMethodName: &tokenbrokerv1.RegisterSystemRequest{
			Name: map[string]string{"nb": "x"}, Description: map[string]string{"nb": "x"}},
	}
}

// refused are the codes of a call refused before any upstream call.
var refused = map[codes.Code]bool{codes.InvalidArgument: true, codes.PermissionDenied: true, codes.ResourceExhausted: true,
	codes.Unauthenticated: true}

// TestAdversarial: every RPC x every string field x hostile values, over
// real gRPC and mTLS. No call answers INTERNAL or UNKNOWN; no value makes a
// token for another customer; a call refused by validation or policy makes
// no upstream call; a caller with no rule never reaches an upstream; and
// the broker still serves billing afterwards.
func TestAdversarial(t *testing.T) {
	t.Parallel()
	_, billing, payroll, upstream, emu := adversarialSetup(t)
	ctx := context.Background()
	call := func(conn *grpc.ClientConn, method string, req proto.Message) (proto.Message, error) {
		resp := responseFor(t, method)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		err := conn.Invoke(cctx, method, req, resp)
		return resp, err
	}
	legit := func(where string) {
		t.Helper()
		resp, err := call(billing, tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, rpcs()[tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName])
		if err != nil || resp.(*tokenbrokerv1.GetTokenResponse).GetAccessToken() == "" {
			t.Fatalf("%s: billing's legitimate call: %v", where, err)
		}
	}
	legit("before")
	var cases, refusedCount int
	var messages []string
	for method, base := range rpcs() {
		fields := base.ProtoReflect().Descriptor().Fields()
		for i := 0; i < fields.Len(); i++ {
			fd := fields.Get(i)
			if fd.Kind() != protoreflect.StringKind && !fd.IsMap() {
				continue
			}
			values := hostileStrings
			if fd.Name() == "customer_org" {
				values = otherOrgs
			}
			for _, v := range values {
				for _, req := range withField(base, fd, v) {
					for _, who := range []struct {
						name string
						conn *grpc.ClientConn
					}{{"billing", billing}, {"payroll", payroll}} {
						cases++
						before := upstream.Load()
						resp, err := call(who.conn, method, req)
						code := status.Code(err)
						where := fmt.Sprintf("%s %s %s=%q", who.name, method, fd.Name(), clipString(v))
						if err != nil {
							messages = append(messages, status.Convert(err).Message())
						}
						switch {
						case code == codes.Internal || code == codes.Unknown:
							t.Errorf("%s: %v", where, err)
						case who.name == "payroll" && code != codes.PermissionDenied && code != codes.InvalidArgument && code != codes.ResourceExhausted:
							t.Errorf("%s: %v, want PermissionDenied (no rule) or InvalidArgument", where, err)
						case fd.Name() == "customer_org" && code == codes.OK:
							t.Errorf("%s: allowed", where)
						}
						if tr, ok := resp.(*tokenbrokerv1.GetTokenResponse); ok && err == nil && tr.GetCustomerOrg() != "310904473" {
							t.Errorf("%s: a token for %q", where, tr.GetCustomerOrg())
						}
						if refused[code] || who.name == "payroll" {
							refusedCount++
							if n := upstream.Load() - before; n != 0 {
								t.Errorf("%s: refused with %v after %d upstream calls", where, code, n)
							}
						}
					}
				}
			}
		}
	}
	// Invalid UTF-8 in every string field at every depth, map keys and
	// values included: InvalidArgument naming the field, no upstream call.
	for method, base := range rpcs() {
		for field, raw := range invalidUTF8Variants(base) {
			cases++
			before := upstream.Load()
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := billing.Invoke(cctx, method, &rawBytes{raw}, &rawBytes{}, grpc.ForceCodecV2(rawBytesCodec{}))
			cancel()
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), field+": ") {
				t.Errorf("%s with invalid UTF-8 in %s: %v, want InvalidArgument naming %s", method, field, err, field)
			}
			if upstream.Load() != before {
				t.Errorf("%s with invalid UTF-8 in %s reached an upstream", method, field)
			}
		}
	}
	legit("after")
	emu.CheckNoLeaks(t, "error messages", strings.Join(messages, "\n"))
	t.Logf("%d hostile calls, %d refused with no upstream call", cases, refusedCount)
}

func clipString(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// responseFor returns an empty response message of method.
func responseFor(t *testing.T, method string) proto.Message {
	t.Helper()
	svc, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		t.Fatal(err)
	}
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(name))
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		t.Fatal(err)
	}
	return mt.New().Interface()
}

// withField returns copies of base with field fd set to v: for a string,
// v; for a repeated string, [v] and [valid..., v]; for a map, v as a key
// and v as the value of "nb".
func withField(base proto.Message, fd protoreflect.FieldDescriptor, v string) []proto.Message {
	var out []proto.Message
	set := func(f func(m protoreflect.Message)) {
		c := proto.Clone(base)
		f(c.ProtoReflect())
		out = append(out, c)
	}
	switch {
	case fd.IsMap():
		set(func(m protoreflect.Message) {
			mp := m.NewField(fd).Map()
			mp.Set(protoreflect.ValueOfString(v).MapKey(), protoreflect.ValueOfString("x"))
			m.Set(fd, protoreflect.ValueOfMap(mp))
		})
		set(func(m protoreflect.Message) {
			mp := m.NewField(fd).Map()
			mp.Set(protoreflect.ValueOfString("nb").MapKey(), protoreflect.ValueOfString(v))
			m.Set(fd, protoreflect.ValueOfMap(mp))
		})
	case fd.IsList():
		set(func(m protoreflect.Message) {
			l := m.NewField(fd).List()
			l.Append(protoreflect.ValueOfString(v))
			m.Set(fd, protoreflect.ValueOfList(l))
		})
		set(func(m protoreflect.Message) { m.Mutable(fd).List().Append(protoreflect.ValueOfString(v)) })
	default:
		set(func(m protoreflect.Message) { m.Set(fd, protoreflect.ValueOfString(v)) })
	}
	return out
}

// invalidUTF8Variants returns, by field path, base's wire form with one
// more occurrence of that string field holding invalid UTF-8 (for maps:
// an entry whose key, then whose value, is invalid).
func invalidUTF8Variants(base proto.Message) map[string][]byte {
	b, err := proto.Marshal(base)
	if err != nil {
		panic(err)
	}
	const bad = "ok\xff\xfe"
	out := map[string][]byte{}
	fields := base.ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			for _, kv := range []struct {
				name     string
				key, val string
			}{{"key", bad, "x"}, {"value", "nb", bad}} {
				var entry []byte
				entry = protowire.AppendTag(entry, 1, protowire.BytesType)
				entry = protowire.AppendString(entry, kv.key)
				entry = protowire.AppendTag(entry, 2, protowire.BytesType)
				entry = protowire.AppendString(entry, kv.val)
				m := protowire.AppendTag(append([]byte(nil), b...), fd.Number(), protowire.BytesType)
				out[string(fd.Name())+"."+kv.name] = protowire.AppendBytes(m, entry)
			}
		case fd.Kind() == protoreflect.StringKind:
			m := protowire.AppendTag(append([]byte(nil), b...), fd.Number(), protowire.BytesType)
			out[string(fd.Name())] = protowire.AppendString(m, bad)
		}
	}
	return out
}

type rawBytes struct{ b []byte }

type rawBytesCodec struct{}

func (rawBytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(*rawBytes).b)}, nil
}
func (rawBytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	v.(*rawBytes).b = data.Materialize()
	return nil
}
func (rawBytesCodec) Name() string { return "proto" }
