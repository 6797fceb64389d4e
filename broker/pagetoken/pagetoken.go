// Package pagetoken makes the page tokens that SystemUserService hands to
// callers: opaque strings that carry the reference of the next page at
// Altinn and can only be used by the caller they were issued to, for the
// same client, system and list, for a limited time. An HMAC-SHA256 binds
// them; the key is random per process, or shared between replicas so that
// each accepts the others' tokens.
package pagetoken

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// MinKeyLen is the shortest key accepted.
const MinKeyLen = 32

// MaxAge is how long a token is accepted after it was issued.
const MaxAge = time.Hour

// maxSkew is how far in the future an issue time may be, for replicas whose
// clocks differ a little.
const maxSkew = time.Minute

// MaxRefLen bounds the page reference a token carries.
const MaxRefLen = 2048

// version starts every token, so that the format can change.
const version = 1

// Binding is what a token is valid for. Every field takes part in the MAC.
type Binding struct {
	// Caller is the authenticated identity the token was issued to.
	Caller string
	// Client is the configured client's name.
	Client string
	// SystemID is the client's system in Altinn's register.
	SystemID string
	// List names the list: "requests", "agent_requests", "system_users".
	List string
}

// ErrInvalid is returned for every token that is not valid for the
// binding: malformed, forged, issued for something else, or too old. It
// does not say which, so a caller learns nothing from trying.
var ErrInvalid = errors.New("not a page token issued to this caller for this list, or expired")

// Codec issues and checks tokens. It is safe for concurrent use.
type Codec struct {
	key []byte
	now func() time.Time
}

// New returns a Codec with key; a nil key means a random one, good for
// this process only. A key shorter than MinKeyLen is refused. now may be
// nil for time.Now.
func New(key []byte, now func() time.Time) (*Codec, error) {
	if key == nil {
		key = make([]byte, MinKeyLen)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("pagetoken: %w", err)
		}
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("pagetoken: key of %d bytes, want at least %d", len(key), MinKeyLen)
	}
	if now == nil {
		now = time.Now
	}
	return &Codec{key: append([]byte(nil), key...), now: now}, nil
}

// Layout of a decoded token: version (1 byte), issue time (8 bytes, unix
// seconds, big endian), the page reference, and the MAC (32 bytes).
const (
	headerLen = 1 + 8
	macLen    = sha256.Size
)

// Encode returns a token for ref under b, or "" for an empty ref (no next
// page).
func (c *Codec) Encode(b Binding, ref string) string {
	if ref == "" {
		return ""
	}
	msg := make([]byte, headerLen, headerLen+len(ref)+macLen)
	msg[0] = version
	binary.BigEndian.PutUint64(msg[1:headerLen], uint64(c.now().Unix()))
	msg = append(msg, ref...)
	msg = append(msg, c.mac(b, msg)...)
	return base64.RawURLEncoding.EncodeToString(msg)
}

// Decode returns the page reference in token if token was issued under b
// less than MaxAge ago; otherwise ErrInvalid.
func (c *Codec) Decode(b Binding, token string) (string, error) {
	if len(token) > base64.RawURLEncoding.EncodedLen(headerLen+MaxRefLen+macLen) {
		return "", ErrInvalid
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(raw) < headerLen+1+macLen || raw[0] != version {
		return "", ErrInvalid
	}
	msg, sum := raw[:len(raw)-macLen], raw[len(raw)-macLen:]
	if !hmac.Equal(sum, c.mac(b, msg)) {
		return "", ErrInvalid
	}
	issued := int64(binary.BigEndian.Uint64(msg[1:headerLen]))
	now := c.now().Unix()
	if issued > now+int64(maxSkew/time.Second) || now-issued > int64(MaxAge/time.Second) {
		return "", ErrInvalid
	}
	return string(msg[headerLen:]), nil
}

// mac is the HMAC of the binding (each field length-prefixed, so that no
// two bindings share an encoding) and msg.
func (c *Codec) mac(b Binding, msg []byte) []byte {
	h := hmac.New(sha256.New, c.key)
	h.Write([]byte("tokenbroker page token\x00"))
	for _, f := range []string{b.Caller, b.Client, b.SystemID, b.List} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	h.Write(msg)
	return h.Sum(nil)
}
