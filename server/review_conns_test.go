package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/policy"
)

type nullSource struct{}

func (nullSource) Token(context.Context, maskinporten.Request) (*maskinporten.Token, error) {
	return nil, errors.New("no tokens here")
}
func (nullSource) KeyID() string { return "k" }
func (nullSource) Environment() maskinporten.Environment {
	return maskinporten.Environment{Name: "test", Issuer: "https://issuer.example/"}
}

// TestHealthCallsBoundedBeforeAuthentication (review): health needs no
// identity, and a health call whose message never comes holds its stream,
// its headers (up to max_header_bytes) and a goroutine until the
// connection closes. A peer without a certificate held 128 of them per
// connection (max_concurrent_streams): measured against serve in a child
// process, 2.5 MiB per connection instead of the 152 KiB that BENCHMARKS.md
// reports for refused streams, so about 2.5 GiB at the default 1,024
// connections. A connection that has made no authenticated call now has
// at most MaxPendingPublicCalls health calls in progress; more are
// refused at once, and the count goes down as calls end.
func TestHealthCallsBoundedBeforeAuthentication(t *testing.T) {
	t.Parallel()
	b, err := broker.New(broker.Config{Policy: policy.AllowAll(), Clients: []broker.Client{{Name: "c", Scopes: []string{"s"}, Source: nullSource{}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	s, err := New(Config{Broker: b, Authenticate: func(context.Context) (identity.ID, error) {
		return identity.ID{}, errors.New("no client certificate")
	}})
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
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The deadline only keeps a broken build from hanging the suite.
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	headers := func() []byte {
		hb.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
			{Name: ":path", Value: "/grpc.health.v1.Health/Check"}, {Name: ":authority", Value: "x"},
			{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}} {
			_ = enc.WriteField(f)
		}
		return bytes.Clone(hb.Bytes())
	}
	id := uint32(1)
	// open starts a health call; with message, it is a complete one.
	open := func(message bool) uint32 {
		t.Helper()
		sid := id
		id += 2
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: headers(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if message {
			// An empty HealthCheckRequest: no compression, length 0.
			if err := fr.WriteData(sid, true, []byte{0, 0, 0, 0, 0}); err != nil {
				t.Fatal(err)
			}
		}
		return sid
	}
	// status reads frames until stream sid ends with a grpc-status.
	status := func(sid uint32) string {
		t.Helper()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("waiting for the status of stream %d: %v", sid, err)
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if v := f.PseudoValue("status"); v != "" && v != "200" {
					t.Fatalf("stream %d: HTTP status %s", f.StreamID, v)
				}
				for _, hf := range f.Fields {
					if hf.Name == "grpc-status" && f.StreamID == sid {
						return hf.Value
					}
				}
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					_ = fr.WritePing(true, f.Data)
				}
			case *http2.GoAwayFrame:
				t.Fatalf("the server went away: %v", f.ErrCode)
			}
		}
	}

	var held []uint32
	for range MaxPendingPublicCalls {
		held = append(held, open(false))
	}
	// One more, never finished either: refused at once (8 is
	// RESOURCE_EXHAUSTED).
	if st := status(open(false)); st != "8" {
		t.Errorf("a health call past %d in progress: grpc-status %s, want 8", MaxPendingPublicCalls, st)
	}
	// The held calls end (the peer cancels them); health answers again.
	for _, sid := range held {
		if err := fr.WriteRSTStream(sid, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
	}
	for attempt := 0; ; attempt++ {
		st := status(open(true))
		if st == "0" {
			break
		}
		if st != "8" || attempt == 1000 {
			t.Fatalf("a complete health call after the others ended: grpc-status %s", st)
		}
	}
}
