// Package pkcs11signer signs with an RSA key that stays inside an HSM,
// reached over PKCS#11 (github.com/ThalesGroup/crypto11). The key is named
// by an RFC 7512 URI:
//
//	pkcs11:token=tokenbroker;object=mp-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin
//
// Path attributes: token (label), serial or slot-id select the token; object
// (label) and/or id (percent-encoded bytes) select the key pair. Query
// attributes: module-path (required), and pin-source (file:PATH) or
// pin-value. The PIN never appears in an error or a log.
//
// A lost session (the HSM restarted, sessions were closed) is recovered by
// reopening the module and the key once, on the failing signature.
package pkcs11signer

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// URI is a parsed pkcs11: URI.
type URI struct {
	ModulePath string
	Token      string
	Serial     string
	Slot       *int
	Object     string
	ID         []byte
	pin        string
}

// ParseURI parses an RFC 7512 pkcs11: URI and reads its PIN.
func ParseURI(raw string) (*URI, error) {
	return parseURI(raw, true)
}

// parseURI parses a pkcs11: URI; with key, it must name a key (object=
// and/or id=), without, it must not.
func parseURI(raw string, key bool) (*URI, error) {
	rest, ok := strings.CutPrefix(raw, "pkcs11:")
	if !ok {
		return nil, errors.New("not a pkcs11: URI")
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	for _, attr := range strings.Split(path, ";") {
		if attr == "" {
			continue
		}
		k, v, _ := strings.Cut(attr, "=")
		val, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("pkcs11 URI attribute %s: bad percent-encoding", k)
		}
		switch k {
		case "token":
			u.Token = val
		case "serial":
			u.Serial = val
		case "slot-id":
			n, err := strconv.Atoi(val)
			if err != nil {
				return nil, fmt.Errorf("pkcs11 URI slot-id %q: not a number", val)
			}
			u.Slot = &n
		case "object":
			u.Object = val
		case "id":
			u.ID = []byte(val)
		case "type", "manufacturer", "model", "library-description", "library-manufacturer", "library-version":
			// Accepted and ignored: the selection above is enough.
		default:
			return nil, fmt.Errorf("pkcs11 URI: unknown attribute %q", k)
		}
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, errors.New("pkcs11 URI: malformed query")
	}
	for k := range q {
		switch k {
		case "module-path", "pin-value", "pin-source":
		default:
			return nil, fmt.Errorf("pkcs11 URI: unknown query attribute %q", k)
		}
	}
	u.ModulePath = q.Get("module-path")
	if u.ModulePath == "" {
		return nil, errors.New("pkcs11 URI: module-path is required")
	}
	switch n := boolCount(u.Token != "", u.Serial != "", u.Slot != nil); {
	case n == 0:
		return nil, errors.New("pkcs11 URI: name the token with token=, serial= or slot-id=")
	case n > 1:
		return nil, errors.New("pkcs11 URI: name the token one way only (token=, serial= or slot-id=)")
	}
	switch named := u.Object != "" || len(u.ID) > 0; {
	case key && !named:
		return nil, errors.New("pkcs11 URI: name the key with object= and/or id=")
	case !key && named:
		return nil, errors.New("pkcs11 location: names a token, not a key: drop object= and id=")
	}
	switch src, val := q.Get("pin-source"), q.Get("pin-value"); {
	case src != "" && val != "":
		return nil, errors.New("pkcs11 URI: give pin-source or pin-value, not both")
	case src != "":
		p, ok := strings.CutPrefix(src, "file:")
		if !ok {
			return nil, errors.New("pkcs11 URI: pin-source must be file:PATH")
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("pkcs11 URI: pin-source: %w", err)
		}
		u.pin = strings.TrimRight(string(b), "\r\n")
	default:
		u.pin = val
	}
	return u, nil
}

