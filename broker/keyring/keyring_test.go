package keyring_test

import (
	"context"
	"crypto"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// counted wraps a signer and counts its signatures, so that a test can see
// which keys the probes reach.
type counted struct {
	crypto.Signer
	signs atomic.Int64
}

func (c *counted) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	c.signs.Add(1)
	return c.Signer.Sign(r, d, o)
}

// fixture is a ring over two clients: c1 with a key in a gRPC signer, c2
// with a key file; it records what the ring wraps and publishes.
type fixture struct {
	dir      string
	grpcURI  string
	grpcLis  *signertest.Listener
	ring     *keyring.Ring
	mu       sync.Mutex
	wrapped  []*counted
	onActive atomic.Int64
	ready    atomic.Int64 // calls of SetReady
}

func (f *fixture) wrap(_ string, s crypto.Signer) crypto.Signer {
	c := &counted{Signer: s}
	f.mu.Lock()
	f.wrapped = append(f.wrapped, c)
	f.mu.Unlock()
	return c
}

func (f *fixture) wraps() []*counted {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*counted(nil), f.wrapped...)
}

func grpcKey(f *fixture, kid string, active bool) keyring.Key {
	return keyring.Key{Spec: signer.Spec{URI: f.grpcURI, KeyID: kid, CallTimeout: 10 * time.Second}, Active: active}
}

func fileKey(f *fixture, file, kid string, active bool) keyring.Key {
	return keyring.Key{Spec: signer.Spec{URI: "file:" + file, KeyID: kid, BaseDir: f.dir}, Active: active}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir()}
	for name, file := range map[string]string{"a.pem": "rsa-a.pkcs8.pem", "b.pem": "rsa-b.pkcs1.pem"} {
		if err := os.WriteFile(filepath.Join(f.dir, name), signertest.PEM(t, file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.grpcURI, f.grpcLis = signertest.GRPCSigner(t, signertest.KeyA)
	ring, err := keyring.Open(context.Background(), keyring.Config{Wrap: f.wrap}, f.clients())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ring.Close() })
	ring.Notify(func(string, *signer.Key) { f.onActive.Add(1) }, func(bool) { f.ready.Add(1) })
	f.ring = ring
	return f
}

// clients is the fixture's starting config.
func (f *fixture) clients() []keyring.Client {
	return []keyring.Client{
		{Name: "c1", Keys: []keyring.Key{grpcKey(f, "g1", true)}},
		{Name: "c2", Keys: []keyring.Key{fileKey(f, "b.pem", "b1", true)}},
	}
}

