package maskinportentest

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// The emulator serves Digdir's self-service API for a client's keys (the
// API of api.samarbeid.digdir.no), as strictly as the sources allow. Each
// rule names its source; the short names are:
//
//   - ADMIN: felleslosninger/docs _docs/idporten/oidc/oidc_api_admin.md
//     ("Tilgangstyring av APIet", "Bruk av asymmetrisk nøkkel");
//   - SJOLV: felleslosninger/docs _docs/Maskinporten/maskinporten_sjolvbetjening_api.md;
//   - FEIL: felleslosninger/docs _docs/Maskinporten/maskinporten_feilsoking.md;
//   - OKDATA: oslokommune/okdata-maskinporten-api, maskinporten_api/maskinporten_client.py
//     and commit e12da91 ("Update to 2025-05-22 version of Digdir's API"),
//     test/maskinporten_api/conftest.py and test/resources/conftest.py;
//   - DIGDIRATOR: nais/digdirator pkg/digdir/client.go, pkg/crypto/jwks.go,
//     pkg/digdir/types/types.go.
//
// Where the sources are silent the emulator takes the stricter reading and
// says so.

// SelfServicePath is where the emulator serves the self-service API's
// clients: /api/v1/clients/{client_id} and /api/v1/clients/{client_id}/jwks.
// The paths moved under /api/v1 without a trailing slash with the API of
// 2025-05-22 (OKDATA commit e12da91; DIGDIRATOR commit 0d23bd1); the old
// /clients/ paths are not served.
const SelfServicePath = "/api/v1/clients/"

// Scopes of the self-service API (ADMIN, "Tilgangstyring av APIet").
const (
	ScopeDCRRead     = "idporten:dcr.read"
	ScopeDCRWrite    = "idporten:dcr.write"
	ScopeDCRModify   = "idporten:dcr.modify"
	ScopeDCRSupplier = "idporten:dcr.supplier"
)

// Limits of a client's registered keys.
const (
	// MaxKeys: "inntil 5" keys in a client's JWKS (ADMIN); OKDATA's
	// MaskinportenClient.MAX_KEYS is 5 too.
	MaxKeys = 5
	// KeyLifetime: a key lives one year from when it is posted (FEIL,
	// MP-121).
	KeyLifetime = 365 * 24 * time.Hour
	// MinKeyBits: ADMIN says "Kun RS256 med nøkkellenge 2048". OKDATA
	// (maskinporten_api/keys.py) registers 4096-bit keys in production,
	// so 2048 is a floor, not the only length.
	MinKeyBits = 2048
)

// RegisteredKey is a key registered on a client, as the emulator keeps it.
type RegisteredKey struct {
	KID string
	// JWK is the key's own members (kty, n, e, kid, alg, use).
	JWK json.RawMessage
	// Created is when the key was first posted (or AddClient), Expires
	// when Maskinporten stops accepting it, UsableFrom when the token
	// endpoint starts accepting it (Created plus the propagation delay).
	Created, Expires, UsableFrom time.Time
}

// regKey is a registered key.
type regKey struct {
	kid                          string
	members                      map[string]json.RawMessage
	pub                          jwk.Key
	thumb                        string
	created, expires, usableFrom time.Time
}

// registration is a client's registered JWKS.
type registration struct {
	keys             []*regKey
	created, updated time.Time
}

// SetPropagationDelay sets how long a key registered through the API waits
// before the token endpoint accepts it. Digdir says configuration reaches
// Maskinporten in "0-2 minutter" (ADMIN, "Run-time provisjonering / sky").
// Keys given to AddClient are usable at once.
func (e *Emulator) SetPropagationDelay(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.propagation = d
}

// JWKSWrites returns how many writes of a JWKS (POST, PUT, DELETE through
// the API) succeeded.
func (e *Emulator) JWKSWrites() int64 { return e.writes.Load() }

// RegisteredKeys returns the keys registered on clientID, in the order they
// were posted; nil for an unknown client.
func (e *Emulator) RegisteredKeys(clientID string) []RegisteredKey {
	e.mu.Lock()
	defer e.mu.Unlock()
	reg := e.regs[clientID]
	if reg == nil {
		return nil
	}
	out := make([]RegisteredKey, 0, len(reg.keys))
	for _, k := range reg.keys {
		b, _ := json.Marshal(k.members)
		out = append(out, RegisteredKey{KID: k.kid, JWK: b, Created: k.created, Expires: k.expires, UsableFrom: k.usableFrom})
	}
	return out
}

