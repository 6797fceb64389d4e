package tlsmaterial_test

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/server/logtest"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = logtest.Buffer

// fixture is a directory with server.pem, server-key.pem and ca.pem.
type fixture struct {
	dir               string
	cert, key, ca     string
	log               *syncBuffer
	files             *tlsmaterial.Files
	firstCA, secondCA *tlstest.CA
	first             *tlstest.Issued
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), log: &syncBuffer{}, firstCA: tlstest.NewCA(t, "callers"), secondCA: tlstest.NewCA(t, "callers 2")}
	f.first = f.firstCA.Issue(t, tlstest.Leaf{CN: "tokenbroker", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	f.cert, f.key = f.first.WriteFiles(t, f.dir, "server")
	f.ca = filepath.Join(f.dir, "ca.pem")
	write(t, f.ca, f.firstCA.PEM)
	var err error
	f.files, err = tlsmaterial.LoadFiles(tlsmaterial.FilesConfig{Cert: f.cert, Key: f.key, ClientCA: f.ca,
		Logger: slog.New(slog.NewJSONHandler(f.log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// serving returns the serial of the certificate handed to a handshake.
func (f *fixture) serving(t *testing.T) string {
	t.Helper()
	c, err := f.files.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.Text(16)
}

func serial(i *tlstest.Issued) string { return i.TLS.Leaf.SerialNumber.Text(16) }

// keyLines are the base64 lines of a PEM key: none may show in a log or
// an error.
func keyLines(i *tlstest.Issued) []string {
	var out []string
	for _, l := range strings.Split(string(i.KeyPEM), "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	return out
}

func checkNoKey(t *testing.T, where, text string, keys ...*tlstest.Issued) {
	t.Helper()
	for _, k := range keys {
		for _, l := range keyLines(k) {
			if strings.Contains(text, l) {
				t.Fatalf("%s holds private key material", where)
			}
		}
	}
}

// TestFilesPairWrittenInTwoSteps: a new certificate written before its key
// is refused (the old pair stays in use, one log line however often the
// files are looked at), then taken whole once the key follows.
func TestFilesPairWrittenInTwoSteps(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if got := f.serving(t); got != serial(f.first) {
		t.Fatalf("serving %s, want the first certificate %s", got, serial(f.first))
	}
	if err := f.files.Reload(); !errors.Is(err, tlsmaterial.ErrUnchanged) {
		t.Fatalf("Reload of unchanged files: %v", err)
	}
	second := f.firstCA.Issue(t, tlstest.Leaf{CN: "tokenbroker", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	write(t, f.cert, second.CertPEM)
	for range 3 {
		err := f.files.Reload()
		if err == nil || !strings.Contains(err.Error(), "tls.key") || !strings.Contains(err.Error(), "does not match") {
			t.Fatalf("certificate without its key: %v", err)
		}
		if got := f.serving(t); got != serial(f.first) {
			t.Fatalf("half-written pair in use: serving %s", got)
		}
	}
	if n := strings.Count(f.log.String(), "cannot be used"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, f.log.String())
	}
	if st := f.files.Status(); st.ReloadError == "" || st.Serial != serial(f.first) {
		t.Errorf("status while refused: %+v", st)
	}
	write(t, f.key, second.KeyPEM)
	if err := f.files.Reload(); err != nil {
		t.Fatalf("whole new pair: %v", err)
	}
	if got := f.serving(t); got != serial(second) {
		t.Fatalf("serving %s after the new pair, want %s", got, serial(second))
	}
	if st := f.files.Status(); st.ReloadError != "" || st.Serial != serial(second) || st.Source != "files" {
		t.Errorf("status after the new pair: %+v", st)
	}
	if !strings.Contains(f.log.String(), `"msg":"TLS material reloaded"`) {
		t.Errorf("no reload line:\n%s", f.log.String())
	}
	checkNoKey(t, "the log", f.log.String(), f.first, second)
}

// TestFilesRefused: each broken replacement keeps the material in use,
// with an error naming the field, and no key in the error or the log.
func TestFilesRefused(t *testing.T) {
	t.Parallel()
	other := tlstest.NewCA(t, "x").Issue(t, tlstest.Leaf{CN: "other", Server: true})
	for _, tc := range []struct {
		name  string
		apply func(f *fixture, next *tlstest.Issued)
		want  string
	}{
		{"truncated_certificate", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM[:len(next.CertPEM)-40])
			write(t, f.key, next.KeyPEM)
		}, "tls.cert"},
		{"truncated_key", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM)
			write(t, f.key, next.KeyPEM[:len(next.KeyPEM)/2])
		}, "tls.key"},
		{"key_of_another_certificate", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM)
			write(t, f.key, other.KeyPEM)
		}, "does not match"},
		{"empty_key", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM)
			write(t, f.key, nil)
		}, "tls.key"},
		{"truncated_ca_bundle", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM)
			write(t, f.key, next.KeyPEM)
			write(t, f.ca, append(append([]byte{}, f.firstCA.PEM...), f.secondCA.PEM[:len(f.secondCA.PEM)/2]...))
		}, "tls.client_ca"},
		{"key_in_the_ca_file", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM)
			write(t, f.key, next.KeyPEM)
			write(t, f.ca, next.KeyPEM)
		}, "tls.client_ca"},
		{"missing_key", func(f *fixture, next *tlstest.Issued) {
			write(t, f.cert, next.CertPEM)
			if err := os.Remove(f.key); err != nil {
				t.Fatal(err)
			}
		}, "tls.key"},
		{"expired_certificate", func(f *fixture, _ *tlstest.Issued) {
			exp := f.firstCA.Issue(t, tlstest.Leaf{CN: "tokenbroker", Server: true, Expired: true})
			write(t, f.cert, exp.CertPEM)
			write(t, f.key, exp.KeyPEM)
		}, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			rootsBefore := f.files.Roots()
			next := f.firstCA.Issue(t, tlstest.Leaf{CN: "tokenbroker", Server: true})
			tc.apply(f, next)
			err := f.files.Reload()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Reload = %v, want an error with %q", err, tc.want)
			}
			if got := f.serving(t); got != serial(f.first) {
				t.Errorf("serving %s, want the first certificate", got)
			}
			if f.files.Roots() != rootsBefore {
				t.Error("the CA bundle changed although the reload was refused")
			}
			checkNoKey(t, "the error", err.Error(), f.first, next, other)
			checkNoKey(t, "the log", f.log.String(), f.first, next, other)
		})
	}
}

