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
	"slices"
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
	"google.golang.org/grpc/status"

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
	spireBrokerID    = "spiffe://example.org/tokenbroker"
	spireCallerID    = "spiffe://example.org/ns/prod/sa/billing"
	spireCallerUID   = 65534 // nobody: the caller is another process, attested by its uid
	// spireSVIDTTL is the lifetime of the workloads' SVIDs; the agent
	// renews them at half of it.
	spireSVIDTTL = 20 * time.Second
)

// spireCall is one call of the caller process, as it reports it.
type spireCall struct {
	OK bool `json:"ok"`
	// Code and Err are the gRPC code and error of a failed call.
	Code string `json:"code,omitempty"`
	Err  string `json:"err,omitempty"`
	// ServerSerial and ServerCA (the authority key id) are of the SVID the
	// broker presented; CallerSerial and CallerCA of the caller's own.
	ServerSerial string `json:"server_serial,omitempty"`
	ServerCA     string `json:"server_ca,omitempty"`
	CallerSerial string `json:"caller_serial,omitempty"`
	CallerCA     string `json:"caller_ca,omitempty"`
	// BundleCAs is how many CAs of the broker's trust domain the caller
	// trusts.
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
			conn, err := tokenbrokerclient.DialSPIFFE(addr, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(spireBrokerID)))
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
				c.Code, c.Err = status.Code(err).String(), err.Error()
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
			c.BundleCAs = len(b.X509Authorities()) // of the broker's trust domain
		}
		_ = out.Encode(c)
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// spire runs a spire-server and a spire-agent of one trust domain in dir.
type spire struct {
	t                   *testing.T
	bin, dir, td        string
	serverSock          string
	agentSock           string
	serverLog, agentLog *syncBuffer
	serverPort          int
	agentID             string
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

// entry registers spiffeID for the processes of uid under the agent, and
// returns the entry's id.
func (s *spire) entry(spiffeID string, uid int, federatesWith ...string) string {
	s.t.Helper()
	flags := []string{"-parentID", s.agentID, "-spiffeID", spiffeID, "-selector", fmt.Sprintf("unix:uid:%d", uid),
		"-x509SVIDTTL", fmt.Sprint(int(spireSVIDTTL.Seconds()))}
	for _, td := range federatesWith {
		flags = append(flags, "-federatesWith", td)
	}
	m := regexp.MustCompile(`Entry ID\s*:\s*(\S+)`).FindStringSubmatch(s.server("entry create", flags...))
	if m == nil {
		s.t.Fatal("spire-server entry create printed no entry id")
	}
	return m[1]
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

// spireBin returns the directory of the SPIRE binaries, or skips the test
// (fails it under TOKENBROKER_REQUIRE_SPIRE=1) when SPIRE cannot run here.
func spireBin(t *testing.T) string {
	t.Helper()
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
			t.Fatal("the SPIRE tests run callers as other uids, which needs root")
		}
		t.Skip("needs root to run callers as other uids")
	}
	return bin
}

// startSPIRE starts a server and an agent of trust domain td; register
// runs between the two, so that the agent's first sync has the entries.
func startSPIRE(t *testing.T, bin, td string, register func(*spire)) *spire {
	t.Helper()
	// The sockets' directory must be short (sun_path) and open to the
	// callers' uids.
	dir, err := os.MkdirTemp("", "tbspire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &spire{t: t, bin: bin, dir: dir, td: td, serverSock: filepath.Join(dir, "server.sock"), agentSock: filepath.Join(dir, "agent.sock"),
		serverLog: &syncBuffer{}, agentLog: &syncBuffer{}, agentID: "spiffe://" + td + "/agent"}
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
`, s.serverPort, s.serverSock, td, filepath.Join(dir, "server-data"), spireSVIDTTL.String(), filepath.Join(dir, "server-data", "datastore.sqlite3"))
	writeTemp(t, filepath.Join(dir, "server.conf"), serverConf)
	s.start("spire-server", s.serverLog, "run", "-config", filepath.Join(dir, "server.conf"))
	until(t, "spire-server to be healthy", 2*time.Minute, func() bool {
		return exec.Command(filepath.Join(bin, "spire-server"), "healthcheck", "-socketPath", s.serverSock).Run() == nil
	})
	token := regexp.MustCompile(`Token: (\S+)`).FindStringSubmatch(s.server("token generate", "-spiffeID", s.agentID, "-ttl", "600"))
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
`, filepath.Join(dir, "agent-data"), s.serverPort, s.agentSock, td, filepath.Join(dir, "bundle.pem"), token[1])
	writeTemp(t, filepath.Join(dir, "agent.conf"), agentConf)
	if register != nil {
		register(s)
	}
	s.start("spire-agent", s.agentLog, "run", "-config", filepath.Join(dir, "agent.conf"))
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

