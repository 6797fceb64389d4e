package sharedcache

import (
	"bytes"
	"strings"
	"testing"
)

var (
	k1 = Key{ID: "k1", Secret: []byte(strings.Repeat("1", 32))}
	k2 = Key{ID: "k2", Secret: []byte(strings.Repeat("2", 32))}
)

// The encryption key rotates without dropping the cache: values sealed
// with the old key open while it is listed, new values use the new one,
// and the names stay those of the name key.
func TestSealRotation(t *testing.T) {
	t.Parallel()
	old, err := newSealer([]Key{k1}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	v, err := old.seal("key", []byte("plain"))
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := newSealer([]Key{k2, k1}, "k2", "k1")
	if err != nil {
		t.Fatal(err)
	}
	if p, err := rotated.open("key", v); err != nil || string(p) != "plain" {
		t.Fatalf("old value after rotation: %q, %v", p, err)
	}
	if rotated.name("key") != old.name("key") {
		t.Fatal("names changed with the encryption key while the name key stayed")
	}
	v2, _ := rotated.seal("key", []byte("plain"))
	if !bytes.Contains(v2[:4], []byte("k2")) {
		t.Fatal("new value not sealed with the new key")
	}
	if _, err := old.open("key", v2); err == nil {
		t.Fatal("a value of an unknown key id opened")
	}
	if _, err := rotated.open("other key", v2); err == nil {
		t.Fatal("a value opened as another cache key")
	}
	v2[len(v2)-1] ^= 1
	if _, err := rotated.open("key", v2); err == nil {
		t.Fatal("a changed value opened")
	}
}

func TestSealConfigErrors(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		keys     []Key
		enc, nam string
		want     string
	}{
		"none":        {nil, "", "", "keys: at least one"},
		"short":       {[]Key{{ID: "a", Secret: []byte("short")}}, "", "", "keys[0] (a): secret of 5 bytes"},
		"dup":         {[]Key{k1, k1}, "", "", `keys[1].id "k1": used twice`},
		"bad id":      {[]Key{{ID: "a b", Secret: k1.Secret}}, "", "", "keys[0].id"},
		"unknown enc": {[]Key{k1}, "k9", "", `encrypt_key "k9"`},
		"unknown nam": {[]Key{k1}, "", "k9", `name_key "k9"`},
	} {
		_, err := newSealer(tc.keys, tc.enc, tc.nam)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", name, err, tc.want)
		}
	}
}
