package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

func TestTokenCommand(t *testing.T) {
	t.Parallel()
	env, _, _, stop := startDev(t)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("dev: %v", err)
		}
	}()
	ctx := context.Background()
	base := []string{"token", "--addr", env.Addr, "--org", "310904473", "--scope", devScope}

	var raw bytes.Buffer
	if err := run(ctx, append(base, "--raw"), &raw, &raw); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(raw.String())
	if strings.Count(tok, ".") != 2 {
		t.Fatalf("--raw printed %q, want a JWT", tok)
	}
	var out bytes.Buffer
	if err := run(ctx, base, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"customer org:  310904473", "cached:        true", "expires at:", "token claims:", `"systemuser_org"`, "only with --raw"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), tok) || strings.Contains(out.String(), tok[strings.LastIndexByte(tok, '.')+1:]) {
		t.Error("token printed without --raw")
	}
	err := run(ctx, []string{"token", "--addr", env.Addr, "--org", "889640782", "--scope", devScope}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "FailedPrecondition") || !strings.Contains(err.Error(), "MP-303") {
		t.Errorf("unapproved org: %v, want FailedPrecondition with MP-303", err)
	}
	if err := run(ctx, []string{"token", "--addr", env.Addr}, &out, &out); err == nil || !strings.Contains(err.Error(), "--org") {
		t.Errorf("missing flags: %v", err)
	}
}

func TestExplainCommand(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")
	var out bytes.Buffer
	err := run(context.Background(), []string{"explain", "--config", path, "--org", "0192:310904473",
		"--scope", demoScope, "--external-ref", "tenant-1"}, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{`"kid": "smartcloud-2026"`, `"alg": "RS256"`, `"aud": "http://127.0.0.1:9/"`,
		`"iss": "7ee41fce-9f6e-4c32-8195-0fe2c1517f43"`, `"ID": "0192:310904473"`, `"externalRef": "tenant-1"`,
		"POST http://127.0.0.1:9/token", "not signed"} {
		if !strings.Contains(s, want) {
			t.Errorf("explain lacks %s:\n%s", want, s)
		}
	}
	if regexp.MustCompile(`[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}`).MatchString(s) || strings.Contains(s, "PRIVATE") {
		t.Errorf("explain printed a signed grant or key material:\n%s", s)
	}
	if err := run(context.Background(), []string{"explain", "--config", path, "--org", "123456789", "--scope", demoScope}, &out, &out); err == nil {
		t.Error("explain accepted a bad org number")
	}
}

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"check", "--config", path}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "kid smartcloud-2026, file backend, RS256, expires ") ||
		!strings.Contains(out.String(), "register a new key and rotate") || !strings.HasSuffix(out.String(), "ok\n") {
		t.Errorf("check output:\n%s", out.String())
	}
	broken := filepath.Join(filepath.Dir(path), "broken.yaml")
	cfg := readFile(t, path)
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "bad.pem"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken, bytes.Replace(cfg, []byte("file:mp-key.pem"), []byte("file:bad.pem"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"check", "--config", broken}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "bad.pem") {
		t.Errorf("check of a config with a broken key: %v", err)
	}
	if err := run(context.Background(), []string{"check"}, &out, &out); err == nil {
		t.Error("check without --config accepted")
	}
}

// TestSampleConfig keeps the shipped TT02 sample a valid config.
func TestSampleConfig(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/tokenbroker.tt02.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := daemon.Parse(data)
	if err != nil {
		t.Fatalf("deploy/tokenbroker.tt02.yaml: %v", err)
	}
	if env, _ := cfg.Environment(); env.Issuer != "https://test.maskinporten.no/" {
		t.Errorf("sample environment issuer %q", env.Issuer)
	}
}

