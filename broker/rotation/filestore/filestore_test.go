package filestore_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
	"github.com/tokenbroker/tokenbroker/broker/rotation/filestore"
	"github.com/tokenbroker/tokenbroker/broker/rotation/rotationtest"
)

func newStore(t *testing.T) *filestore.Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := filestore.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	rotationtest.StoreConformance(t, rotationtest.Harness{
		New: func(t *testing.T) rotation.Store { return newStore(t) },
		Share: func(t *testing.T, s rotation.Store) rotation.Store {
			o, err := filestore.New(s.(*filestore.Store).Dir())
			if err != nil {
				t.Fatal(err)
			}
			return o
		},
		// A lock file removed by hand: another process may lock the new one.
		Lose: func(t *testing.T, s rotation.Store, client string) {
			if err := os.Remove(filepath.Join(s.(*filestore.Store).Dir(), client+".rotation.lock")); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// The files are the ones the package doc names, mode 0600, nothing is
// left beside them (no temp file), and no client name leaves the
// directory: the parent holds the directory alone.
func TestFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	names := rotationtest.OddClientNames()
	var want []string
	for _, name := range names {
		l, err := s.Lease(ctx, name, time.Minute)
		if err != nil {
			if len(name) < 60 && utf8.ValidString(name) {
				t.Fatalf("Lease %q: %v; only names too long for a file or not UTF-8 are refused", name, err)
			}
			continue
		}
		if err := l.Save(ctx, rotation.State{Active: "kid"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for name, base := range map[string]string{"demo": "demo", "Demo": "%44emo", "a/b": "a%2Fb", "..": "%2E.",
		"a%2Fb": "a%252%46b", ".a": "%2Ea", "æ": "%C3%A6", "a.rotation.json": "a.rotation.json"} {
		if !slices.Contains(names, name) {
			l, err := s.Lease(ctx, name, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Save(ctx, rotation.State{Active: "kid"}); err != nil {
				t.Fatal(err)
			}
			l.Release(ctx)
		}
		want = append(want, base+".rotation.json", base+".rotation.lock")
	}
	entries, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if !info.Mode().IsRegular() || info.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v; want a regular file, 0600", e.Name(), info.Mode())
		}
		if strings.HasPrefix(e.Name(), ".") || strings.Contains(e.Name(), "/") ||
			!strings.HasSuffix(e.Name(), ".rotation.json") && !strings.HasSuffix(e.Name(), ".rotation.lock") {
			t.Errorf("unexpected file %q in the directory", e.Name())
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("no file %q among %q", w, got)
		}
	}
	parent, err := os.ReadDir(filepath.Dir(s.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	if len(parent) != 1 || parent[0].Name() != "keys" {
		t.Fatalf("the directory's parent holds %v; want only keys/ (a client name escaped)", parent)
	}
}

func TestNewRefusesDirectory(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	for _, tc := range []struct {
		name string
		make func(path string) error
		want string
	}{
		{"group_writable", func(p string) error { return mkdirMode(p, 0o770) }, "group and others must not write"},
		{"world_writable", func(p string) error { return mkdirMode(p, 0o757) }, "group and others must not write"},
		{"sticky_tmp", func(p string) error { return mkdirMode(p, 0o1777) }, "group and others must not write"},
		{"missing", func(string) error { return nil }, "no such file"},
		{"a_file", func(p string) error { return os.WriteFile(p, nil, 0o600) }, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(base, tc.name)
			if err := tc.make(p); err != nil {
				t.Fatal(err)
			}
			_, err := filestore.New(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%s): %v; want an error saying %q", tc.name, err, tc.want)
			}
		})
	}
	if _, err := filestore.New(""); err == nil {
		t.Fatal("New(\"\"): no error")
	}
}

func mkdirMode(p string, mode os.FileMode) error {
	if err := os.Mkdir(p, 0o700); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// A state file that is not the client's own is an error naming the
// client, never the zero State or another client's State: renamed from
// another client, corrupt, writable by others, or a symbolic link.
func TestLoadRefusesForeignFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	l, err := s.Lease(ctx, "other", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Save(ctx, rotationtest.FullState()); err != nil {
		t.Fatal(err)
	}
	l.Release(ctx)
	other := filepath.Join(s.Dir(), "other.rotation.json")
	b, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, client, want string
		make               func(path string) error
	}{
		{"copied", "copied", `holds the state of client "other"`, func(p string) error { return os.WriteFile(p, b, 0o600) }},
		{"corrupt", "corrupt", "unexpected end of JSON", func(p string) error { return os.WriteFile(p, b[:len(b)/2], 0o600) }},
		{"writable", "writable", "lets group or others write", func(p string) error {
			if err := os.WriteFile(p, b, 0o600); err != nil {
				return err
			}
			return os.Chmod(p, 0o622)
		}},
		{"symlink", "symlink", "too many levels of symbolic links", func(p string) error { return os.Symlink(other, p) }},
		{"directory", "directory", "not a regular file", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.make(filepath.Join(s.Dir(), tc.client+".rotation.json")); err != nil {
				t.Fatal(err)
			}
			st, err := s.Load(ctx, tc.client)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `client "`+tc.client+`"`) {
				t.Fatalf("Load %q: %+v, %v; want an error naming the client and saying %q", tc.client, st, err, tc.want)
			}
		})
	}
}

// A Save that cannot write (the directory made read-only under it) fails,
// names the client, leaves the old State and no temp file.
func TestSaveFailureKeepsOldState(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		t.Skip("root writes to a read-only directory")
	}
	ctx := context.Background()
	s := newStore(t)
	l, err := s.Lease(ctx, "demo", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	if err := l.Save(ctx, rotation.State{Active: "kid-1"}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.Dir(), 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(s.Dir(), 0o700)
	err = l.Save(ctx, rotation.State{Active: "kid-2"})
	if err == nil || errors.Is(err, rotation.ErrLeaseLost) || !strings.Contains(err.Error(), `client "demo": save state`) {
		t.Fatalf("Save into a read-only directory: %v; want an error naming the client, not ErrLeaseLost", err)
	}
	rotationtest.MustLoad(t, s, "demo", rotation.State{Active: "kid-1"})
	entries, _ := os.ReadDir(s.Dir())
	if len(entries) != 2 {
		t.Fatalf("directory holds %v; want the state and lock files only", entries)
	}
}

// helperEnv makes the test binary, started again by TestLeaseAcrossProcesses,
// hold a lease in the directory it names until it is killed.
const helperEnv = "TOKENBROKER_FILESTORE_HOLD_LEASE"

// The lease holds across processes: while a second process (this test
// binary again) holds it, this one gets ErrLeaseHeld and reads the State
// the other saved; once the other dies (SIGKILL, as a crash), the lease is
// free without anyone releasing it.
func TestLeaseAcrossProcesses(t *testing.T) {
	if dir := os.Getenv(helperEnv); dir != "" {
		holdLease(dir)
		return
	}
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseAcrossProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+s.Dir())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("helper process said %q, %v; want \"held\"", line, err)
	}
	if l, err := s.Lease(ctx, "demo", time.Minute); !errors.Is(err, rotation.ErrLeaseHeld) {
		if err == nil {
			l.Release(ctx)
		}
		t.Fatalf("Lease while another process holds it: %v; want ErrLeaseHeld", err)
	}
	rotationtest.MustLoad(t, s, "demo", rotation.State{Active: "kid-from-helper"})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	// The kernel released the dead process's flock as it closed its files,
	// before Wait returned.
	l, err := s.Lease(ctx, "demo", time.Minute)
	if err != nil {
		t.Fatalf("Lease after the holder died: %v; want it free", err)
	}
	if err := l.Save(ctx, rotation.State{Active: "kid-after"}); err != nil {
		t.Fatal(err)
	}
	rotationtest.MustLoad(t, s, "demo", rotation.State{Active: "kid-after"})
	l.Release(ctx)
}

// holdLease is the helper process: lease "demo" in dir, save a State, say
// "held", and wait to be killed.
func holdLease(dir string) {
	ctx := context.Background()
	s, err := filestore.New(dir)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(2)
	}
	l, err := s.Lease(ctx, "demo", time.Minute)
	if err == nil {
		err = l.Save(ctx, rotation.State{Active: "kid-from-helper"})
	}
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(2)
	}
	os.Stdout.WriteString("held\n")
	time.Sleep(time.Hour) // until killed
	os.Exit(3)
}

