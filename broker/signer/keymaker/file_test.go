package keymaker_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// names lists the entries of dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestFileMaker: a key made in a directory given relative to the base
// directory opens by its absolute path, signs, has the configured size and
// mode 0600, and nothing but <kid>.pem is left in the directory.
func TestFileMaker(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	if err := os.Mkdir(filepath.Join(base, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:keys/", BaseDir: base, Algorithm: signer.RS384, Bits: 3072})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(base, "keys", kid+".pem")
	if spec.URI != "file://"+path || spec.KeyID != kid || spec.Algorithm != signer.RS384 {
		t.Errorf("spec %+v, want file://%s", spec, path)
	}
	spec.BaseDir = "/elsewhere" // the URI is absolute
	key := open(t, spec)
	if bits(key) != 3072 || key.Algorithm != signer.RS384 {
		t.Errorf("made a %d-bit %s key, want 3072 RS384", bits(key), key.Algorithm)
	}
	signertest.Conformance(t, key)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", st, err)
	}
	if got := names(t, filepath.Join(base, "keys")); !slices.Equal(got, []string{kid + ".pem"}) {
		t.Errorf("directory holds %v, want only the key", got)
	}
}

// TestFileMakerIsIdempotent: making the same kid again returns the same key
// and writes no other file; what a crashed Make left half-written is
// removed; a file under the key's name that is no valid key is refused.
func TestFileMakerIsIdempotent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:" + dir})
	if err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of writing left a temporary file.
	if err := os.WriteFile(filepath.Join(dir, "."+kid+".pem.tmp-123"), []byte("-----BEGIN"), 0o600); err != nil {
		t.Fatal(err)
	}
	first, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, kid+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Errorf("second Make gave %+v, first %+v", second, first)
	}
	after, _ := os.ReadFile(filepath.Join(dir, kid+".pem"))
	if string(before) != string(after) {
		t.Error("the second Make replaced the key")
	}
	if got := names(t, dir); !slices.Equal(got, []string{kid + ".pem"}) {
		t.Errorf("directory holds %v, want only the key", got)
	}
	if !samePublic(open(t, first), open(t, second)) {
		t.Error("the two specs open different keys")
	}

	for name, tc := range map[string]struct {
		data []byte
		mode os.FileMode
		want string
	}{
		"garbage":     {[]byte("not a key"), 0o600, "is not a usable key"},
		"loose mode":  {signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o644, "is not a usable key"},
		"short key":   {signertest.PEM(t, "rsa-1024.pem"), 0o600, "is not a usable key"},
		"not RSA key": {signertest.PEM(t, "ec-p256.pkcs8.pem"), 0o600, "is not a usable key"},
	} {
		other := "1" + kid[1:]
		p := filepath.Join(dir, other+".pem")
		if err := os.WriteFile(p, tc.data, tc.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, tc.mode)
		_, err := m.Make(context.Background(), other)
		wantErr(t, name, err, tc.want)
		os.Remove(p)
	}
	if err := os.Symlink(filepath.Join(dir, kid+".pem"), filepath.Join(dir, "link.pem")); err != nil {
		t.Fatal(err)
	}
	_, err = m.Make(context.Background(), "link")
	wantErr(t, "symlink", err, "not a regular file")
}

// TestFileMakerRefuses: kids that are no safe file name, and directories
// that are missing, not directories, or writable by group or others.
func TestFileMakerRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:" + dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "../x", "a/b", ".hidden", "-x", "a.pem", "a b", "a\x00b", strings.Repeat("a", 49)} {
		if _, err := m.Make(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "kid") {
			t.Errorf("Make(%q) = %v, want a kid error", bad, err)
		}
	}
	if got := names(t, dir); len(got) != 0 {
		t.Errorf("refused Makes left %v", got)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	loose := filepath.Join(dir, "loose")
	os.Mkdir(loose, 0o700)
	os.Chmod(loose, 0o770)
	for _, tc := range []struct{ loc, want string }{
		{"file:" + filepath.Join(dir, "missing"), "location: key directory:"},
		{"file:" + file, "is not a directory"},
		{"file:" + loose, "group or others may write"},
		{"file://host/x", "location:"},
	} {
		_, err := keymaker.NewMaker(keymaker.MakerConfig{Location: tc.loc})
		wantErr(t, tc.loc, err, tc.want)
	}
	// A directory opened up after NewMaker is refused at Make.
	os.Chmod(dir, 0o777)
	defer os.Chmod(dir, 0o700)
	_, err = m.Make(context.Background(), kid)
	wantErr(t, "Make in a loosened directory", err, "group or others may write")
}

// TestFileMakerDestroy: Destroy removes the key (it opens no more), again is
// fine, and it refuses any file but <kid>.pem in its directory.
func TestFileMakerDestroy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "file:" + dir})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), kid+".pem")
	os.WriteFile(outside, signertest.PEM(t, "rsa-a.pkcs8.pem"), 0o600)
	for name, bad := range map[string]signer.Spec{
		"outside":   {URI: "file://" + outside, KeyID: kid},
		"dot-dot":   {URI: "file:" + dir + "/../" + filepath.Base(dir) + "/x/../../" + filepath.Base(outside), KeyID: kid},
		"other kid": {URI: spec.URI, KeyID: "other"},
		"bad kid":   {URI: spec.URI, KeyID: "../" + kid},
		"relative":  {URI: "file:" + kid + ".pem", KeyID: kid, BaseDir: filepath.Dir(outside)},
		"pkcs11":    {URI: "pkcs11:token=t;object=o?module-path=/m.so", KeyID: kid},
	} {
		if err := m.Destroy(context.Background(), bad); err == nil {
			t.Errorf("Destroy %s (%+v) accepted", name, bad)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("a refused Destroy removed a file: %v", err)
	}
	if _, err := keys.Open(context.Background(), spec); err != nil {
		t.Fatalf("a refused Destroy removed the key: %v", err)
	}
	for range 2 {
		if err := m.Destroy(context.Background(), spec); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
	}
	if _, err := keys.Open(context.Background(), spec); err == nil {
		t.Error("the destroyed key still opens")
	}
}
