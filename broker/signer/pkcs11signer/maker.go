package pkcs11signer

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/ThalesGroup/crypto11"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Maker makes RSA key pairs on one token, for key rotation. Its location is
// a pkcs11: URI that names the token but no key:
//
//	pkcs11:token=tokenbroker?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin
//
// The token is named by token=, serial= or slot-id=; the PIN must come from
// pin-source, never pin-value, because the URI of every key made repeats
// the location's query and is kept in the rotation state.
//
// The key pair of kid is a pair of token objects with CKA_LABEL and CKA_ID
// both the kid's bytes; the private key is sensitive, not extractable,
// private, and may sign but not decrypt or unwrap. Its Spec's URI is the
// location with ;object=<kid>;id=<kid> added.
type Maker struct {
	loc   *URI
	path  string // the location's path attributes
	query string // the location's query
	opts  signer.MakeOptions
}

// NewMaker parses the location (reading the PIN) and returns a Maker for
// its token. It loads no module yet.
func NewMaker(location string, opts signer.MakeOptions) (*Maker, error) {
	opts, err := opts.Normalize()
	if err != nil {
		return nil, err
	}
	_, query, _ := strings.Cut(location, "?")
	if q, err := url.ParseQuery(query); err == nil && q.Has("pin-value") {
		return nil, errors.New("location: pin-value: the URI of each key made repeats the location and is stored in the rotation state; give the PIN with pin-source=file:PATH")
	}
	loc, err := parseURI(location, false)
	if err != nil {
		return nil, fmt.Errorf("location: %w", err)
	}
	path, _, _ := strings.Cut(strings.TrimPrefix(location, "pkcs11:"), "?")
	return &Maker{loc: loc, path: strings.Trim(path, ";"), query: query, opts: opts}, nil
}

// uri returns the URI of kid's key pair.
func (m *Maker) uri(kid string) string {
	return "pkcs11:" + m.path + ";object=" + kid + ";id=" + kid + "?" + m.query
}

// open loads the module and logs in to the token; the caller closes it.
func (m *Maker) open() (*crypto11.Context, error) {
	c, err := crypto11.Configure(m.loc.config())
	if err != nil {
		return nil, fmt.Errorf("pkcs11: open %s, token %q: %v", m.loc.ModulePath, m.loc.Token+m.loc.Serial, scrub(err, m.loc.pin))
	}
	return c, nil
}

// Make returns the key pair labelled kid on the token, generating it when
// there is none. A pair found under the label must be RSA with CKA_ID kid;
// two pairs under one label are an error. The context is only checked
// before starting: PKCS#11 calls cannot be interrupted.
func (m *Maker) Make(ctx context.Context, kid string) (signer.Spec, error) {
	if err := signer.CheckMadeKID(kid); err != nil {
		return signer.Spec{}, err
	}
	if err := ctx.Err(); err != nil {
		return signer.Spec{}, err
	}
	c, err := m.open()
	if err != nil {
		return signer.Spec{}, err
	}
	defer c.Close()
	spec := m.opts.Spec(m.uri(kid), kid)
	found, err := c.FindKeyPairs(nil, []byte(kid))
	if err != nil {
		return signer.Spec{}, fmt.Errorf("pkcs11: find key pair %q: %v", kid, scrub(err, m.loc.pin))
	}
	switch len(found) {
	case 0:
	case 1:
		return spec, checkFound(c, found[0], kid)
	default:
		return signer.Spec{}, fmt.Errorf("pkcs11: %d key pairs are labelled %q; remove all but one", len(found), kid)
	}
	pub, priv := crypto11.AttributeSet{}, crypto11.AttributeSet{}
	for _, set := range []crypto11.AttributeSet{pub, priv} {
		set.Set(crypto11.CkaId, []byte(kid))
		set.Set(crypto11.CkaLabel, []byte(kid))
		set.Set(crypto11.CkaToken, true)
	}
	pub.Set(crypto11.CkaVerify, true)
	pub.Set(crypto11.CkaEncrypt, false)
	pub.Set(crypto11.CkaWrap, false)
	for attr, v := range map[crypto11.AttributeType]bool{
		crypto11.CkaPrivate: true, crypto11.CkaSensitive: true, crypto11.CkaExtractable: false,
		crypto11.CkaSign: true, crypto11.CkaDecrypt: false, crypto11.CkaUnwrap: false, crypto11.CkaSignRecover: false,
	} {
		priv.Set(attr, v)
	}
	if _, err := c.GenerateRSAKeyPairWithAttributes(pub, priv, m.opts.Bits); err != nil {
		return signer.Spec{}, fmt.Errorf("pkcs11: generate a %d-bit RSA key pair %q: %v", m.opts.Bits, kid, scrub(err, m.loc.pin))
	}
	return spec, nil
}

