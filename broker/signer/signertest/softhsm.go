package signertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
)

// SoftHSMModule is where Debian's softhsm2 package puts the PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSMPin is the user PIN of the tokens SoftHSM makes.
const SoftHSMPin = "1234"

var (
	softhsmOnce sync.Once
	softhsmErr  error
	softhsmMu   sync.Mutex
	softhsmKeys = map[string]string{}
)

// softhsmSetup skips the test without softhsm2 (fails it under CI) and
// points SOFTHSM2_CONF, once per test process, at a temporary directory.
func softhsmSetup(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat(SoftHSMModule); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("signertest: %s missing; scripts/test.sh installs softhsm2", SoftHSMModule)
		}
		tb.Skipf("signertest: %s missing (apt-get install softhsm2)", SoftHSMModule)
	}
	softhsmOnce.Do(func() {
		dir, err := os.MkdirTemp("", "softhsm-")
		if err != nil {
			softhsmErr = err
			return
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
			softhsmErr = err
			return
		}
		softhsmErr = os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
		os.Setenv("SOFTHSM2_CONF", conf)
	})
	if softhsmErr != nil {
		tb.Fatalf("signertest: softhsm setup: %v", softhsmErr)
	}
}

// SoftHSM returns a pkcs11: URI for the test key called name (KeyA or
// KeyB), imported into a SoftHSM2 token of its own. All tokens live in one
// temporary directory named by SOFTHSM2_CONF, set once per test process
// (the module reads it when first loaded). Without softhsm2 installed the
// test is skipped, except under CI, where it fails: CI must run it.
func SoftHSM(tb testing.TB, name string) string {
	tb.Helper()
	softhsmSetup(tb)
	softhsmMu.Lock()
	defer softhsmMu.Unlock()
	if uri, ok := softhsmKeys[name]; ok {
		return uri
	}
	label := "tb-" + name
	run := softhsmUtil(tb)
	run("--init-token", "--free", "--label", label, "--pin", SoftHSMPin, "--so-pin", "5678")
	pem := filepath.Join(filepath.Dir(os.Getenv("SOFTHSM2_CONF")), name+".pem")
	if err := os.WriteFile(pem, PEM(tb, name+".pkcs8.pem"), 0o600); err != nil {
		tb.Fatal(err)
	}
	run("--import", pem, "--token", label, "--label", "mp-key", "--id", "01", "--pin", SoftHSMPin)
	uri := fmt.Sprintf("pkcs11:token=%s;object=mp-key;id=%%01?module-path=%s&pin-value=%s", label, SoftHSMModule, SoftHSMPin)
	softhsmKeys[name] = uri
	return uri
}

// softhsmUtil returns a function that runs softhsm2-util and fails the
// test when it fails.
func softhsmUtil(tb testing.TB) func(args ...string) {
	return func(args ...string) {
		tb.Helper()
		out, err := exec.Command("softhsm2-util", args...).CombinedOutput()
		if err != nil {
			tb.Fatalf("signertest: softhsm2-util %v: %v\n%s", args[:2], err, out)
		}
	}
}

var softhsmTokens = map[string]string{}

// SoftHSMToken returns a pkcs11: location (a URI naming a token, not a key)
// of an empty SoftHSM2 token labelled "tbt-"+name, made once per name and
// test process, with its PIN read from a pin-source file: where a key maker
// makes keys.
func SoftHSMToken(tb testing.TB, name string) string {
	tb.Helper()
	softhsmSetup(tb)
	softhsmMu.Lock()
	defer softhsmMu.Unlock()
	if uri, ok := softhsmTokens[name]; ok {
		return uri
	}
	label := "tbt-" + name
	softhsmUtil(tb)("--init-token", "--free", "--label", label, "--pin", SoftHSMPin, "--so-pin", "5678")
	pin := filepath.Join(filepath.Dir(os.Getenv("SOFTHSM2_CONF")), label+".pin")
	if err := os.WriteFile(pin, []byte(SoftHSMPin+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	uri := fmt.Sprintf("pkcs11:token=%s?module-path=%s&pin-source=file:%s", label, SoftHSMModule, pin)
	softhsmTokens[name] = uri
	return uri
}

var (
	sessionsOnce sync.Once
	sessionsCtx  *pkcs11.Ctx
)

// SoftHSMSessions counts the sessions open in the SoftHSM module of this
// process, asking the module itself: every handle SoftHSM has given out is
// a small number, reused once closed, and C_GetSessionInfo tells the open
// ones. Call it only while some key of the module is open (the module is
// then initialised; this never initialises or finalises it).
func SoftHSMSessions(tb testing.TB) int {
	tb.Helper()
	sessionsOnce.Do(func() {
		p := pkcs11.New(SoftHSMModule)
		if p == nil {
			return
		}
		if err := p.Initialize(); err == nil {
			// Nobody had it open: leave it as it was.
			_ = p.Finalize()
			p.Destroy()
			return
		}
		sessionsCtx = p
	})
	if sessionsCtx == nil {
		tb.Fatal("signertest: SoftHSMSessions needs an open key of the module")
	}
	n := 0
	for h := pkcs11.SessionHandle(1); h < 1<<16; h++ {
		if _, err := sessionsCtx.GetSessionInfo(h); err == nil {
			n++
		}
	}
	return n
}