// ReplaceKeys replaces the keys of clientID with keys, by the rules of a
// POST to the API but without its authentication, as if the organisation
// had used Digdir's web self-service. It does not count as a JWKS write.
func (e *Emulator) ReplaceKeys(clientID string, keys ...json.RawMessage) error {
	body, _ := json.Marshal(map[string]any{"keys": keys})
	status, errs := e.replaceKeys(clientID, body)
	if status != 0 {
		msgs := make([]string, len(errs))
		for i, fe := range errs {
			msgs[i] = fe.Message
		}
		return fmt.Errorf("maskinportentest: HTTP %d: %s", status, strings.Join(msgs, "; "))
	}
	return nil
}

// SetKeyExpiry moves the expiry of a registered key, so that a test can
// reach MP-121 or a renewal without waiting a year.
func (e *Emulator) SetKeyExpiry(clientID, kid string, at time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if reg := e.regs[clientID]; reg != nil {
		for _, k := range reg.keys {
			if k.kid == kid {
				k.expires = at
				return nil
			}
		}
	}
	return fmt.Errorf("maskinportentest: no key %q on client %q", kid, clientID)
}

// initialRegistration registers the keys given to AddClient: usable at
// once, expiring a year later.
func initialRegistration(keys []jwk.Key, now time.Time) (*registration, error) {
	reg := &registration{created: now, updated: now}
	for _, k := range keys {
		if k.KeyID() == "" {
			return nil, errors.New("maskinportentest: client key without kid")
		}
		pub, err := k.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("maskinportentest: key %q: %w", k.KeyID(), err)
		}
		b, err := json.Marshal(pub)
		if err != nil {
			return nil, fmt.Errorf("maskinportentest: key %q: %w", k.KeyID(), err)
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal(b, &members); err != nil {
			return nil, fmt.Errorf("maskinportentest: key %q: %w", k.KeyID(), err)
		}
		tp, _ := pub.Thumbprint(crypto.SHA256)
		reg.keys = append(reg.keys, &regKey{kid: k.KeyID(), members: members, pub: pub, thumb: string(tp),
			created: now, expires: now.Add(KeyLifetime), usableFrom: now})
	}
	return reg, nil
}

// hasKeys reports whether clientID has registered keys.
func (e *Emulator) hasKeys(clientID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	reg := e.regs[clientID]
	return reg != nil && len(reg.keys) > 0
}

// clientKey finds the key named kid among the keys of clientID that the
// token endpoint accepts now.
func (e *Emulator) clientKey(clientID, kid string) (jwk.Key, *oauthError) {
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	var found *regKey
	if reg := e.regs[clientID]; reg != nil {
		for _, k := range reg.keys {
			if k.kid == kid {
				found = k
			}
		}
	}
	// A kid Maskinporten does not know, or not yet (propagation, ADMIN
	// "0-2 minutter"), fails with this text, seen from the real
	// Maskinporten in ks-no/fiks-maskinporten-client-dotnet PR #186. A
	// removed key fails at once: stricter than Maskinporten, which may
	// accept it until the change has propagated.
	if found == nil || now.Before(found.usableFrom) {
		return nil, fail(400, "invalid_grant", "", "Invalid assertion. Client authentication failed. Unknown key identifier (kid) for client.")
	}
	// FEIL: MP-121 "Invalid assertion. Client authentication failed.
	// Expired key", one year after the key was posted.
	if !now.Before(found.expires) {
		return nil, fail(400, "invalid_grant", "MP-121", "Invalid assertion. Client authentication failed. Expired key")
	}
	return found.pub, nil
}

// checkAdminScope refuses the self-service API's scopes to a grant signed
// with a registered key: the self-service (admin) client "må bruke
// virksomhetssertifikat" (ADMIN) and the API "er sikret med oAuth2 med
// bruk av virksomhetssertifikat" (SJOLV). The sources do not give
// Maskinporten's error for it; the emulator answers like a scope not
// allowed for the client's integration (MP-201).
func checkAdminScope(scope string, certificate bool) *oauthError {
	if !certificate && strings.HasPrefix(scope, "idporten:dcr") {
		return fail(400, "invalid_scope", "MP-201", fmt.Sprintf("Invalid scope: %q is only granted to a client authenticated with an enterprise certificate", scope))
	}
	return nil
}