// checkFound checks that a key pair found under kid's label is one Make
// could have made.
func checkFound(c *crypto11.Context, k crypto11.Signer, kid string) error {
	if _, ok := k.Public().(*rsa.PublicKey); !ok {
		return fmt.Errorf("pkcs11: the key pair labelled %q is %T, not RSA", kid, k.Public())
	}
	id, err := c.GetAttribute(k, crypto11.CkaId)
	if err != nil {
		return fmt.Errorf("pkcs11: key pair %q: read CKA_ID: %v", kid, err)
	}
	if !bytes.Equal(id.Value, []byte(kid)) {
		return fmt.Errorf("pkcs11: the key pair labelled %q has CKA_ID %x, not the kid", kid, id.Value)
	}
	return nil
}

// Owns reports, with nil, whether spec names a key pair this maker makes:
// one with the maker's module-path, on its token (token=, serial= or
// slot-id= alike), with object= the spec's kid (and id=, when given, the
// kid too). It loads no module. Otherwise the error says why, without the
// URI's query (which may hold a PIN).
func (m *Maker) Owns(spec signer.Spec) error {
	kid := spec.KeyID
	if err := signer.CheckMadeKID(kid); err != nil {
		return err
	}
	if !strings.HasPrefix(spec.URI, "pkcs11:") {
		return errors.New("pkcs11: not a pkcs11: key (the keys are made on the token of rotation.new_keys)")
	}
	u, err := parseURI(spec.URI, true)
	if err != nil {
		return err
	}
	sameToken := u.ModulePath == m.loc.ModulePath && u.Token == m.loc.Token && u.Serial == m.loc.Serial &&
		(u.Slot == nil) == (m.loc.Slot == nil) && (u.Slot == nil || *u.Slot == *m.loc.Slot)
	if !sameToken || u.Object != kid || (len(u.ID) > 0 && string(u.ID) != kid) {
		return fmt.Errorf("pkcs11: %s is not a key pair this maker makes for kid %q (module %s, token %q)",
			redact(spec.URI), kid, m.loc.ModulePath, m.loc.Token+m.loc.Serial)
	}
	return nil
}

// Destroy deletes the private and public objects of the key pair spec
// names, which must be one this maker makes (Owns). A pair already gone is
// not an error; a private key whose public half is gone is reported, not
// deleted.
func (m *Maker) Destroy(ctx context.Context, spec signer.Spec) error {
	kid := spec.KeyID
	if err := m.Owns(spec); err != nil {
		return fmt.Errorf("%w; refusing to delete it", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := m.open()
	if err != nil {
		return err
	}
	defer c.Close()
	found, err := c.FindKeyPairs([]byte(kid), []byte(kid))
	if err != nil {
		return fmt.Errorf("pkcs11: find key pair %q: %v", kid, scrub(err, m.loc.pin))
	}
	for _, k := range found {
		if err := k.Delete(); err != nil {
			return fmt.Errorf("pkcs11: delete key pair %q: %v", kid, scrub(err, m.loc.pin))
		}
	}
	return nil
}

// redact returns a pkcs11: URI without its query, which may hold a PIN.
func redact(uri string) string {
	p, _, _ := strings.Cut(uri, "?")
	return p
}
