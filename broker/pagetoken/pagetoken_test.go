package pagetoken

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"
	"time"
)

var (
	t0   = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	bind = Binding{Caller: "spiffe://example.org/billing", Client: "smartcloud", SystemID: "991825827_smartcloud", List: "requests"}
	ref  = "/authentication/api/v1/systemuser/request/vendor/bysystem/991825827_smartcloud?token=2"
)

func codec(t testing.TB, key []byte, now *time.Time) *Codec {
	t.Helper()
	c, err := New(key, func() time.Time { return *now })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoundTripAndBinding(t *testing.T) {
	t.Parallel()
	now := t0
	c := codec(t, nil, &now)
	tok := c.Encode(bind, ref)
	if got, err := c.Decode(bind, tok); err != nil || got != ref {
		t.Fatalf("Decode = %q, %v", got, err)
	}
	if c.Encode(bind, "") != "" {
		t.Error("no next page must give an empty token")
	}
	for name, other := range map[string]Binding{
		"other_caller": {Caller: "spiffe://example.org/other", Client: bind.Client, SystemID: bind.SystemID, List: bind.List},
		"other_client": {Caller: bind.Caller, Client: "other", SystemID: bind.SystemID, List: bind.List},
		"other_system": {Caller: bind.Caller, Client: bind.Client, SystemID: "991825827_smartcloud2", List: bind.List},
		"other_list":   {Caller: bind.Caller, Client: bind.Client, SystemID: bind.SystemID, List: "system_users"},
		// Length prefixes: moving bytes from one field to the next is
		// another binding.
		"shifted": {Caller: bind.Caller + "smart", Client: "cloud", SystemID: bind.SystemID, List: bind.List},
	} {
		if _, err := c.Decode(other, tok); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	for i := range raw {
		bad := bytes.Clone(raw)
		bad[i] ^= 1
		if _, err := c.Decode(bind, base64.RawURLEncoding.EncodeToString(bad)); !errors.Is(err, ErrInvalid) {
			t.Fatalf("byte %d flipped: %v, want ErrInvalid", i, err)
		}
	}
	if _, err := codec(t, nil, &now).Decode(bind, tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("another process's random key: %v, want ErrInvalid", err)
	}
}

func TestAge(t *testing.T) {
	t.Parallel()
	now := t0
	c := codec(t, nil, &now)
	tok := c.Encode(bind, ref)
	now = t0.Add(MaxAge)
	if _, err := c.Decode(bind, tok); err != nil {
		t.Errorf("at MaxAge: %v", err)
	}
	now = t0.Add(MaxAge + time.Second)
	if _, err := c.Decode(bind, tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("after MaxAge: %v, want ErrInvalid", err)
	}
	now = t0.Add(-maxSkew - time.Second)
	if _, err := c.Decode(bind, tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("issued in the future: %v, want ErrInvalid", err)
	}
}

func TestSharedKey(t *testing.T) {
	t.Parallel()
	now := t0
	key := bytes.Repeat([]byte{7}, MinKeyLen)
	tok := codec(t, key, &now).Encode(bind, ref)
	if got, err := codec(t, key, &now).Decode(bind, tok); err != nil || got != ref {
		t.Errorf("a replica with the same key: %q %v", got, err)
	}
	if _, err := New(key[:MinKeyLen-1], nil); err == nil {
		t.Error("a short key was accepted")
	}
}

// FuzzDecode: no input but a token this codec issued decodes, and nothing
// panics.
func FuzzDecode(f *testing.F) {
	now := t0
	c := codec(f, bytes.Repeat([]byte{1}, MinKeyLen), &now)
	good := c.Encode(bind, ref)
	for _, s := range []string{good, good[:len(good)-1], "", "AQ", "not base64!", base64.RawURLEncoding.EncodeToString([]byte("\x01\x00\x00\x00\x00\x00\x00\x00\x00x"))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := c.Decode(bind, s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode(%q) = %v, want ErrInvalid", s, err)
			}
			return
		}
		if c.Encode(bind, got) != s {
			t.Fatalf("Decode accepted %q, which this codec did not issue", s)
		}
	})
}