// TestReplaceFailsWhole: for every way a Replace can fail, nothing changes:
// the status (as /healthz and the metrics show it), each client's active
// key, the consumers (never told of a key), readiness, the keys the probes
// reach; everything the failed Replace opened is closed again (the gRPC
// signer sees its connection count go back), and the running keys still
// sign.
func TestReplaceFailsWhole(t *testing.T) {
	// c1 rotates to a new key g2 in each attempt, so that a half-applied
	// Replace would show; the failure is in c2 or in the shape.
	rotated := func(f *fixture) keyring.Client {
		return keyring.Client{Name: "c1", Keys: []keyring.Key{grpcKey(f, "g1", false), grpcKey(f, "g2", true)}}
	}
	for _, tc := range []struct {
		name    string
		clients func(f *fixture) []keyring.Client
		want    string
	}{
		{"missing_key_file", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f), {Name: "c2", Keys: []keyring.Key{fileKey(f, "gone.pem", "b1", true)}}}
		}, "no such file"},
		{"bad_key_file", func(f *fixture) []keyring.Client {
			if err := os.WriteFile(filepath.Join(f.dir, "bad.pem"), []byte("not a key"), 0o600); err != nil {
				t.Fatal(err)
			}
			return []keyring.Client{rotated(f), {Name: "c2", Keys: []keyring.Key{fileKey(f, "bad.pem", "b1", true)}}}
		}, "bad.pem"},
		{"unsupported_scheme", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f), {Name: "c2", Keys: []keyring.Key{{Spec: signer.Spec{URI: "vault:x", KeyID: "b1"}, Active: true}}}}
		}, "unsupported signer scheme"},
		{"unreachable_signer", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f), {Name: "c2", Keys: []keyring.Key{
				{Spec: signer.Spec{URI: "grpc:unix:" + filepath.Join(f.dir, "none.sock"), KeyID: "b1", CallTimeout: 50 * time.Millisecond}, Active: true}}}}
		}, "grpc signer"},
		{"no_active_key", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f), {Name: "c2", Keys: []keyring.Key{fileKey(f, "b.pem", "b1", false), fileKey(f, "a.pem", "a1", false)}}}
		}, "0 active keys, want exactly one"},
		{"active_key_removed", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f), {Name: "c2", Keys: []keyring.Key{fileKey(f, "a.pem", "a1", false), fileKey(f, "a.pem", "a2", true)}}}
		}, `the active key "b1" was removed`},
		{"client_added", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f), f.clients()[1], {Name: "c3", Keys: []keyring.Key{fileKey(f, "a.pem", "a1", true)}}}
		}, "adding a client needs a restart"},
		{"client_removed", func(f *fixture) []keyring.Client {
			return []keyring.Client{rotated(f)}
		}, `removing client "c2" needs a restart`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			before := f.ring.Status()
			active1, active2 := f.ring.Active("c1"), f.ring.Active("c2")
			onActive, ready := f.onActive.Load(), f.ready.Load()
			f.grpcLis.WaitOpen(t, 1)

			err := f.ring.Replace(context.Background(), tc.clients(f))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Replace = %v, want an error with %q", err, tc.want)
			}
			if after := f.ring.Status(); !reflect.DeepEqual(after, before) {
				t.Errorf("status changed:\n before %+v\n after  %+v", before, after)
			}
			if f.ring.Active("c1") != active1 || f.ring.Active("c2") != active2 {
				t.Error("an active key changed")
			}
			if f.onActive.Load() != onActive || f.ready.Load() != ready {
				t.Error("a failed Replace told the consumers something")
			}
			f.grpcLis.WaitOpen(t, 1) // what it opened is closed again
			// The probes reach the running keys (the two opened first), and
			// none of those the failed Replace opened.
			f.ring.Probe()
			for i, c := range f.wraps() {
				want := int64(0)
				if i < 2 {
					want = 1
				}
				if got := c.signs.Load(); got != want {
					t.Errorf("key %d (of %d opened) signed %d times in one probe, want %d", i, len(f.wraps()), got, want)
				}
			}
			for _, k := range []*signer.Key{active1, active2} {
				if _, err := k.Sign(nil, crypto.SHA256.New().Sum(nil)); err != nil {
					t.Errorf("running key %s: %v", k, err)
				}
			}
		})
	}
}

// TestReplaceSwapsThenCloses: a Replace that loads publishes the new active
// keys, shows them in the status, and closes the old keys: they refuse to
// sign, and the gRPC signer sees one connection per key of the new set.
func TestReplaceSwapsThenCloses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	old := f.ring.Active("c1")
	published := map[string]string{}
	f.ring.Notify(func(c string, k *signer.Key) { published[c] = k.KeyID }, nil)
	next := []keyring.Client{
		{Name: "c1", Keys: []keyring.Key{grpcKey(f, "g1", false), grpcKey(f, "g2", true)}},
		{Name: "c2", Keys: []keyring.Key{fileKey(f, "b.pem", "b1", true)}},
	}
	if err := f.ring.Replace(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	if published["c1"] != "g2" || published["c2"] != "b1" {
		t.Errorf("published %v, want c1:g2 c2:b1", published)
	}
	var got []string
	for _, st := range f.ring.Status() {
		got = append(got, st.Client+"/"+st.KeyID+map[bool]string{true: "*"}[st.Active])
	}
	if want := []string{"c1/g1", "c1/g2*", "c2/b1*"}; !reflect.DeepEqual(got, want) {
		t.Errorf("status %v, want %v", got, want)
	}
	if _, err := old.Sign(nil, crypto.SHA256.New().Sum(nil)); !errors.Is(err, signer.ErrRetired) {
		t.Errorf("the replaced key signed: %v", err)
	}
	f.grpcLis.WaitOpen(t, 2)
	if err := f.ring.Close(); err != nil {
		t.Fatal(err)
	}
	f.grpcLis.WaitOpen(t, 0)
}