// A Save whose rename fails (a directory in the state file's place) fails,
// names the client and leaves no temp file behind; this one runs as root
// too.
func TestSaveFailureLeavesNoTempFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	if err := os.MkdirAll(filepath.Join(s.Dir(), "demo.rotation.json", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := s.Lease(ctx, "demo", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	err = l.Save(ctx, rotation.State{Active: "kid-1"})
	if err == nil || errors.Is(err, rotation.ErrLeaseLost) || !strings.Contains(err.Error(), `client "demo": save state`) {
		t.Fatalf("Save over a directory: %v; want an error naming the client, not ErrLeaseLost", err)
	}
	entries, _ := os.ReadDir(s.Dir())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("temp file %s left behind", e.Name())
		}
	}
}

// Each replica's ack is its own file, <c>.rotation.ack-<r>.json, mode
// 0600, with "." of the replica id encoded; an ack expired for longer than
// its ttl is removed when the acks are read, and a file holding another
// replica's ack is refused.
func TestAckFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	if err := s.Ack(ctx, "demo", "pod-a", "kid-new", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, "demo", "host.b", "kid-old", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	a := filepath.Join(s.Dir(), "demo.rotation.ack-pod-a.json")
	b := filepath.Join(s.Dir(), "demo.rotation.ack-host%2Eb.json")
	for _, p := range []string{a, b} {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode() != 0o600 {
			t.Fatalf("%s: %v, %v; want a file of mode 0600", p, fi, err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := s.Acks(ctx, "demo"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(b); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the expired ack file of host.b is still there")
		}
		time.Sleep(5 * time.Millisecond)
	}
	entries, err := os.ReadDir(s.Dir())
	if err != nil || len(entries) != 1 || entries[0].Name() != filepath.Base(a) {
		t.Fatalf("directory holds %v (%v); want pod-a's ack only", entries, err)
	}
	// pod-a's ack put under pod-c's name is refused, not taken as pod-c's.
	data, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(), "demo.rotation.ack-pod-c.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if acks, err := s.Acks(ctx, "demo"); err == nil {
		t.Fatalf("Acks with a file renamed to another replica: %v, no error; want it refused", acks)
	}
}
