// Package sharedcachetest starts redis-server processes for tests: each on
// a free port in its own temp dir, never a system service.
package sharedcachetest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/broker/sharedcache"
)

// Server is a redis-server process of the test's own, on a free port in a
// temp dir; Stop and Start stop and restart it on the same port.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	pre  []string // before the options: a config file, --sentinel
	tls  *tls.Config
	args []string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Addr is the server's host:port.
func (r *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Start starts a redis-server with args added to its command line (such as
// "--user", "name", "on", ">password", "~*", "+@all"), stopped at the end of the test,
// or skips the test when there is none
// (scripts/test.sh installs it and sets TOKENBROKER_REQUIRE_REDIS=1, which
// turns the skip into a failure).
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	r := newServer(t)
	r.args = args
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// StartSentinel starts a Sentinel (redis-server --sentinel) that monitors
// master under the name "mymaster", with a quorum of 1.
func StartSentinel(t testing.TB, master *Server) *Server {
	t.Helper()
	r := newServer(t)
	conf := filepath.Join(r.dir, "sentinel.conf")
	if err := os.WriteFile(conf, []byte("sentinel monitor mymaster 127.0.0.1 "+strconv.Itoa(master.port)+" 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.pre = []string{conf, "--sentinel"}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// StartCluster starts a Redis Cluster of one node that serves all 16,384
// slots, and waits until the cluster state is ok.
func StartCluster(t testing.TB) *Server {
	t.Helper()
	r := newServer(t)
	r.args = []string{"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(r.dir, "nodes.conf")}
	r.Start()
	t.Cleanup(r.Stop)
	c := r.Raw(t)
	ctx := context.Background()
	if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster state not ok: %q, %v", info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartTLS starts a redis-server that speaks only TLS on its port, with
// the certificate and key at certFile and keyFile, asking clients for a
// certificate issued by the CA at caFile. client is what the helper
// itself connects with (to wait for the server).
func StartTLS(t testing.TB, certFile, keyFile, caFile string, client *tls.Config) *Server {
	t.Helper()
	r := newServer(t)
	r.tls = client
	r.args = []string{"--tls-port", strconv.Itoa(r.port), "--port", "0", "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", caFile}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func newServer(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("TOKENBROKER_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server not found and TOKENBROKER_REQUIRE_REDIS is set")
		}
		t.Skip("redis-server not found (apt-get install redis-server, or run scripts/test.sh)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return &Server{t: t, bin: bin, dir: t.TempDir(), port: port}
}

// Start starts the server and waits until it answers PING.
func (r *Server) Start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, append(r.pre, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(r.dir, "redis.log"))...)
	r.cmd.Args = append(r.cmd.Args, r.args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done, cmd := make(chan struct{}), r.cmd
	r.done = done
	go func() { _ = cmd.Wait(); close(done) }()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, TLSConfig: r.tls})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.Ping(context.Background()).Err()
		var answer redis.Error // NOAUTH and the like: it is up
		if err == nil || errors.As(err, &answer) {
			return
		}
		exited := false
		select {
		case <-done:
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server on %s did not start: %v\n%s", r.Addr(), err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pause stops the server process (SIGSTOP): it holds its connections and
// answers nothing, as a hung Redis does, until Resume.
func (r *Server) Pause() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		r.t.Fatal(err)
	}
}

// Resume continues a paused server (SIGCONT).
func (r *Server) Resume() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		r.t.Fatal(err)
	}
}

// Stop kills the server (as a crash would) and waits for it to exit.
func (r *Server) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill() // a paused process dies too
	<-r.done
	r.cmd = nil
}

// Client returns a client made as the broker makes it.
func (r *Server) Client(t testing.TB) redis.UniversalClient {
	t.Helper()
	c, err := sharedcache.Dial(sharedcache.RedisConfig{Addrs: []string{r.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Raw returns a plain client for inspecting the server.
func (r *Server) Raw(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), TLSConfig: r.tls})
	t.Cleanup(func() { c.Close() })
	return c
}