// fieldError is one element of errors[] in Digdir's error answer.
type fieldError struct {
	Message    string `json:"errorMessage"`
	FieldError bool   `json:"isFieldError"`
	Object     string `json:"objectName"`
	Field      string `json:"fieldIdentifier"`
}

func keyError(field, format string, args ...any) fieldError {
	return fieldError{Message: fmt.Sprintf(format, args...), FieldError: field != "", Object: "JWK", Field: field}
}

// writeDigdirError writes Digdir's error answer: status, timestamp,
// correlation_id, errors[], error and error_description, where the last
// two repeat the messages joined after a leading ", " (the shape of
// OKDATA's fixture client_error_response, Digdir's answer of 2025-07).
func (e *Emulator) writeDigdirError(w http.ResponseWriter, status int, errs ...fieldError) {
	var joined strings.Builder
	for _, fe := range errs {
		joined.WriteString(", ")
		joined.WriteString(fe.Message)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	if status == http.StatusUnauthorized {
		// RFC 6750 section 3; the sources do not show Digdir's header.
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	writeJSON(w, status, map[string]any{
		"status":            status,
		"timestamp":         e.now().UTC().Format("2006-01-02T15:04:05.000000000Z"),
		"correlation_id":    hex.EncodeToString(id),
		"errors":            errs,
		"error":             joined.String(),
		"error_description": joined.String(),
	})
}

// caller is who called the self-service API: the organisation of its
// admin token and the token's scopes.
type caller struct {
	org    string
	scopes []string
}

// authenticate checks the bearer token: issued by this emulator's token
// endpoint (its signature and iss), unexpired, granted to a client that
// authenticated with an enterprise certificate (client_amr
// virksomhetssertifikat, as in ADMIN's example token), with a consumer
// organisation. Anything else is a 401 (SJOLV, "Jeg får 401 unauthorized").
func (e *Emulator) authenticate(r *http.Request) (*caller, bool) {
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || bearer == "" {
		return nil, false
	}
	key := jws.WithKey(jwa.RS256, &e.signingKey.PublicKey)
	if e.hmacKey != nil {
		key = jws.WithKey(jwa.HS256, e.hmacKey)
	}
	payload, err := jws.Verify([]byte(bearer), key)
	if err != nil {
		return nil, false
	}
	var claims struct {
		Iss      string `json:"iss"`
		Exp      int64  `json:"exp"`
		Scope    string `json:"scope"`
		AMR      string `json:"client_amr"`
		Consumer struct {
			ID string `json:"ID"`
		} `json:"consumer"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return nil, false
	}
	org, ok := strings.CutPrefix(claims.Consumer.ID, maskinporten.OrgPrefix)
	// Unexpired means exp is still ahead: no leeway, the stricter reading.
	if claims.Iss != e.Issuer() || !e.now().Before(time.Unix(claims.Exp, 0)) || claims.AMR != "virksomhetssertifikat" || !ok {
		return nil, false
	}
	return &caller{org: org, scopes: strings.Fields(claims.Scope)}, true
}

// serveSelfService serves the self-service API; false when the path is
// not one of its own.
func (e *Emulator) serveSelfService(w http.ResponseWriter, r *http.Request) bool {
	rest, ok := strings.CutPrefix(r.URL.Path, SelfServicePath)
	if !ok {
		return false
	}
	id, sub, _ := strings.Cut(rest, "/")
	if id == "" || (sub != "" && sub != "jwks") {
		e.writeDigdirError(w, http.StatusNotFound, fieldError{Message: "no such resource"})
		return true
	}
	// Reads need idporten:dcr.read, writes idporten:dcr.write. OKDATA asks
	// for exactly these (get_client_keys: dcr.read; create_client_key,
	// delete_client_key: dcr.write) against the 2025-05-22 API. ADMIN
	// also lists idporten:dcr.modify ("endre klientregistreringer"); no
	// source shows it opening /jwks, so the emulator does not accept it
	// in place of dcr.write, and does not accept dcr.write in place of
	// dcr.read (the stricter reading).
	need := ScopeDCRRead
	switch {
	case sub == "" && r.Method == http.MethodGet:
	case sub == "jwks" && r.Method == http.MethodGet:
	case sub == "jwks" && (r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodDelete):
		need = ScopeDCRWrite
	default:
		allow := "GET"
		if sub == "jwks" {
			allow = "GET, POST, PUT, DELETE"
		}
		w.Header().Set("Allow", allow)
		e.writeDigdirError(w, http.StatusMethodNotAllowed, fieldError{Message: "method not allowed"})
		return true
	}
	who, ok := e.authenticate(r)
	if !ok {
		e.writeDigdirError(w, http.StatusUnauthorized, fieldError{Message: "a valid access token from Maskinporten is required"})
		return true
	}
	if !slices.Contains(who.scopes, need) {
		e.writeDigdirError(w, http.StatusForbidden, fieldError{Message: "the access token lacks scope " + need})
		return true
	}
	e.mu.Lock()
	client := e.clients[id]
	e.mu.Unlock()
	if client == nil {
		e.writeDigdirError(w, http.StatusNotFound, fieldError{Message: "client not found"})
		return true
	}
	// ADMIN: dcr.read/write reach "klienter bundet mot samme org.nr. som
	// gitt i access_token"; dcr.supplier reaches the integrations of other
	// organisations that the supplier's own org number is tied to. The
	// emulator reads "tied to" as Client.Supplier (stricter than any
	// client of any org).
	owner := client.Org == who.org
	supplier := client.Supplier != "" && client.Supplier == who.org && slices.Contains(who.scopes, ScopeDCRSupplier)
	if !owner && !supplier {
		e.writeDigdirError(w, http.StatusForbidden, fieldError{Message: "the client belongs to another organisation"})
		return true
	}
	switch {
	case sub == "":
		e.serveClient(w, client)
	case r.Method == http.MethodGet:
		e.serveJWKS(w, id, http.StatusOK)
	case r.Method == http.MethodDelete:
		// ADMIN/OKDATA: DELETE removes every key (an empty set cannot be
		// posted). The sources do not show its answer; the emulator
		// answers 204 without a body.
		now := e.now()
		e.mu.Lock()
		if reg := e.regs[id]; reg != nil {
			reg.keys, reg.updated = nil, now
		}
		e.mu.Unlock()
		e.writes.Add(1)
		w.WriteHeader(http.StatusNoContent)
	default:
		// ADMIN: "både POST og PUT erstatter evt. eksisterende JWKS".
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt != "application/json" {
			// Every source sends application/json; the emulator demands it.
			e.writeDigdirError(w, http.StatusUnsupportedMediaType, fieldError{Message: "Content-Type must be application/json"})
			return true
		}
		body, err := readBody(r)
		if err != nil {
			e.writeDigdirError(w, http.StatusBadRequest, fieldError{Message: "unreadable body"})
			return true
		}
		if status, errs := e.replaceKeys(id, body); status != 0 {
			e.writeDigdirError(w, status, errs...)
			return true
		}
		e.writes.Add(1)
		// A new JWKS answers 201 (Altinn/altinn-k8s-operator
		// internal/maskinporten/http_api_client.go CreateClientJwks
		// expects 201); PUT is not shown, and answers 200.
		status := http.StatusCreated
		if r.Method == http.MethodPut {
			status = http.StatusOK
		}
		e.serveJWKS(w, id, status)
	}
	return true
}

func readBody(r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(nil, r.Body, 64<<10))
}

// timeFormat is how the API writes created and last_updated (OKDATA's
// fixtures: "2021-09-16T12:34:17.099+02:00").
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// serveClient answers GET /api/v1/clients/{id} with the client's
// registration (the fields the emulator knows of Digdir's client model,
// SJOLV "Registrere klient").
func (e *Emulator) serveClient(w http.ResponseWriter, c *Client) {
	out := map[string]any{
		"client_id":                  c.ID,
		"client_orgno":               c.Org,
		"integration_type":           "maskinporten",
		"token_endpoint_auth_method": "private_key_jwt",
		"grant_types":                []string{maskinporten.GrantType},
		"scopes":                     append([]string{}, c.Scopes...),
	}
	if c.Supplier != "" {
		out["supplier_orgno"] = c.Supplier
	}
	writeJSON(w, http.StatusOK, out)
}

// serveJWKS answers with the client's JWKS: each key with its own members
// and exp in unix seconds (DIGDIRATOR pkg/crypto/jwks.go DigdirJwk; OKDATA
// fixture maskinporten_create_client_key_response), and created and
// last_updated once for the set (DIGDIRATOR types.JwksResponse, OKDATA).
func (e *Emulator) serveJWKS(w http.ResponseWriter, clientID string, status int) {
	e.mu.Lock()
	reg := e.regs[clientID]
	keys := []map[string]json.RawMessage{}
	out := map[string]any{}
	if reg != nil {
		for _, k := range reg.keys {
			m := make(map[string]json.RawMessage, len(k.members)+1)
			for n, v := range k.members {
				m[n] = v
			}
			m["exp"] = json.RawMessage(fmt.Sprint(k.expires.Unix()))
			keys = append(keys, m)
		}
		if len(reg.keys) > 0 {
			out["created"] = reg.created.Format(timeFormat)
			out["last_updated"] = reg.updated.Format(timeFormat)
		}
	}
	e.mu.Unlock()
	out["keys"] = keys
	writeJSON(w, status, out)
}

// ownMembers are a JWK's members the API takes; serverMembers are the ones
// it adds to its answers, which it accepts in a post and ignores: OKDATA
// posts keys with its own exp (maskinporten_api/keys.py _jwk_from_key) and
// posts back the keys it read, exp included (create_client_key). A key's
// exp is always one year after it is posted, so that posting it again
// renews it (FEIL, MP-121).
var (
	ownMembers    = []string{"kty", "n", "e", "kid", "alg", "use"}
	serverMembers = []string{"exp", "created", "last_updated"}
)

// replaceKeys checks a posted JWKS and makes it the client's keys. It
// returns 0 on success, or the status and errors to answer.
func (e *Emulator) replaceKeys(clientID string, body []byte) (int, []fieldError) {
	var set map[string]json.RawMessage
	if json.Unmarshal(body, &set) != nil {
		return http.StatusBadRequest, []fieldError{{Message: "the body must be a JSON object {\"keys\":[...]}"}}
	}
	// SJOLV's example posts {"keys":[...]} (ADMIN's example is not valid
	// JSON). Other members are refused, except the set's created and
	// last_updated that a client may post back from a read: the sources
	// are silent, so this is the stricter reading.
	for name := range set {
		if name != "keys" && name != "created" && name != "last_updated" {
			return http.StatusBadRequest, []fieldError{{Message: fmt.Sprintf("unknown member %q", name), FieldError: true, Object: "JWKS", Field: name}}
		}
	}
	var raw []json.RawMessage
	if json.Unmarshal(set["keys"], &raw) != nil || raw == nil {
		return http.StatusBadRequest, []fieldError{{Message: "keys must be an array", FieldError: true, Object: "JWKS", Field: "keys"}}
	}
	// At least one key: the last key is removed with DELETE, not with an
	// empty set (OKDATA delete_client_key).
	if len(raw) == 0 {
		return http.StatusBadRequest, []fieldError{{Message: "keys must hold at least one key", FieldError: true, Object: "JWKS", Field: "keys"}}
	}
	if len(raw) > MaxKeys {
		return http.StatusBadRequest, []fieldError{{Message: fmt.Sprintf("a client may have at most %d keys", MaxKeys), FieldError: true, Object: "JWKS", Field: "keys"}}
	}
	var posted []*regKey
	var errs []fieldError
	seen := map[string]bool{}
	for i, r := range raw {
		k, kerrs := parsePostedKey(i, r)
		errs = append(errs, kerrs...)
		if k == nil {
			continue
		}
		// SJOLV: "'kid'-verdier må være unike innenfor klientens
		// nøkkel-sett".
		if seen[k.kid] {
			errs = append(errs, keyError("kid", "keys[%d]: kid %q appears twice in the set", i, k.kid))
			continue
		}
		seen[k.kid] = true
		posted = append(posted, k)
	}
	if len(errs) > 0 {
		return http.StatusBadRequest, errs
	}

	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	reg := e.regs[clientID]
	if reg == nil {
		return http.StatusNotFound, []fieldError{{Message: "client not found"}}
	}
	// ADMIN: a kid "må være unik innenfor alle ID-porten/Maskinportens
	// kunder"; a kid registered on another client is a conflict, 409
	// (maskinporten-altinn.md section 10; no primary source shows the
	// status).
	for otherID, other := range e.regs {
		if otherID == clientID {
			continue
		}
		for _, ok := range other.keys {
			if seen[ok.kid] {
				return http.StatusConflict, []fieldError{keyError("kid", "kid %q is already registered", ok.kid)}
			}
		}
	}
	old := map[string]*regKey{}
	for _, k := range reg.keys {
		old[k.kid] = k
	}
	for _, k := range posted {
		if prev := old[k.kid]; prev != nil {
			// The sources do not say what a kid posted again with other
			// key material does; the emulator refuses it (409), since a
			// kid must name one key for anyone who verifies with it.
			if prev.thumb != k.thumb {
				return http.StatusConflict, []fieldError{keyError("kid", "kid %q is registered with other key material", k.kid)}
			}
			// Posting the same key again renews it (FEIL, MP-121); it
			// keeps when it was first posted and stays usable.
			k.created, k.usableFrom = prev.created, prev.usableFrom
		} else {
			k.created, k.usableFrom = now, now.Add(e.propagation)
		}
		k.expires = now.Add(KeyLifetime)
	}
	if len(reg.keys) == 0 {
		reg.created = now
	}
	reg.keys, reg.updated = posted, now
	return 0, nil
}

// parsePostedKey checks one posted JWK (ADMIN "Bruk av asymmetrisk
// nøkkel"; OKDATA commit e12da91 for use).
func parsePostedKey(i int, raw json.RawMessage) (*regKey, []fieldError) {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil, []fieldError{keyError("", "keys[%d] is not a JSON object", i)}
	}
	var errs []fieldError
	str := func(name string) string {
		var s string
		if v, ok := m[name]; ok && json.Unmarshal(v, &s) != nil {
			errs = append(errs, keyError(name, "keys[%d]: %s must be a string", i, name))
		}
		return s
	}
	// Private members are refused: only public keys are registered.
	for _, p := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"} {
		if _, ok := m[p]; ok {
			return nil, []fieldError{keyError(p, "keys[%d] holds private key material", i)}
		}
	}
	for name := range m {
		if !slices.Contains(ownMembers, name) && !slices.Contains(serverMembers, name) {
			// x5c would bind the client to a certificate (ADMIN), which
			// the emulator does not emulate; other members are not in
			// the sources' keys: refused, the stricter reading.
			errs = append(errs, keyError(name, "keys[%d]: member %q is not accepted", i, name))
		}
	}
	kty, kid, alg, use := str("kty"), str("kid"), str("alg"), str("use")
	// ADMIN: "Man må alltid sende inn nøkkeldefinisjonen (kty,alg,use,e,n)";
	// "Kun RS256 ... støttes som algoritme" (RS512 is taken by the
	// separate Altinn admin API of Altinn/altinn-k8s-operator, not here).
	if kty != "RSA" {
		errs = append(errs, keyError("kty", "keys[%d]: kty must be RSA", i))
	}
	if strings.TrimSpace(kid) == "" {
		errs = append(errs, keyError("kid", "keys[%d]: kid is required", i))
	}
	if alg != "RS256" {
		errs = append(errs, keyError("alg", "keys[%d]: alg must be RS256", i))
	}
	// use "sig" is required since the API of 2025-05-22 (OKDATA commit
	// e12da91).
	if use != "sig" {
		errs = append(errs, keyError("use", "keys[%d]: use must be sig", i))
	}
	n, ne := b64Int(str("n"))
	e, ee := b64Int(str("e"))
	if ne != nil || n.BitLen() < MinKeyBits {
		errs = append(errs, keyError("n", "keys[%d]: n must be an RSA modulus of at least %d bits", i, MinKeyBits))
	}
	if ee != nil || e.BitLen() < 2 || e.Bit(0) == 0 || e.BitLen() > 31 {
		errs = append(errs, keyError("e", "keys[%d]: e must be an odd public exponent", i))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	own := map[string]json.RawMessage{}
	for _, name := range ownMembers {
		own[name] = m[name]
	}
	b, _ := json.Marshal(own)
	pub, err := jwk.ParseKey(b)
	if err != nil {
		return nil, []fieldError{keyError("", "keys[%d] is not a valid JWK", i)}
	}
	tp, _ := pub.Thumbprint(crypto.SHA256)
	return &regKey{kid: kid, members: own, pub: pub, thumb: string(tp)}, nil
}

// b64Int decodes an unpadded base64url big-endian integer.
func b64Int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 || b[0] == 0 {
		return new(big.Int), errors.New("not a base64url integer")
	}
	return new(big.Int).SetBytes(b), nil
}
