package maskinportentest_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	failed []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.failed = append(r.failed, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatal(args ...any) { r.failed = append(r.failed, fmt.Sprint(args...)) }

func TestCheckNoLeaksCatchesLeaks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.emu.Record()
	assertion := sign(t, f.claims(), jwa.RS256, "kid-a", signertest.KeyA)
	status, body := f.post(t, assertion)
	if status != 200 {
		t.Fatalf("status %d: %v", status, body)
	}
	token := body["access_token"].(string)
	sig := token[strings.LastIndexByte(token, '.')+1:]
	for name, text := range map[string]string{
		"assertion":       "log line " + assertion,
		"token":           `{"msg":"x","t":"` + token + `"}`,
		"token_signature": "sig=" + sig,
	} {
		r := &recorder{TB: t}
		f.emu.CheckNoLeaks(r, name, text)
		if len(r.failed) == 0 {
			t.Errorf("%s: leak not detected", name)
		}
	}
	r := &recorder{TB: t}
	f.emu.CheckNoLeaks(r, "clean", "a clean log with jti and kid-a only")
	if len(r.failed) != 0 {
		t.Errorf("clean text flagged: %v", r.failed)
	}
}
