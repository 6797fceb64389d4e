package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerclient "github.com/tokenbroker/tokenbroker/client"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
)

// The SPIRE test runs a real spire-server and spire-agent (built by
// scripts/spire.sh into .tmp/bin). scripts/test.sh sets
// TOKENBROKER_REQUIRE_SPIRE=1, so that there a missing binary fails the
// test instead of skipping it.
const (
	spireTrustDomain = "example.org"
	spireCallerID    = "spiffe://example.org/ns/prod/sa/billing"
	spireCallerUID   = 65534 // nobody: the caller is another process, attested by its uid
	// spireSVIDTTL is the lifetime of the workloads' SVIDs; the agent
	// renews them at half of it.
	spireSVIDTTL = 20 * time.Second
)

// spireCall is one call of the caller process, as it reports it.
type spireCall struct {
	OK  bool   `json:"ok"`
	Err string `json:"err,omitempty"`
	// ServerSerial and ServerCA (the authority key id) are of the SVID the
	// broker presented; CallerSerial and CallerCA of the caller's own.
	ServerSerial string `json:"server_serial,omitempty"`
	ServerCA     string `json:"server_ca,omitempty"`
	CallerSerial string `json:"caller_serial,omitempty"`
	CallerCA     string `json:"caller_ca,omitempty"`
	// BundleCAs is how many CAs of its trust domain the caller trusts.
	BundleCAs int `json:"bundle_cas"`
}

