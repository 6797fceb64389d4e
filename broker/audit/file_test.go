package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fresh := filepath.Join(dir, "fresh.jsonl")
	f, err := OpenFile(fresh)
	if err != nil {
		t.Fatalf("new file: %v", err)
	}
	if err := New(f).Write(Record{Caller: "cn:x", Decision: Allow}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st, err := os.Stat(fresh); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("new file mode: %v %v, want 0600", st, err)
	}
	f, err = OpenFile(fresh) // reopened: appended to, not truncated
	if err != nil {
		t.Fatalf("existing 0600 file: %v", err)
	}
	if err := New(f).Write(Record{Caller: "cn:y", Decision: Deny}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, _ := os.ReadFile(fresh); strings.Count(string(b), "\n") != 2 {
		t.Errorf("file after two opens:\n%s", b)
	}

	refuse := func(name, path, want string) {
		t.Helper()
		f, err := OpenFile(path)
		if err == nil {
			f.Close()
			t.Errorf("%s: opened", name)
			return
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q lacks %q", name, err, want)
		}
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o602} {
		p := filepath.Join(dir, "mode"+mode.String())
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		refuse("mode "+mode.String(), p, "chmod 600")
		if b, _ := os.ReadFile(p); len(b) != 0 {
			t.Errorf("mode %v: written to", mode)
		}
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fresh, link); err != nil {
		t.Fatal(err)
	}
	refuse("symlink", link, "")
	refuse("directory", dir, "")
	if os.Geteuid() == 0 {
		p := filepath.Join(dir, "foreign")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refuse("owned by another user", p, "owned by uid 65534")
	}
}