func (s *spire) start(name string, log *syncBuffer, args ...string) {
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
			s.t.Logf("%s (%s) log:\n%s", name, s.td, log.String())
		}
	})
}

// federate makes s trust other's trust domain: other's bundle, set on s.
func (s *spire) federate(other *spire) {
	s.t.Helper()
	path := filepath.Join(s.dir, other.td+".pem")
	writeTemp(s.t, path, other.server("bundle show"))
	s.server("bundle set", "-id", "spiffe://"+other.td, "-path", path)
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

// spireBroker starts the broker with tls.source spiffe on the agent of sp,
// with a policy that lets callers (SPIFFE IDs) ask for anything. The SVIDs
// it takes into use are recorded in svids.
func spireBroker(t *testing.T, sp *spire, callers ...string) (addr string, log *syncBuffer, stop func() error, svids func() int) {
	t.Helper()
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
	cfg = strings.Replace(cfg, "callers: [local:insecure]", `callers: ["`+strings.Join(callers, `", "`)+`"]`, 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	updates := make(chan tlsmaterial.CertInfo)
	var mu sync.Mutex
	seen := map[string]bool{}
	go func() {
		for ci := range updates {
			mu.Lock()
			seen[ci.Serial] = true
			mu.Unlock()
		}
	}()
	addr, log, stop = startServe(t, path, serveHooks{svidUpdated: updates})
	return addr, log, stop, func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
}

// spireCaller is a caller process: this test binary again, as another
// uid, running TestSPIRECaller against the agent at agentSock.
type spireCaller struct {
	t        *testing.T
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stderr   bytes.Buffer
	mu       sync.Mutex
	calls    []spireCall
	raw      []string
	lines    chan struct{}
	readDone chan struct{}
	stopped  bool
}

func startCaller(t *testing.T, dir, agentSock, addr string, uid int) *spireCaller {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "caller.test")
	if _, err := os.Stat(bin); err != nil {
		data, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := &spireCaller{t: t, lines: make(chan struct{}, 1), readDone: make(chan struct{})}
	c.cmd = exec.Command(bin, "-test.run", "^TestSPIRECaller$")
	c.cmd.Dir = dir
	c.cmd.Env = []string{"TOKENBROKER_SPIRE_CALLER_ADDR=" + addr, "SPIFFE_ENDPOINT_SOCKET=unix://" + agentSock, "TMPDIR=" + os.TempDir()}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var call spireCall
			c.mu.Lock()
			if strings.HasPrefix(sc.Text(), "{") && json.Unmarshal(sc.Bytes(), &call) == nil {
				c.calls = append(c.calls, call)
			} else {
				c.raw = append(c.raw, sc.Text())
			}
			c.mu.Unlock()
			select {
			case c.lines <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(c.stop)
	return c
}

// stop ends the caller (it stops when its stdin closes) and waits for it.
func (c *spireCaller) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	c.stdin.Close()
	<-c.readDone
	_ = c.cmd.Wait()
}

// wait waits until cond holds for the calls so far (bounded: the caller
// and SPIRE are other processes).
func (c *spireCaller) wait(what string, limit time.Duration, cond func([]spireCall) bool) {
	c.t.Helper()
	give := time.After(limit)
	for {
		c.mu.Lock()
		ok := cond(c.calls)
		n := len(c.calls)
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.lines:
		case <-c.readDone:
			c.t.Fatalf("the caller stopped while waiting for %s (%d calls):\n%s\n%s", what, n, strings.Join(c.raw, "\n"), c.stderr.String())
		case <-give:
			c.t.Fatalf("timed out after %v waiting for %s (%d calls)", limit, what, n)
		}
	}
}

// snapshot returns the calls so far.
func (c *spireCaller) snapshot() []spireCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func last(cs []spireCall) spireCall {
	if len(cs) == 0 {
		return spireCall{}
	}
	return cs[len(cs)-1]
}

// TestSPIRE: the broker takes its SVID from a real SPIRE agent (its uid is
// its selector), a caller process with another uid gets its own, and
// GetToken runs over mTLS with SVIDs only. The caller calls on a new
// connection every 50 ms throughout an SVID rotation (20 s SVIDs) and a
// forced CA rotation (prepare, activate, taint, revoke): no call fails,
// and the broker presents the new SVIDs, finally from the new CA alone.
func TestSPIRE(t *testing.T) {
	bin := spireBin(t)
	started := time.Now()
	sp := startSPIRE(t, bin, spireTrustDomain, func(s *spire) {
		s.entry(spireBrokerID, os.Getuid())
		s.entry(spireCallerID, spireCallerUID)
	})
	t.Logf("SPIRE up in %v", time.Since(started).Round(time.Millisecond))
	addr, log, stop, brokerSVIDs := spireBroker(t, sp, spireCallerID)
	t.Logf("broker serving with its SPIRE SVID after %v", time.Since(started).Round(time.Millisecond))

	caller := startCaller(t, sp.dir, sp.agentSock, addr, spireCallerUID)
	caller.wait("the first calls", time.Minute, func(cs []spireCall) bool { return len(cs) >= 5 })
	first := caller.snapshot()[0]
	if !first.OK {
		t.Fatalf("first call over SVIDs: %s %s", first.Code, first.Err)
	}
	t.Logf("first GetToken over SVIDs after %v: broker SVID %s, caller SVID %s", time.Since(started).Round(time.Millisecond), first.ServerSerial, first.CallerSerial)

	// SVID rotation: the agent renews both SVIDs at half their lifetime.
	caller.wait("a rotated broker SVID and caller SVID", 3*spireSVIDTTL, func(cs []spireCall) bool {
		l := last(cs)
		return l.OK && l.ServerSerial != first.ServerSerial && l.CallerSerial != first.CallerSerial
	})
	t.Logf("SVIDs rotated after %v", time.Since(started).Round(time.Millisecond))

	// CA rotation, forced: prepare a new CA (it joins the bundle), wait
	// until the caller and the broker trust both, activate it, taint the
	// old one (every SVID it signed is renewed), then revoke the old one
	// (it leaves the bundle).
	oldCA, _, _ := sp.authorities()
	sp.server("localauthority x509 prepare")
	_, newCA, _ := sp.authorities()
	if newCA == "" || newCA == oldCA {
		t.Fatalf("no prepared authority (active %s, prepared %s)", oldCA, newCA)
	}
	caller.wait("the new CA in the caller's bundle", time.Minute, func(cs []spireCall) bool { return last(cs).BundleCAs == 2 })
	until(t, "the new CA in the broker's bundle", time.Minute, func() bool {
		return strings.Contains(log.String(), spireTrustDomain+" (2 CA)")
	})
	sp.server("localauthority x509 activate", "-authorityID", newCA)
	sp.server("localauthority x509 taint", "-authorityID", oldCA)
	caller.wait("broker and caller SVIDs from the new CA", 2*time.Minute, func(cs []spireCall) bool {
		l := last(cs)
		return l.OK && l.ServerCA == newCA && l.CallerCA == newCA
	})
	t.Logf("SVIDs from the new CA %s after %v", newCA, time.Since(started).Round(time.Millisecond))
	sp.server("localauthority x509 revoke", "-authorityID", oldCA)
	caller.wait("the old CA out of the caller's bundle", time.Minute, func(cs []spireCall) bool { return last(cs).BundleCAs == 1 })
	until(t, "the old CA out of the broker's bundle", time.Minute, func() bool {
		out := log.String()
		return strings.LastIndex(out, spireTrustDomain+" (1 CA)") > strings.LastIndex(out, spireTrustDomain+" (2 CA)")
	})
	n := len(caller.snapshot())
	caller.wait("more calls after the revocation", time.Minute, func(cs []spireCall) bool { return len(cs) >= n+10 })
	caller.stop()

	calls := caller.snapshot()
	failed := 0
	servers, callers, serverCAs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, c := range calls {
		if !c.OK {
			failed++
			t.Errorf("failed call: %s %s", c.Code, c.Err)
			continue
		}
		servers[c.ServerSerial], callers[c.CallerSerial], serverCAs[c.ServerCA] = true, true, true
	}
	t.Logf("%d calls, %d failed; %d broker SVIDs, %d caller SVIDs, %d CAs seen by the caller; SVIDs the broker took: %d; total %v",
		len(calls), failed, len(servers), len(callers), len(serverCAs), brokerSVIDs(), time.Since(started).Round(time.Millisecond))
	if len(servers) < 3 || len(serverCAs) != 2 {
		t.Errorf("the caller saw %d broker SVIDs from %d CAs; want at least 3 (two rotations) from 2", len(servers), len(serverCAs))
	}
	if l := last(calls); l.ServerCA != newCA || l.CallerCA != newCA {
		t.Errorf("last call: broker SVID from %s, caller SVID from %s; want the new CA %s", l.ServerCA, l.CallerCA, newCA)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if out := log.String(); !strings.Contains(out, `"caller":"`+spireCallerID+`"`) || !strings.Contains(out, `"decision":"allow"`) {
		t.Error("the audit log does not show the caller's SPIFFE ID allowed")
	}
}

// TestSPIREFederation: two SPIRE deployments, example.org (the broker's)
// and partner.org (its callers', as uids 65534 and 65533). A partner.org
// SVID is refused (UNAUTHENTICATED) while example.org's SPIRE has no
// partner.org bundle; once the SPIRE servers federate and the broker's
// entry federates with partner.org, SPIRE delivers that bundle to the
// broker and partner.org/billing, named in the policy, gets its token,
// while partner.org/reports, not named, gets PERMISSION_DENIED.
func TestSPIREFederation(t *testing.T) {
	bin := spireBin(t)
	const (
		partnerTD      = "partner.org"
		partnerBilling = "spiffe://partner.org/billing"
		partnerReports = "spiffe://partner.org/reports"
		reportsUID     = 65533
	)
	var brokerEntry string
	home := startSPIRE(t, bin, spireTrustDomain, func(s *spire) { brokerEntry = s.entry(spireBrokerID, os.Getuid()) })
	partner := startSPIRE(t, bin, partnerTD, nil)
	// The partner's callers trust example.org (to verify the broker).
	partner.federate(home)
	partner.entry(partnerBilling, spireCallerUID, "spiffe://"+spireTrustDomain)
	partner.entry(partnerReports, reportsUID, "spiffe://"+spireTrustDomain)
	addr, log, stop, _ := spireBroker(t, home, partnerBilling)

	billing := startCaller(t, partner.dir, partner.agentSock, addr, spireCallerUID)
	billing.wait("a call of partner.org/billing before the federation", 2*time.Minute, func(cs []spireCall) bool { return len(cs) > 0 })
	if l := last(billing.snapshot()); l.Code != "Unauthenticated" {
		t.Fatalf("partner.org/billing before example.org federates with partner.org: %s %s, want Unauthenticated", l.Code, l.Err)
	}
	home.federate(partner)
	home.server("entry update", "-entryID", brokerEntry, "-parentID", home.agentID, "-spiffeID", spireBrokerID,
		"-selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "-x509SVIDTTL", fmt.Sprint(int(spireSVIDTTL.Seconds())),
		"-federatesWith", "spiffe://"+partnerTD)
	billing.wait("partner.org/billing let in once federated", 2*time.Minute, func(cs []spireCall) bool { return last(cs).OK })
	reports := startCaller(t, partner.dir, partner.agentSock, addr, reportsUID)
	reports.wait("a call of partner.org/reports", time.Minute, func(cs []spireCall) bool { return len(cs) > 0 })
	if l := last(reports.snapshot()); l.Code != "PermissionDenied" {
		t.Errorf("partner.org/reports, federated but not in the policy: %s %s, want PermissionDenied", l.Code, l.Err)
	}
	billing.stop()
	reports.stop()
	for _, c := range billing.snapshot() {
		if !c.OK && c.Code != "Unauthenticated" {
			t.Errorf("partner.org/billing: %s %s", c.Code, c.Err)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	out := log.String()
	for _, want := range []string{`"caller":"` + partnerBilling + `"`, `"caller":"` + partnerReports + `"`, `"decision":"deny"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the broker's log lacks %s", want)
		}
	}
}
