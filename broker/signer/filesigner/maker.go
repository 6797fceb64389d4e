package filesigner

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Maker makes new keys as PEM files (PKCS#8, mode 0600) in one directory,
// named <kid>.pem, and destroys them by removing the file. The directory is
// given as a file: URI like a key (file:keys/ relative to the base
// directory, or file:///var/lib/tokenbroker/keys/); it must exist and
// neither group nor others may write to it. The Specs it makes name the
// file by its absolute path, so they open without the base directory.
type Maker struct {
	dir  string
	opts signer.MakeOptions
}

// NewMaker returns a Maker for the directory location names. It fails, naming
// the problem, when the options are wrong or the directory is missing, is
// not a directory, or group or others may write to it.
func NewMaker(location string, opts signer.MakeOptions) (*Maker, error) {
	opts, err := opts.Normalize()
	if err != nil {
		return nil, err
	}
	p, err := ParseURI(location)
	if err != nil {
		return nil, fmt.Errorf("location: %w", err)
	}
	dir, err := filepath.Abs(signer.Spec{BaseDir: opts.BaseDir}.Path(p))
	if err != nil {
		return nil, fmt.Errorf("location: %w", err)
	}
	m := &Maker{dir: dir, opts: opts}
	if err := m.checkDir(); err != nil {
		return nil, err
	}
	return m, nil
}

// Dir returns the absolute directory the maker makes keys in.
func (m *Maker) Dir() string { return m.dir }

func (m *Maker) checkDir() error {
	st, err := os.Stat(m.dir)
	if err != nil {
		return fmt.Errorf("location: key directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("location: %s is not a directory", m.dir)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("location: key directory %s has mode %04o: group or others may write to it; chmod go-w it", m.dir, perm)
	}
	return nil
}

// path returns the file of kid.
func (m *Maker) path(kid string) string { return filepath.Join(m.dir, kid+".pem") }

// Make writes a new RSA key to <dir>/<kid>.pem and returns its Spec. The
// file appears under its name only whole: the key is written to a temporary
// file in the same directory, synced, then linked (or, where the file
// system has no hard links, renamed) to its name, and the directory is
// synced. When the file already exists (a Make that crashed after writing
// it, or ran twice), Make returns it instead of making another, after
// checking that it holds a valid key with mode 0600.
func (m *Maker) Make(_ context.Context, kid string) (signer.Spec, error) {
	if err := signer.CheckMadeKID(kid); err != nil {
		return signer.Spec{}, err
	}
	if err := m.checkDir(); err != nil {
		return signer.Spec{}, err
	}
	final := m.path(kid)
	spec := m.opts.Spec(fileURI(final), kid)
	m.removeTemps(kid)
	switch _, err := os.Lstat(final); {
	case err == nil:
		return spec, m.checkMade(final, kid)
	case !errors.Is(err, fs.ErrNotExist):
		return signer.Spec{}, fmt.Errorf("key file: %w", err)
	}
	if err := m.write(final, kid); err != nil {
		return signer.Spec{}, err
	}
	return spec, m.checkMade(final, kid)
}

// write makes the key and puts it at final, whole or not at all.
func (m *Maker) write(final, kid string) error {
	priv, err := rsa.GenerateKey(rand.Reader, m.opts.Bits)
	if err != nil {
		return fmt.Errorf("generate RSA key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	tmp, err := os.CreateTemp(m.dir, tempPrefix(kid)+"*")
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("key file %s: %w", tmp.Name(), err)
	}
	// A link never replaces a file another Make put there meanwhile.
	switch err := os.Link(tmp.Name(), final); {
	case errors.Is(err, fs.ErrExist):
		return nil
	case err != nil:
		if err := os.Rename(tmp.Name(), final); err != nil {
			return fmt.Errorf("key file: %w", err)
		}
	}
	return syncDir(m.dir)
}

// checkMade checks that the file at path is a regular file with a valid
// key that only its owner may access.
func (m *Maker) checkMade(path, kid string) error {
	st, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("key file %s exists and is not a regular file; move it away", path)
	}
	if _, err := Load(path, kid, m.opts.Algorithm); err != nil {
		return fmt.Errorf("key file %s exists and is not a usable key (%v); move it away", path, err)
	}
	return nil
}

// removeTemps removes what a crashed Make of kid left behind.
func (m *Maker) removeTemps(kid string) {
	left, _ := filepath.Glob(filepath.Join(m.dir, tempPrefix(kid)+"*"))
	for _, p := range left {
		os.Remove(p)
	}
}

func tempPrefix(kid string) string { return "." + kid + ".pem.tmp-" }

// Owns reports, with nil, whether spec names a key this maker makes: the
// file <kid>.pem (kid being the spec's KeyID) in its directory. Otherwise
// the error says why, without repeating a URI of another scheme (which may
// carry a PIN).
func (m *Maker) Owns(spec signer.Spec) error {
	if err := signer.CheckMadeKID(spec.KeyID); err != nil {
		return err
	}
	if !strings.HasPrefix(spec.URI, "file:") {
		return fmt.Errorf("not a file: key (the keys are made as files in %s)", m.dir)
	}
	p, err := ParseURI(spec.URI)
	if err != nil {
		return err
	}
	path, err := filepath.Abs(spec.Path(p))
	if err != nil {
		return err
	}
	if want := m.path(spec.KeyID); path != want {
		return fmt.Errorf("key file %s: not %s, the file this maker makes for kid %q", path, want, spec.KeyID)
	}
	return nil
}

// Destroy removes the key file spec names, which must be <kid>.pem (kid
// being the spec's KeyID) in the maker's directory (Owns); any other path
// is refused. A file that is already gone is not an error.
func (m *Maker) Destroy(_ context.Context, spec signer.Spec) error {
	if err := m.Owns(spec); err != nil {
		return fmt.Errorf("%w; refusing to remove it", err)
	}
	path := m.path(spec.KeyID)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("key file: %w", err)
	}
	return syncDir(m.dir)
}

// fileURI returns the file:///... URI of an absolute path.
func fileURI(path string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(path)}).String()
}

// syncDir makes a change to the directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("key directory %s: sync: %w", dir, err)
	}
	return nil
}