// TestFilesComeBack: after a file went missing, the set in use coming
// back is taken again and the error cleared.
func TestFilesComeBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if err := os.Remove(f.key); err != nil {
		t.Fatal(err)
	}
	if err := f.files.Reload(); err == nil || f.files.Status().ReloadError == "" {
		t.Fatalf("missing key: %v, status %+v", err, f.files.Status())
	}
	write(t, f.key, f.first.KeyPEM)
	if err := f.files.Reload(); err != nil {
		t.Fatalf("the key back: %v", err)
	}
	if st := f.files.Status(); st.ReloadError != "" || st.Serial != serial(f.first) {
		t.Errorf("status with the key back: %+v", st)
	}
}

// TestFilesNewCABundle: a new callers' CA bundle applies with the pair.
func TestFilesNewCABundle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	caller := f.secondCA.Issue(t, tlstest.Leaf{CN: "billing"})
	if _, err := caller.TLS.Leaf.Verify(x509Opts(f.files)); err == nil {
		t.Fatal("a caller of the second CA verifies before the bundle names it")
	}
	write(t, f.ca, append(append([]byte{}, f.firstCA.PEM...), f.secondCA.PEM...))
	if err := f.files.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := caller.TLS.Leaf.Verify(x509Opts(f.files)); err != nil {
		t.Fatalf("a caller of the second CA after the new bundle: %v", err)
	}
}

// TestLoadFilesErrorsNameTheField: at start, each broken file stops the
// broker with the field's name.
func TestLoadFilesErrorsNameTheField(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	garbage := filepath.Join(f.dir, "garbage.pem")
	write(t, garbage, []byte("garbage"))
	for _, tc := range []struct {
		cfg  tlsmaterial.FilesConfig
		want string
	}{
		{tlsmaterial.FilesConfig{Cert: filepath.Join(f.dir, "nope.pem"), Key: f.key, ClientCA: f.ca}, "tls.cert"},
		{tlsmaterial.FilesConfig{Cert: garbage, Key: f.key, ClientCA: f.ca}, "tls.cert"},
		{tlsmaterial.FilesConfig{Cert: f.cert, Key: garbage, ClientCA: f.ca}, "tls.key"},
		{tlsmaterial.FilesConfig{Cert: f.cert, Key: f.key, ClientCA: garbage}, "tls.client_ca"},
		{tlsmaterial.FilesConfig{Cert: f.cert, Key: f.key, ClientCA: filepath.Join(f.dir, "nope.pem")}, "tls.client_ca"},
	} {
		if _, err := tlsmaterial.LoadFiles(tc.cfg); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("LoadFiles(%+v) = %v, want an error starting %q", tc.cfg, err, tc.want)
		}
	}
}

// TestExpiresSoon: a certificate is reported once less than a third of its
// lifetime remains.
func TestExpiresSoon(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		notBefore, notAfter time.Time
		want                bool
	}{
		{now.Add(-time.Hour), now.Add(89 * 24 * time.Hour), false},
		{now.Add(-60 * 24 * time.Hour), now.Add(30*24*time.Hour - time.Minute), true},
		{now.Add(-30 * time.Minute), now.Add(30 * time.Minute), false}, // an SVID at half-life
		{now.Add(-41 * time.Minute), now.Add(19 * time.Minute), true},  // an SVID SPIRE failed to rotate
		{now.Add(-2 * time.Hour), now.Add(-time.Hour), true},
	} {
		ci := tlsmaterial.CertInfo{NotBefore: tc.notBefore, NotAfter: tc.notAfter}
		if got := ci.ExpiresSoon(now); got != tc.want {
			t.Errorf("ExpiresSoon(%v .. %v) = %v, want %v", tc.notBefore, tc.notAfter, got, tc.want)
		}
	}
}

func x509Opts(f *tlsmaterial.Files) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: f.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}