// TestReadmeConfig keeps the reference config in README.md ("Serving with a
// config file", every key with its default) a valid config, so that a key
// renamed or added in the code cannot leave the documentation behind.
func TestReadmeConfig(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Serving with a config file\n")
	if !ok {
		t.Fatal("README.md has no section \"Serving with a config file\"")
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	block, _, closed := strings.Cut(block, "```")
	if !ok || !closed {
		t.Fatal("the section has no yaml block")
	}
	cfg, err := daemon.Parse([]byte(block))
	if err != nil {
		t.Fatalf("README.md's reference config: %v", err)
	}
	if time.Duration(cfg.Maskinporten.SignProbeInterval) != keyring.DefaultProbeInterval || time.Duration(cfg.Maskinporten.SignTimeout) != signer.DefaultCallTimeout {
		t.Errorf("README.md's sign_probe_interval %v and sign_timeout %v differ from the defaults", cfg.Maskinporten.SignProbeInterval, cfg.Maskinporten.SignTimeout)
	}
}

// TestReadmeRotationConfig: the rotation example of README.md is a valid
// config whose values are the defaults.
func TestReadmeRotationConfig(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Key rotation")
	_, block, ok2 := strings.Cut(section, "```yaml\n")
	block, _, closed := strings.Cut(block, "```")
	if !ok || !ok2 || !closed {
		t.Fatal("README.md has no yaml block under \"Key rotation\"")
	}
	cfg, err := daemon.Parse([]byte("listen: 127.0.0.1:0\ninsecure: true\nmaskinporten: {environment: test}\n" + block))
	if err != nil {
		t.Fatalf("README.md's rotation example: %v", err)
	}
	ss, r := cfg.SelfService, cfg.Clients[0].Rotation
	if time.Duration(r.Every) != rotation.DefaultEvery || time.Duration(r.Grace) != rotation.DefaultGrace ||
		time.Duration(r.RenewBefore) != rotation.DefaultRenewBefore || time.Duration(r.ProveTimeout) != rotation.DefaultProveTimeout ||
		time.Duration(ss.CheckEvery) != rotation.DefaultCheckEvery || time.Duration(ss.FollowEvery) != rotation.DefaultFollowEvery {
		t.Errorf("README.md's rotation example differs from the defaults: %+v %+v", *ss, *r)
	}
}

func TestKeygenAndJWKS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "new.pem")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"keygen", "--out", keyPath, "--bits", "2048", "--kid", "rot-1"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(keyPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want mode 0600", st, err)
	}
	var pub map[string]any
	if err := json.Unmarshal(out.Bytes(), &pub); err != nil {
		t.Fatalf("keygen output is not a JWK: %v\n%s", err, out.String())
	}
	if pub["kid"] != "rot-1" || pub["kty"] != "RSA" || pub["alg"] != "RS256" || pub["d"] != nil || pub["p"] != nil {
		t.Errorf("public JWK = %v", pub)
	}
	if err := run(context.Background(), []string{"keygen", "--out", keyPath, "--bits", "2048"}, &out, &errOut); err == nil {
		t.Error("keygen overwrote an existing file")
	}
	if err := run(context.Background(), []string{"keygen", "--out", filepath.Join(dir, "x.pem"), "--bits", "1024"}, &out, &errOut); err == nil {
		t.Error("keygen made a 1024-bit key")
	}

	// jwks of a config naming the new key shows the same public key.
	cfg := writeConfig(t, "http://127.0.0.1:9/", "http://127.0.0.1:9/token")
	data := readFile(t, cfg)
	data = bytes.Replace(data, []byte("file:mp-key.pem"), []byte("file:"+keyPath), 1)
	data = bytes.Replace(data, []byte("kid: smartcloud-2026"), []byte("kid: rot-1"), 1)
	if err := os.WriteFile(cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var set bytes.Buffer
	if err := run(context.Background(), []string{"jwks", "--config", cfg}, &set, &errOut); err != nil {
		t.Fatal(err)
	}
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(set.Bytes(), &jwks); err != nil || len(jwks.Keys) != 1 {
		t.Fatalf("jwks output: %v\n%s", err, set.String())
	}
	if k := jwks.Keys[0]; k["kid"] != "rot-1" || k["n"] != pub["n"] || k["d"] != nil {
		t.Errorf("jwks key = %v, want the generated public key", k)
	}
}
