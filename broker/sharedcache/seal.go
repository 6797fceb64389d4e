package sharedcache

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// MinSecretLen is the least length of a key's secret, in bytes.
const MinSecretLen = 32

// Key is one secret of the shared cache. The AES-256-GCM key that seals
// values and the HMAC-SHA256 key that names them are both derived from
// Secret, each with its own label, so that neither reveals the other.
type Key struct {
	// ID names the key in every value it seals: 1 to 64 printable ASCII
	// characters. It is stored in clear.
	ID string
	// Secret is at least MinSecretLen bytes of high entropy (for example
	// 32 random bytes, or their base64).
	Secret []byte
}

// sealer encrypts values with one key and decrypts them with any.
type sealer struct {
	encID string
	aeads map[string]cipher.AEAD
	names []byte // HMAC key of the Redis key names
}

const (
	formatV1  = 1
	nonceSize = 12
	aadPrefix = "tokenbroker sharedcache v1\x00"
)

func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

func newSealer(keys []Key, encID, nameID string) (*sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("keys: at least one is needed")
	}
	s := &sealer{aeads: map[string]cipher.AEAD{}}
	secrets := map[string][]byte{}
	for i, k := range keys {
		if k.ID == "" || len(k.ID) > 64 {
			return nil, fmt.Errorf("keys[%d].id: %d characters, want 1 to 64", i, len(k.ID))
		}
		for _, r := range k.ID {
			if r < 0x21 || r > 0x7e {
				return nil, fmt.Errorf("keys[%d].id %q: want printable ASCII without spaces", i, k.ID)
			}
		}
		if _, dup := s.aeads[k.ID]; dup {
			return nil, fmt.Errorf("keys[%d].id %q: used twice", i, k.ID)
		}
		if len(k.Secret) < MinSecretLen {
			return nil, fmt.Errorf("keys[%d] (%s): secret of %d bytes, want at least %d", i, k.ID, len(k.Secret), MinSecretLen)
		}
		block, err := aes.NewCipher(derive(k.Secret, "tokenbroker sharedcache aes-256-gcm"))
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, k.ID, err)
		}
		s.aeads[k.ID] = aead
		secrets[k.ID] = k.Secret
	}
	if encID == "" {
		encID = keys[0].ID
	}
	if s.aeads[encID] == nil {
		return nil, fmt.Errorf("encrypt_key %q: no key has that id", encID)
	}
	if nameID == "" {
		nameID = encID
	}
	if secrets[nameID] == nil {
		return nil, fmt.Errorf("name_key %q: no key has that id", nameID)
	}
	s.encID = encID
	s.names = derive(secrets[nameID], "tokenbroker sharedcache key names")
	return s, nil
}

// aad binds a value to its cache key and to the key id that sealed it: a
// value copied under another key does not open.
func aad(id, key string) []byte {
	return []byte(aadPrefix + id + "\x00" + key)
}

// seal returns version | len(id) | id | nonce | AES-256-GCM(plain).
func (s *sealer) seal(key string, plain []byte) ([]byte, error) {
	out := make([]byte, 0, 2+len(s.encID)+nonceSize+len(plain)+16)
	out = append(out, formatV1, byte(len(s.encID)))
	out = append(out, s.encID...)
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return s.aeads[s.encID].Seal(out, nonce, plain, aad(s.encID, key)), nil
}

var errUndecryptable = errors.New("sharedcache: value does not decrypt")

// open decrypts a value sealed for key by any configured key. Every
// failure is errUndecryptable, which says nothing of the value.
func (s *sealer) open(key string, v []byte) ([]byte, error) {
	if len(v) < 2 || v[0] != formatV1 {
		return nil, errUndecryptable
	}
	n := int(v[1])
	if len(v) < 2+n+nonceSize {
		return nil, errUndecryptable
	}
	id := string(v[2 : 2+n])
	aead := s.aeads[id]
	if aead == nil {
		return nil, errUndecryptable
	}
	nonce := v[2+n : 2+n+nonceSize]
	plain, err := aead.Open(nil, nonce, v[2+n+nonceSize:], aad(id, key))
	if err != nil {
		return nil, errUndecryptable
	}
	return plain, nil
}

// name is the Redis name part of key: hex HMAC-SHA256, so that the
// customer org in key is not in clear (org numbers are few enough to
// guess, hence a keyed hash).
func (s *sealer) name(key string) string {
	m := hmac.New(sha256.New, s.names)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil))
}
