package main

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// BenchmarkFigureSignLatency measures one RS256 signature through each
// backend (file, SoftHSM2 over PKCS#11, the local KMS emulator, the grpc
// signer over a unix socket wrapping a file key), one at a time, and
// reports median and p99 latency and their ratios to the file backend.
func BenchmarkFigureSignLatency(b *testing.B) {
	const n = 400
	dir, err := os.MkdirTemp("", "tbsb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	keyPath := filepath.Join(dir, "a.pem")
	if err := os.WriteFile(keyPath, signertest.PEM(b, "rsa-a.pkcs8.pem"), 0o600); err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	_, stop := startSigner(b, "--key", "file:"+keyPath, "--kid", "a", "--listen", "unix:"+sock)
	defer stop()
	backends := []struct{ name, uri string }{
		{"file", "file:" + keyPath},
		{"pkcs11_softhsm2", signertest.SoftHSM(b, signertest.KeyA)},
		{"awskms_local", signertest.LocalKMS(b)},
		{"grpc_signer_unix", "grpc:unix:" + sock},
	}
	digest := sha256.Sum256([]byte("a grant's signing input"))
	type stat struct{ median, p99 time.Duration }
	stats := map[string]stat{}
	for _, be := range backends {
		key, err := daemon.OpenKey(daemon.KeyConfig{KID: "a", Signer: be.uri}, "")
		if err != nil {
			b.Fatalf("%s: %v", be.name, err)
		}
		lat := make([]time.Duration, 0, n*b.N)
		for i := 0; i < n*b.N; i++ {
			start := time.Now()
			if _, err := key.Signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatalf("%s: %v", be.name, err)
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		stats[be.name] = stat{lat[len(lat)/2], lat[len(lat)*99/100]}
	}
	base := stats["file"]
	for _, be := range backends {
		s := stats[be.name]
		fmt.Printf("FIGURE sign_latency backend=%s median_us=%.0f p99_us=%.0f median_ratio=%.2f p99_ratio=%.2f\n", be.name,
			float64(s.median.Microseconds()), float64(s.p99.Microseconds()),
			float64(s.median)/float64(base.median), float64(s.p99)/float64(base.p99))
	}
}
