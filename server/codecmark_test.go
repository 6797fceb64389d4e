package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestForgedBadFieldMarkIgnored: the codec marks a request it cannot decode
// with an unknown field whose value starts with a per-process nonce. A
// client that sends a field of that number itself, without the nonce, has
// sent an unknown field like any other: its valid request is served, not
// refused as if the codec had found a bad field it names.
func TestForgedBadFieldMarkIgnored(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	body := rawRequest(fCustomerOrg, approved)
	forged := strings.Repeat("N", 16) + "client\x00forged by the caller"
	body = protowire.AppendTag(body, protowire.MaxValidNumber, protowire.BytesType)
	body = protowire.AppendString(body, forged)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out rawMsg
	err := h.conn.Invoke(ctx, tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, &rawMsg{b: body}, &out,
		grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatalf("a valid request with an unknown field numbered like the codec's mark: %v (code %v), want it served", err, status.Code(err))
	}
}
