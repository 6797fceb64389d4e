package keyring_test

import (
	"context"
	"crypto"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// TestReloadsKeepSessionsAndConnections: 100 reloads of a PKCS#11 key
// (SoftHSM2) and a gRPC signer key leave as many PKCS#11 sessions open in
// the module, and as many connections at the signer, as one load, and no
// more goroutines.
func TestReloadsKeepSessionsAndConnections(t *testing.T) {
	hsmURI := signertest.SoftHSM(t, signertest.KeyA)
	grpcURI, lis := signertest.GRPCSigner(t, signertest.KeyB)
	clients := []keyring.Client{
		{Name: "hsm", Keys: []keyring.Key{{Spec: signer.Spec{URI: hsmURI, KeyID: "h1"}, Active: true}}},
		{Name: "remote", Keys: []keyring.Key{{Spec: signer.Spec{URI: grpcURI, KeyID: "r1"}, Active: true}}},
	}
	ctx := context.Background()
	ring, err := keyring.Open(ctx, keyring.Config{}, clients)
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	sign := func() {
		t.Helper()
		for _, c := range []string{"hsm", "remote"} {
			if _, err := ring.Active(c).Sign(nil, crypto.SHA256.New().Sum(nil)); err != nil {
				t.Fatalf("%s: %v", c, err)
			}
		}
	}
	// One reload first, so that what is made once per process (gRPC's
	// resolvers, the module's own threads) is in the baseline.
	if err := ring.Replace(ctx, clients); err != nil {
		t.Fatal(err)
	}
	sign()
	lis.WaitOpen(t, 1)
	sessions := signertest.SoftHSMSessions(t)
	if sessions == 0 {
		t.Fatal("no PKCS#11 session open for an open key")
	}
	goroutines := runtime.NumGoroutine()
	for i := range 100 {
		if err := ring.Replace(ctx, clients); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		sign()
	}
	if got := signertest.SoftHSMSessions(t); got != sessions {
		t.Errorf("PKCS#11 sessions after 100 reloads: %d, want %d", got, sessions)
	}
	lis.WaitOpen(t, 1)
	// Closed connections end their goroutines a moment later: wait for the
	// count to come back, failing after a minute.
	limit := time.Now().Add(time.Minute)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(limit) {
			t.Fatalf("goroutines after 100 reloads: %d, want at most %d", runtime.NumGoroutine(), goroutines)
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFailedReloadsKeepSessions: reloads that fail after opening a PKCS#11
// key (the next key has a wrong PIN, or its gRPC signer is gone) close what
// they opened: the module's sessions and the signer's connections stay as
// they were, and the running keys still sign.
func TestFailedReloadsKeepSessions(t *testing.T) {
	hsmURI := signertest.SoftHSM(t, signertest.KeyA)
	grpcURI, lis := signertest.GRPCSigner(t, signertest.KeyB)
	running := []keyring.Client{
		{Name: "hsm", Keys: []keyring.Key{{Spec: signer.Spec{URI: hsmURI, KeyID: "h1"}, Active: true}}},
		{Name: "remote", Keys: []keyring.Key{{Spec: signer.Spec{URI: grpcURI, KeyID: "r1"}, Active: true}}},
	}
	ctx := context.Background()
	ring, err := keyring.Open(ctx, keyring.Config{}, running)
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	lis.WaitOpen(t, 1)
	sessions := signertest.SoftHSMSessions(t)
	// Another token: on the token already logged in, PKCS#11 takes any
	// PIN (the login is the application's, not the session's).
	wrongPIN := strings.Replace(signertest.SoftHSM(t, signertest.KeyB), "pin-value="+signertest.SoftHSMPin, "pin-value=0000", 1)
	for i := range 20 {
		next := []keyring.Client{
			{Name: "hsm", Keys: []keyring.Key{{Spec: signer.Spec{URI: hsmURI, KeyID: "h1"}}, {Spec: signer.Spec{URI: hsmURI, KeyID: "h2"}, Active: true}}},
			{Name: "remote", Keys: []keyring.Key{{Spec: signer.Spec{URI: grpcURI, KeyID: "r1"}}, {Spec: signer.Spec{URI: wrongPIN, KeyID: "r2"}, Active: true}}},
		}
		if err := ring.Replace(ctx, next); err == nil {
			t.Fatalf("reload %d with a wrong PIN applied", i)
		}
	}
	if got := signertest.SoftHSMSessions(t); got != sessions {
		t.Errorf("PKCS#11 sessions after 20 failed reloads: %d, want %d", got, sessions)
	}
	lis.WaitOpen(t, 1)
	for _, c := range []string{"hsm", "remote"} {
		if k := ring.Active(c); k == nil || k.KeyID != map[string]string{"hsm": "h1", "remote": "r1"}[c] {
			t.Fatalf("%s: active key %v after failed reloads", c, k)
		} else if _, err := k.Sign(nil, crypto.SHA256.New().Sum(nil)); err != nil {
			t.Errorf("%s: running key: %v", c, err)
		}
	}
}
