package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/sharedcache/sharedcachetest"
)

// TestServeReplicaThatCannotApplyKeepsTheOldKey: two replicas share Redis
// and start with a due rotation; one of them cannot apply the new state
// (as when it cannot open the new key: another HSM slot, no KMS
// permission). After the grace period the old key stays registered while
// that replica is alive, with the replica named in /healthz, `keys rotate`
// and `keys status`, and its follow_failing metric at 1; once it stops and
// its ack expires, the rotation removes the old key.
func TestServeReplicaThatCannotApplyKeepsTheOldKey(t *testing.T) {
	t.Parallel()
	redis := sharedcachetest.Start(t)
	rs := newRotationSetup(t, time.Second, "  follow_every: 1s\n  check_every: 10s\n", "file:keys/",
		"      grace: 4s\ncache:\n  shared:\n    redis:\n      addrs: ["+redis.Addr()+"]\n    keys:\n      - id: k1\n        file: cache-key\n")
	emu, path := rs.emu, rs.path
	const clientID = rotationClientID
	writeSecret(t, filepath.Join(rs.dir, "cache-key"), []byte("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"))
	// Registered 165 days ago: with rotation every 90 days, due now.
	if err := emu.SetKeyExpiry(clientID, "smartcloud-2026", time.Now().Add(200*24*time.Hour)); err != nil {
		t.Fatal(err)
	}

	_, goodLog, _ := startServe(t, path, serveHooks{})
	_, stuckLog, stopStuck := startServe(t, path, serveHooks{applyRotation: func(_, active string) error {
		if active != "" {
			return errors.New("cannot open key " + active + " (test)")
		}
		return nil
	}})
	replicaRE := regexp.MustCompile(`"msg":"key rotation: this replica acknowledges the key it signs with","replica":"([^"]+)"`)
	ids := map[*syncBuffer]string{}
	for _, log := range []*syncBuffer{goodLog, stuckLog} {
		m := replicaRE.FindStringSubmatch(log.String())
		if m == nil {
			t.Fatalf("no replica id in the log:\n%s", log.String())
		}
		ids[log] = m[1]
	}
	good, stuck := ids[goodLog], ids[stuckLog]
	if good == stuck {
		t.Fatalf("both replicas ack as %s", good)
	}

	// The rotation activates the new key and waits out the grace period;
	// then the stuck replica, alive and acking the old key, blocks the
	// retire step.
	blocking := `"blocking":["` + stuck + ` signs with smartcloud-2026"]`
	var health string
	waitFor(t, 90*time.Second, func() bool {
		if reg := kidsOf(emu.RegisteredKeys(clientID)); len(reg) > 0 && !slices.Contains(reg, "smartcloud-2026") {
			t.Fatalf("registered %v: the old key was removed while %s signs with it", reg, stuck)
		}
		health = getHealthz(t, goodLog.String())
		return strings.Contains(health, blocking)
	}, func() string { return "no blocking replica in /healthz: " + health })
	reg := kidsOf(emu.RegisteredKeys(clientID))
	if len(reg) != 2 || reg[0] != "smartcloud-2026" {
		t.Fatalf("registered %v while %s signs with smartcloud-2026; want the old key kept beside the new", reg, stuck)
	}
	next := reg[1]
	if m := scrapeMetrics(t, goodLog.String()); !strings.Contains(m, `tokenbroker_key_active{client="smartcloud",kid="`+next+`"} 1`) ||
		!strings.Contains(m, `tokenbroker_key_rotation_follow_failing{client="smartcloud"} 0`) {
		t.Fatalf("the good replica does not sign with %s, or fails to follow:\n%s", next, m)
	}
	if m := scrapeMetrics(t, stuckLog.String()); !strings.Contains(m, `tokenbroker_key_active{client="smartcloud",kid="smartcloud-2026"} 1`) ||
		!strings.Contains(m, `tokenbroker_key_rotation_follow_failing{client="smartcloud"} 1`) {
		t.Fatalf("the stuck replica does not sign with the old key, or its follow_failing is not 1:\n%s", m)
	}
	// A pass now (the grace period is over) keeps the old key, and says why.
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"keys", "rotate", "--config", path, "--client", "smartcloud"}, &out, &errOut); err != nil {
		t.Fatalf("keys rotate: %v\n%s%s", err, out.String(), errOut.String())
	}
	if want := "replica " + stuck + " still signs with smartcloud-2026"; !strings.Contains(out.String(), "client smartcloud: waiting") ||
		!strings.Contains(out.String(), want) {
		t.Fatalf("keys rotate after the grace period:\n%s\nwant waiting, %q", out.String(), want)
	}
	if reg := kidsOf(emu.RegisteredKeys(clientID)); !slices.Contains(reg, "smartcloud-2026") {
		t.Fatalf("registered %v after a pass: the old key was removed while %s signs with it", reg, stuck)
	}
	out.Reset()
	if err := run(context.Background(), []string{"keys", "status", "--config", path}, &out, &errOut); err != nil {
		t.Fatalf("keys status: %v\n%s%s", err, out.String(), errOut.String())
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`blocking +` + regexp.QuoteMeta(stuck) + ` +still signs with smartcloud-2026`),
		regexp.MustCompile(`replica +` + regexp.QuoteMeta(stuck) + ` +signs with smartcloud-2026`),
		regexp.MustCompile(`replica +` + regexp.QuoteMeta(good) + ` +signs with ` + regexp.QuoteMeta(next)),
	} {
		if !want.MatchString(out.String()) {
			t.Fatalf("keys status lacks %s:\n%s", want, out.String())
		}
	}

	// The stuck replica stops: once its ack expires, the old key goes.
	if err := stopStuck(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, func() bool {
		return slices.Equal(kidsOf(emu.RegisteredKeys(clientID)), []string{next})
	}, func() string {
		return fmt.Sprintf("registered %v after the stuck replica stopped", kidsOf(emu.RegisteredKeys(clientID)))
	})
	waitFor(t, 30*time.Second, func() bool {
		health = getHealthz(t, goodLog.String())
		return !strings.Contains(health, `"blocking"`) && strings.Contains(health, `"last_outcome":"rotated"`)
	}, func() string { return "/healthz after the rotation: " + health })
}

func kidsOf(reg []maskinportentest.RegisteredKey) []string {
	var out []string
	for _, k := range reg {
		out = append(out, k.KID)
	}
	return out
}

// waitFor polls cond until it holds, failing t with msg() after bound.
func waitFor(t *testing.T, bound time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// getHealthz finds the /healthz URL in the JSON log and fetches it.
func getHealthz(t *testing.T, log string) string {
	t.Helper()
	m := regexp.MustCompile(`"healthz":"(http://[^"]+)"`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no healthz URL in the log:\n%s", log)
	}
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
