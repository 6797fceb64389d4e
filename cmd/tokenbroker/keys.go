package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// runKeygen writes a new RSA key as PKCS#8 PEM (mode 0600, never over an
// existing file) and prints its public JWK, which is what Maskinporten's
// self-service takes.
func runKeygen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "path of the new key file (required; must not exist)")
	bits := fs.Int("bits", 3072, "RSA key size: 2048 or 3072")
	kid := fs.String("kid", "", "key id; default tokenbroker-<date>-<random>")
	alg := fs.String("alg", "RS256", "algorithm recorded in the JWK: RS256, RS384 or RS512")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("keygen: --out is required")
	}
	if *bits != 2048 && *bits != 3072 {
		return fmt.Errorf("keygen: --bits %d: want 2048 or 3072", *bits)
	}
	a, err := signer.ParseAlgorithm(*alg)
	if err != nil {
		return fmt.Errorf("keygen: --alg: %w", err)
	}
	if *kid == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		*kid = fmt.Sprintf("tokenbroker-%s-%x", time.Now().UTC().Format("20060102"), b)
	}
	key, err := rsa.GenerateKey(rand.Reader, *bits)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(*out)
		return fmt.Errorf("keygen: write %s: %w", *out, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(*out)
		return fmt.Errorf("keygen: write %s: %w", *out, err)
	}
	k, err := signer.New(*kid, a, key, "file")
	if err != nil {
		return err
	}
	pub, err := k.PublicJWK()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s (mode 0600); register this public JWK with kid %q at Maskinporten, then set key.kid and key.signer: file:%s\n",
		*out, *kid, filepath.Base(*out))
	return writeJSON(stdout, pub)
}

// runJWKS prints the public JWK set of every key in the config.
func runJWKS(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("jwks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML config file (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("jwks: --config is required")
	}
	cfg, err := daemon.Load(*configPath)
	if err != nil {
		return err
	}
	set := jwk.NewSet()
	for i, c := range cfg.Clients {
		for _, kc := range c.KeyList() {
			key, err := daemon.OpenKey(kc, filepath.Dir(*configPath))
			if err != nil {
				return fmt.Errorf("clients[%d] (%s) key %q: %w", i, c.Name, kc.KID, err)
			}
			pub, err := key.PublicJWK()
			_ = key.Close()
			if err != nil {
				return err
			}
			if err := set.AddKey(pub); err != nil {
				return fmt.Errorf("clients[%d] (%s): %w", i, c.Name, err)
			}
		}
	}
	return writeJSON(stdout, set)
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