// TestSPIRECaller is the caller process of TestSPIRE (it does nothing in a
// normal run): it gets its SVID from the SPIRE agent as uid 65534 and calls
// GetToken on a new connection every 50 ms until its stdin closes, printing
// one JSON line per call.
func TestSPIRECaller(t *testing.T) {
	addr := os.Getenv("TOKENBROKER_SPIRE_CALLER_ADDR")
	if addr == "" {
		t.Skip("only run by TestSPIRE")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	src, err := workloadapi.NewX509Source(ctx) // SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := json.NewEncoder(os.Stdout)
	tick := time.NewTicker(50 * time.Millisecond) // pacing only
	defer tick.Stop()
	for ctx.Err() == nil {
		var c spireCall
		func() {
			conn, err := tokenbrokerclient.DialSPIFFE(addr, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/tokenbroker")))
			if err != nil {
				c.Err = err.Error()
				return
			}
			defer conn.Close()
			var p peer.Peer
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			defer rcancel()
			_, err = tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(rctx,
				&tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{demoScope}}, grpc.Peer(&p))
			if err != nil {
				c.Err = err.Error()
				return
			}
			c.OK = true
			ti := p.AuthInfo.(credentials.TLSInfo)
			// The SVID presented on this connection: the one the source
			// held at the handshake.
			leaf := ti.State.PeerCertificates[0]
			c.ServerSerial, c.ServerCA = leaf.SerialNumber.Text(16), hex.EncodeToString(leaf.AuthorityKeyId)
		}()
		if ctx.Err() != nil {
			break
		}
		if svid, err := src.GetX509SVID(); err == nil {
			c.CallerSerial, c.CallerCA = svid.Certificates[0].SerialNumber.Text(16), hex.EncodeToString(svid.Certificates[0].AuthorityKeyId)
		}
		if b, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(spireTrustDomain)); err == nil {
			c.BundleCAs = len(b.X509Authorities())
		}
		_ = out.Encode(c)
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// spire runs spire-server and spire-agent in dir.
type spire struct {
	t              *testing.T
	bin, dir       string
	serverSock     string
	agentSock      string
	serverLog      *syncBuffer
	agentLog       *syncBuffer
	serverPort     int
	serverProc     *exec.Cmd
	agentProc      *exec.Cmd
	agentSPIFFEID  string
	brokerSPIFFEID string
}

// server runs the spire-server command cmd ("entry create") with flags
// against the running server.
func (s *spire) server(cmd string, flags ...string) string {
	s.t.Helper()
	args := append(strings.Fields(cmd), append([]string{"-socketPath", s.serverSock}, flags...)...)
	out, err := exec.Command(filepath.Join(s.bin, "spire-server"), args...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("spire-server %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// until polls cond (a question to an external process) until it holds,
// for at most limit.
func until(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for give := time.Now().Add(limit); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(give) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
	}
}

func startSPIRE(t *testing.T, bin string) *spire {
	t.Helper()
	// The sockets' directory must be short (sun_path) and open to the
	// caller's uid.
	dir, err := os.MkdirTemp("", "tbspire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &spire{t: t, bin: bin, dir: dir, serverSock: filepath.Join(dir, "server.sock"), agentSock: filepath.Join(dir, "agent.sock"),
		serverLog: &syncBuffer{}, agentLog: &syncBuffer{},
		agentSPIFFEID: "spiffe://example.org/agent", brokerSPIFFEID: "spiffe://example.org/tokenbroker"}
	for _, d := range []string{"server-data", "agent-data"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.serverPort = lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	serverConf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  ca_ttl = "1h"
  default_x509_svid_ttl = %q
  agent_ttl = "1h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`, s.serverPort, s.serverSock, spireTrustDomain, filepath.Join(dir, "server-data"), spireSVIDTTL.String(), filepath.Join(dir, "server-data", "datastore.sqlite3"))
	writeTemp(t, filepath.Join(dir, "server.conf"), serverConf)
	s.serverProc = s.start("spire-server", s.serverLog, "run", "-config", filepath.Join(dir, "server.conf"))
	until(t, "spire-server to be healthy", 2*time.Minute, func() bool {
		return exec.Command(filepath.Join(bin, "spire-server"), "healthcheck", "-socketPath", s.serverSock).Run() == nil
	})
	token := regexp.MustCompile(`Token: (\S+)`).FindStringSubmatch(s.server("token generate", "-spiffeID", s.agentSPIFFEID, "-ttl", "600"))
	if token == nil {
		t.Fatal("spire-server token generate printed no token")
	}
	writeTemp(t, filepath.Join(dir, "bundle.pem"), s.server("bundle show"))
	agentConf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  trust_bundle_path = %q
  join_token = %q
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, filepath.Join(dir, "agent-data"), s.serverPort, s.agentSock, spireTrustDomain, filepath.Join(dir, "bundle.pem"), token[1])
	writeTemp(t, filepath.Join(dir, "agent.conf"), agentConf)
	// Register the broker (this test process, uid 0) and the caller (uid
	// 65534) by their unix uid under the agent.
	ttl := fmt.Sprint(int(spireSVIDTTL.Seconds()))
	s.server("entry create", "-parentID", s.agentSPIFFEID, "-spiffeID", s.brokerSPIFFEID, "-selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "-x509SVIDTTL", ttl)
	s.server("entry create", "-parentID", s.agentSPIFFEID, "-spiffeID", spireCallerID, "-selector", fmt.Sprintf("unix:uid:%d", spireCallerUID), "-x509SVIDTTL", ttl)
	s.agentProc = s.start("spire-agent", s.agentLog, "run", "-config", filepath.Join(dir, "agent.conf"))
	until(t, "spire-agent to be healthy", 2*time.Minute, func() bool {
		return exec.Command(filepath.Join(bin, "spire-agent"), "healthcheck", "-socketPath", s.agentSock).Run() == nil
	})
	return s
}

func writeTemp(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (s *spire) start(name string, log *syncBuffer, args ...string) *exec.Cmd {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if s.t.Failed() {
			s.t.Logf("%s log:\n%s", name, log.String())
		}
	})
	return cmd
}

// authorities returns the authority ids of the active, prepared and old
// local X.509 authorities (SPIRE names a CA by its subject key id).
func (s *spire) authorities() (active, prepared, old string) {
	s.t.Helper()
	var st map[string]map[string]any
	if err := json.Unmarshal([]byte(s.server("localauthority x509 show", "-output", "json")), &st); err != nil {
		s.t.Fatal(err)
	}
	id := func(k string) string {
		for _, f := range []string{"authority_id", "authorityId"} {
			if v, ok := st[k][f].(string); ok {
				return strings.ToLower(v)
			}
		}
		return ""
	}
	return id("active"), id("prepared"), id("old")
}

// TestSPIRE: the broker takes its SVID from a real SPIRE agent (its uid is
// its selector), a caller process with another uid gets its own, and
// GetToken runs over mTLS with SVIDs only. The caller calls on a new
// connection every 50 ms throughout an SVID rotation (20 s SVIDs) and a
// forced CA rotation (prepare, activate, taint, revoke): no call fails,
// and the broker presents the new SVIDs, finally from the new CA alone.
func TestSPIRE(t *testing.T) {
	bin, err := filepath.Abs(filepath.Join("..", "..", ".tmp", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	required := os.Getenv("TOKENBROKER_REQUIRE_SPIRE") == "1"
	if _, err := os.Stat(filepath.Join(bin, "spire-server")); err != nil {
		if required {
			t.Fatalf("spire-server not built (scripts/spire.sh): %v", err)
		}
		t.Skip("spire-server not built; scripts/spire.sh builds it")
	}
	if os.Getuid() != 0 {
		if required {
			t.Fatal("TestSPIRE runs the caller as uid 65534, which needs root")
		}
		t.Skip("needs root to run the caller as another uid")
	}
	started := time.Now()
	sp := startSPIRE(t, bin)
	t.Logf("SPIRE up in %v", time.Since(started).Round(time.Millisecond))

	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")
	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	cfg := strings.Replace(string(readFile(t, path)), "insecure: true\n",
		"tls:\n  source: spiffe\n  spiffe:\n    socket: unix://"+sp.agentSock+"\n", 1)
	cfg = strings.Replace(cfg, "callers: [local:insecure]", `callers: ["`+spireCallerID+`"]`, 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	updates := make(chan tlsmaterial.CertInfo)
	var mu sync.Mutex
	var brokerSVIDs []tlsmaterial.CertInfo
	go func() {
		for ci := range updates {
			mu.Lock()
			if len(brokerSVIDs) == 0 || brokerSVIDs[len(brokerSVIDs)-1].Serial != ci.Serial {
				brokerSVIDs = append(brokerSVIDs, ci)
			}
			mu.Unlock()
		}
	}()
	addr, log, stop := startServe(t, path, serveHooks{svidUpdated: updates})
	t.Logf("broker serving with its SPIRE SVID after %v", time.Since(started).Round(time.Millisecond))

	// The caller: this test binary again, as uid 65534.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	callerBin := filepath.Join(sp.dir, "caller.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(callerBin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	caller := exec.Command(callerBin, "-test.run", "^TestSPIRECaller$")
	caller.Dir = sp.dir
	caller.Env = []string{"TOKENBROKER_SPIRE_CALLER_ADDR=" + addr, "SPIFFE_ENDPOINT_SOCKET=unix://" + sp.agentSock, "TMPDIR=" + os.TempDir()}
	caller.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: spireCallerUID, Gid: spireCallerUID}}
	stdin, err := caller.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := caller.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var callerErr bytes.Buffer
	caller.Stderr = &callerErr
	if err := caller.Start(); err != nil {
		t.Fatal(err)
	}
	var calls []spireCall
	var raw []string
	lines := make(chan struct{}, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var c spireCall
			mu.Lock()
			if json.Unmarshal(sc.Bytes(), &c) == nil && strings.HasPrefix(sc.Text(), "{") {
				calls = append(calls, c)
			} else {
				raw = append(raw, sc.Text())
			}
			mu.Unlock()
			select {
			case lines <- struct{}{}:
			default:
			}
		}
	}()
	stopCaller := func() {
		stdin.Close()
		<-readDone
		_ = caller.Wait()
	}
	defer func() {
		if stdin != nil {
			stopCaller()
		}
	}()
	// waitCalls waits until cond holds for the calls so far (bounded: the
	// caller and SPIRE are other processes).
	waitCalls := func(what string, limit time.Duration, cond func([]spireCall) bool) {
		t.Helper()
		give := time.After(limit)
		for {
			mu.Lock()
			ok := cond(calls)
			n := len(calls)
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-lines:
			case <-readDone:
				t.Fatalf("the caller stopped while waiting for %s (%d calls):\n%s\n%s", what, n, strings.Join(raw, "\n"), callerErr.String())
			case <-give:
				t.Fatalf("timed out after %v waiting for %s (%d calls)", limit, what, n)
			}
		}
	}
	last := func(cs []spireCall) spireCall {
		if len(cs) == 0 {
			return spireCall{}
		}
		return cs[len(cs)-1]
	}
	waitCalls("the first calls", time.Minute, func(cs []spireCall) bool { return len(cs) >= 5 })
	mu.Lock()
	first := calls[0]
	mu.Unlock()
	if !first.OK {
		t.Fatalf("first call over SVIDs: %s", first.Err)
	}
	t.Logf("first GetToken over SVIDs after %v: broker SVID %s, caller SVID %s", time.Since(started).Round(time.Millisecond), first.ServerSerial, first.CallerSerial)

	// SVID rotation: the agent renews both SVIDs at half their lifetime.
	waitCalls("a rotated broker SVID and caller SVID", 3*spireSVIDTTL, func(cs []spireCall) bool {
		l := last(cs)
		return l.OK && l.ServerSerial != first.ServerSerial && l.CallerSerial != first.CallerSerial
	})
	t.Logf("SVIDs rotated after %v", time.Since(started).Round(time.Millisecond))

	// CA rotation, forced: prepare a new CA (it joins the bundle), wait
	// until the caller trusts both, activate it, taint the old one (every
	// SVID it signed is renewed), then revoke the old one (it leaves the
	// bundle).
	oldCA, _, _ := sp.authorities()
	sp.server("localauthority x509 prepare")
	_, newCA, _ := sp.authorities()
	if newCA == "" || newCA == oldCA {
		t.Fatalf("no prepared authority (active %s, prepared %s)", oldCA, newCA)
	}
	waitCalls("the new CA in the caller's bundle", time.Minute, func(cs []spireCall) bool { return last(cs).BundleCAs == 2 })
	until(t, "the new CA in the broker's bundle", time.Minute, func() bool {
		return strings.Contains(log.String(), spireTrustDomain+" (2 CA)")
	})
	sp.server("localauthority x509 activate", "-authorityID", newCA)
	sp.server("localauthority x509 taint", "-authorityID", oldCA)
	waitCalls("broker and caller SVIDs from the new CA", 2*time.Minute, func(cs []spireCall) bool {
		l := last(cs)
		return l.OK && l.ServerCA == newCA && l.CallerCA == newCA
	})
	t.Logf("SVIDs from the new CA %s after %v", newCA, time.Since(started).Round(time.Millisecond))
	sp.server("localauthority x509 revoke", "-authorityID", oldCA)
	waitCalls("the old CA out of the caller's bundle", time.Minute, func(cs []spireCall) bool { return last(cs).BundleCAs == 1 })
	until(t, "the old CA out of the broker's bundle", time.Minute, func() bool {
		return strings.Contains(log.String(), spireTrustDomain+" (1 CA)") &&
			strings.LastIndex(log.String(), spireTrustDomain+" (1 CA)") > strings.LastIndex(log.String(), spireTrustDomain+" (2 CA)")
	})
	mu.Lock()
	n := len(calls)
	mu.Unlock()
	waitCalls("more calls after the revocation", time.Minute, func(cs []spireCall) bool { return len(cs) >= n+10 })
	stopCaller()
	stdin = nil

	mu.Lock()
	defer mu.Unlock()
	failed := 0
	servers, callers, serverCAs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, c := range calls {
		if !c.OK {
			failed++
			t.Errorf("failed call: %s", c.Err)
			continue
		}
		servers[c.ServerSerial], callers[c.CallerSerial], serverCAs[c.ServerCA] = true, true, true
	}
	t.Logf("%d calls, %d failed; %d broker SVIDs, %d caller SVIDs, %d CAs seen by the caller; broker's own log of its SVIDs: %d; total %v",
		len(calls), failed, len(servers), len(callers), len(serverCAs), len(brokerSVIDs), time.Since(started).Round(time.Millisecond))
	if len(servers) < 3 || len(serverCAs) != 2 {
		t.Errorf("the caller saw %d broker SVIDs from %d CAs; want at least 3 (two rotations) from 2", len(servers), len(serverCAs))
	}
	if l := calls[len(calls)-1]; l.ServerCA != newCA || l.CallerCA != newCA {
		t.Errorf("last call: broker SVID from %s, caller SVID from %s; want the new CA %s", l.ServerCA, l.CallerCA, newCA)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	out := log.String()
	if !strings.Contains(out, `"caller":"`+spireCallerID+`"`) || !strings.Contains(out, `"decision":"allow"`) {
		t.Error("the audit log does not show the caller's SPIFFE ID allowed")
	}
}