func boolCount(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func (u *URI) config() *crypto11.Config {
	return &crypto11.Config{Path: u.ModulePath, TokenLabel: u.Token, TokenSerial: u.Serial, SlotNumber: u.Slot, Pin: u.pin}
}

// Check parses the spec's pkcs11: URI (reading a pin-source file) without
// loading the module.
func Check(s signer.Spec) error {
	_, err := ParseURI(s.URI)
	return err
}

// Open finds the key pair the spec's URI names and returns it as a
// signer.Key with the spec's kid and algorithm. It fails at once when the
// module, token, PIN or key is wrong. The key's Close closes its sessions
// with the module. The context is not used: PKCS#11 calls cannot be
// interrupted, which is why the broker guards each signature with a timeout.
func Open(_ context.Context, s signer.Spec) (*signer.Key, error) {
	u, err := ParseURI(s.URI)
	if err != nil {
		return nil, err
	}
	if s.KeyID == "" {
		return nil, errors.New("kid: required for a pkcs11 key")
	}
	kid := s.KeyID
	alg, err := signer.ParseAlgorithm(string(s.Algorithm))
	if err != nil {
		return nil, err
	}
	h := &hsmSigner{uri: u}
	if err := h.open(); err != nil {
		return nil, err
	}
	k, err := signer.New(kid, alg, h, "pkcs11")
	if err != nil {
		h.Close()
		return nil, err
	}
	return k, nil
}

// hsmSigner is a crypto.Signer over a crypto11 key pair that reopens the
// module once when a signature fails.
type hsmSigner struct {
	uri *URI

	mu  sync.RWMutex
	ctx *crypto11.Context
	key crypto11.Signer
	pub crypto.PublicKey
}

// open (re)opens the module and finds the key; h.mu must be held for
// writing, or h not yet shared.
func (h *hsmSigner) open() error {
	ctx, err := crypto11.Configure(h.uri.config())
	if err != nil {
		return fmt.Errorf("pkcs11: open %s, token %q: %v", h.uri.ModulePath, h.uri.Token+h.uri.Serial, scrub(err, h.uri.pin))
	}
	var label []byte
	if h.uri.Object != "" {
		label = []byte(h.uri.Object)
	}
	var id []byte
	if len(h.uri.ID) > 0 {
		id = h.uri.ID
	}
	key, err := ctx.FindKeyPair(id, label)
	if err != nil || key == nil {
		ctx.Close()
		if err == nil {
			err = errors.New("no such key pair")
		}
		return fmt.Errorf("pkcs11: key object %q id %x: %v", h.uri.Object, h.uri.ID, err)
	}
	if h.pub != nil && !samePublic(h.pub, key.Public()) {
		ctx.Close()
		return errors.New("pkcs11: the key found on reopening differs from the one opened first")
	}
	h.ctx, h.key, h.pub = ctx, key, key.Public()
	return nil
}

func samePublic(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// Public returns the public key found at Open.
func (h *hsmSigner) Public() crypto.PublicKey { return h.pub }

// Sign signs in the HSM; on failure it reopens the module and key and tries
// once more, so that an HSM restart costs one slow signature, not a broker
// restart.
func (h *hsmSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h.mu.RLock()
	key := h.key
	h.mu.RUnlock()
	sig, err := key.Sign(rand, digest, opts)
	if err == nil {
		return sig, nil
	}
	h.mu.Lock()
	if h.ctx == nil { // closed: never reopen a closed key
		h.mu.Unlock()
		return nil, fmt.Errorf("pkcs11: sign: %w (key closed)", err)
	}
	if h.key == key { // nobody reopened meanwhile
		old := h.ctx
		if rerr := h.open(); rerr != nil {
			h.mu.Unlock()
			return nil, fmt.Errorf("pkcs11: sign failed (%v) and reopening failed: %w", err, rerr)
		}
		go old.Close() // waits for sessions in use to come back
	}
	key = h.key
	h.mu.Unlock()
	sig, err = key.Sign(rand, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: sign: %w", err)
	}
	return sig, nil
}

// Close releases the module.
func (h *hsmSigner) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx == nil {
		return nil
	}
	err := h.ctx.Close()
	h.ctx = nil
	return err
}

// scrub removes the PIN from an error message, should a library echo it.
func scrub(err error, pin string) string {
	msg := err.Error()
	if pin != "" {
		msg = strings.ReplaceAll(msg, pin, "[pin]")
	}
	return msg
}
