// Package maskinportentest is an emulator of Maskinporten's token endpoint
// for tests and for the broker's dev mode. It enforces what Digdir documents
// for JWT bearer grants, strictly:
//
//   - the grant is a compact JWS with alg RS256, RS384 or RS512 and a kid
//     registered on the client named by iss (usable, not expired: MP-121),
//     or an x5c enterprise certificate of a client without registered
//     keys, and its signature verifies;
//   - it carries only documented claims; aud is the issuer, a single string;
//   - iat is within 10 s of the emulator's clock, exp - iat is at most 120 s,
//     and the grant has not expired;
//   - a jti is never accepted twice (MP-012);
//   - every scope is registered on the client (MP-200);
//   - authorization_details holds exactly one element of type
//     urn:altinn:systemuser with only known fields (MP-301, MP-302), and a
//     system user is approved for the client, the org and the external
//     reference, which defaults to the org number (MP-303).
//
// It also serves Digdir's self-service API for a client's keys
// (selfservice.go), which replaces the keys the token endpoint accepts.
//
// It issues RS256-signed access tokens shaped like Maskinporten's system
// user tokens, counts requests and tokens, and lets tests break it through
// SetHook, or with the test-only faults of SetFault (hang, slow, flapping,
// 429 with Retry-After) and BlackHole (an address where connects never
// complete). Faults never change how a grant that gets through is judged.
package maskinportentest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/cert"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/orgno"
)

// Limits the emulator enforces, from Digdir's documentation.
const (
	ClockSkew        = 10 * time.Second
	MaxGrantLifetime = 120 * time.Second
)

// Client is a Maskinporten client registered in the emulator.
type Client struct {
	// ID is the client_id.
	ID string
	// Org is the organisation number of the client's owner (the vendor).
	Org string
	// SystemID is the id of the vendor's system in Altinn's system
	// register, the system the client belongs to.
	SystemID string
	// Scopes registered on the client.
	Scopes []string
	// Keys are the public keys registered on the client, each with a kid.
	// They are usable at once and expire one year after AddClient. From
	// then on the client's keys are its registration, which Digdir's
	// self-service API replaces (see selfservice.go); Keys is not updated.
	Keys []jwk.Key
	// CertificateCAs, when not nil, lets the client authenticate with an
	// enterprise certificate (x5c) issued under these CAs, whose subject
	// serialNumber (or organizationIdentifier NTRNO-...) is Org.
	CertificateCAs *x509.CertPool
	// Supplier is the organisation number of a supplier that manages the
	// client for Org; an admin token of that organisation with scope
	// idporten:dcr.supplier may then manage it through the self-service
	// API.
	Supplier string
}

// Config configures an Emulator.
type Config struct {
	// Issuer is the emulator's issuer identifier, which grants must name as
	// aud. NewServer sets it to the server's URL with a trailing slash.
	Issuer string
	// SigningKey signs issued access tokens; nil generates a fresh key.
	SigningKey *rsa.PrivateKey
	// TokenTTL is the lifetime of issued tokens; 0 means 120 s.
	TokenTTL time.Duration
	// Now returns the emulator's time; nil means time.Now. It also sets
	// the Date header of every answer, so a skewed Now looks like a
	// skewed Maskinporten clock.
	Now func() time.Time
	// FastTokens signs issued tokens with HMAC instead of RSA, so that a
	// benchmark measures the broker rather than the emulator's signing.
	// Such tokens do not verify against PublicJWKS.
	FastTokens bool
}

// Emulator is an http.Handler emulating Maskinporten. Its methods are safe
// for concurrent use.
type Emulator struct {
	now        func() time.Time
	signingKey *rsa.PrivateKey
	signingKID string
	hmacKey    []byte

	mu          sync.Mutex
	issuer      string
	ttl         time.Duration
	clients     map[string]*Client
	systemUsers map[systemUserKey]string
	seenJTI     map[string]time.Time
	systems     map[string]*registered
	suRequests  map[string]*systemUserRequest
	agentUsers  map[string]bool
	// organisations is the emulated business register; requestTimeout
	// the age of a timed-out request (0: DefaultRequestTimeout).
	organisations  map[string]bool
	requestTimeout time.Duration
	assertions     []string
	tokens         []string
	record         bool
	// regs are the clients' registered keys (selfservice.go), propagation
	// the delay before a key registered through the API is usable.
	regs        map[string]*registration
	propagation time.Duration

	hook      atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
	faults    faultState
	requests  atomic.Int64
	issued    atomic.Int64
	issuedTo  map[string]int64 // guarded by mu
	exchanges atomic.Int64
	writes    atomic.Int64
}

type systemUserKey struct{ clientID, org, externalRef string }

// New returns an emulator with no clients.
func New(cfg Config) (*Emulator, error) {
	e := &Emulator{
		now:         cfg.Now,
		signingKey:  cfg.SigningKey,
		signingKID:  "maskinportentest-" + uuid.NewString()[:8],
		issuer:      cfg.Issuer,
		ttl:         cfg.TokenTTL,
		clients:     map[string]*Client{},
		systemUsers: map[systemUserKey]string{},
		seenJTI:     map[string]time.Time{},
		regs:        map[string]*registration{},
	}
	e.faults.release = make(chan struct{})
	if e.now == nil {
		e.now = time.Now
	}
	if e.ttl == 0 {
		e.ttl = 120 * time.Second
	}
	if cfg.FastTokens {
		e.hmacKey = make([]byte, 32)
		_, _ = rand.Read(e.hmacKey)
	}
	if e.signingKey == nil {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("maskinportentest: %w", err)
		}
		e.signingKey = k
	}
	return e, nil
}

// NewServer starts an emulator under httptest and stops it when the test
// ends. The emulator's issuer is the server's URL with a trailing slash.
func NewServer(tb testing.TB, cfg Config) (*Emulator, *httptest.Server) {
	tb.Helper()
	e, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(e)
	tb.Cleanup(srv.Close)
	tb.Cleanup(e.releaseHeld) // first: held requests must end for Close to return
	e.SetIssuer(srv.URL + "/")
	return e, srv
}

// SetIssuer sets the issuer identifier.
func (e *Emulator) SetIssuer(issuer string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.issuer = issuer
}

// Issuer returns the issuer identifier.
func (e *Emulator) Issuer() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.issuer
}

// SetTokenTTL changes the lifetime of tokens issued from now on.
func (e *Emulator) SetTokenTTL(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ttl = d
}

// AddClient registers c. Keys must carry a kid.
func (e *Emulator) AddClient(c Client) error {
	if c.ID == "" || !orgno.Valid(c.Org) {
		return errors.New("maskinportentest: client needs an ID and a valid Org")
	}
	for _, k := range c.Keys {
		if k.KeyID() == "" {
			return errors.New("maskinportentest: client key without kid")
		}
	}
	reg, err := initialRegistration(c.Keys, e.now())
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	cc := c
	e.clients[c.ID] = &cc
	e.regs[c.ID] = reg
	return nil
}

// ApproveSystemUser records that org approved a system user for the system
// of clientID, with externalRef ("" means the org number, as in Altinn). It
// returns the system user's id.
func (e *Emulator) ApproveSystemUser(clientID, org, externalRef string) string {
	if externalRef == "" {
		externalRef = org
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := systemUserKey{clientID, org, externalRef}
	if id, ok := e.systemUsers[k]; ok {
		return id
	}
	id := uuid.NewString()
	e.systemUsers[k] = id
	return id
}

// RemoveSystemUser deletes a system user approved by ApproveSystemUser.
func (e *Emulator) RemoveSystemUser(clientID, org, externalRef string) {
	if externalRef == "" {
		externalRef = org
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.systemUsers, systemUserKey{clientID, org, externalRef})
}

// SetHook installs h, which sees every request before the emulator does. If
// h returns true it has answered the request (or dropped it) and the
// emulator does nothing more. nil removes the hook. Use it to inject
// failures: a 500, a hang, a garbage body.
func (e *Emulator) SetHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	if h == nil {
		e.hook.Store(nil)
		return
	}
	e.hook.Store(&h)
}

// Requests returns how many token requests (grants) arrived, including
// refused and hooked ones.
func (e *Emulator) Requests() int64 { return e.requests.Load() }

// Issued returns how many access tokens the emulator issued.
func (e *Emulator) Issued() int64 { return e.issued.Load() }

// IssuedTo counts the access tokens issued to one client (the self-service
// client's admin tokens are not its).
func (e *Emulator) IssuedTo(clientID string) int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.issuedTo[clientID]
}

// Record makes the emulator keep every assertion it receives and every
// token it issues, for tests that must prove no credential leaks into logs.
func (e *Emulator) Record() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record = true
}

// Tokens returns the recorded access tokens.
func (e *Emulator) Tokens() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.tokens...)
}

// Assertions returns the recorded assertions.
func (e *Emulator) Assertions() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.assertions...)
}

// PublicJWKS returns the public keys that sign issued tokens.
func (e *Emulator) PublicJWKS() jwk.Set {
	k, _ := jwk.FromRaw(&e.signingKey.PublicKey)
	_ = k.Set(jwk.KeyIDKey, e.signingKID)
	_ = k.Set(jwk.AlgorithmKey, jwa.RS256)
	_ = k.Set(jwk.KeyUsageKey, jwk.ForSignature)
	set := jwk.NewSet()
	_ = set.AddKey(k)
	return set
}

// ServeHTTP serves /token, /jwk and the well-known metadata.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		e.requests.Add(1)
	}
	w.Header().Set("Date", e.now().UTC().Format(http.TimeFormat))
	if h := e.hook.Load(); h != nil && (*h)(w, r) {
		return
	}
	if r.URL.Path == "/token" && e.serveFault(w, r) {
		return
	}
	if e.serveSelfService(w, r) {
		return
	}
	if e.serveVendor(w, r) {
		return
	}
	switch r.URL.Path {
	case "/token":
		e.serveToken(w, r)
	case ExchangePath:
		e.serveExchange(w, r)
	case "/jwk":
		writeJSON(w, http.StatusOK, e.PublicJWKS())
	case "/.well-known/oauth-authorization-server":
		iss := e.Issuer()
		base := strings.TrimSuffix(iss, "/")
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                iss,
			"token_endpoint":                        base + "/token",
			"jwks_uri":                              base + "/jwk",
			"grant_types_supported":                 []string{maskinporten.GrantType},
			"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": []string{"RS256", "RS384", "RS512"},
			"authorization_details_types_supported":            []string{maskinporten.SystemUserType},
		})
	default:
		http.NotFound(w, r)
	}
}

// ExchangePath is where the emulator serves Altinn's token exchange.
const ExchangePath = "/authentication/api/v1/exchange/maskinporten"

// AltinnTokenTTL is the lifetime of exchanged Altinn tokens, as Altinn's
// default configuration has it.
const AltinnTokenTTL = 30 * time.Minute

// Exchanges returns how many Altinn tokens the emulator handed out.
func (e *Emulator) Exchanges() int64 { return e.exchanges.Load() }

// serveExchange emulates Altinn's exchange of a Maskinporten token it
// trusts (one this emulator issued, unexpired within 10 s, with a consumer)
// for an Altinn token, answered as a JSON string. Anything else is a 401
// with an empty body, as Altinn answers.
func (e *Emulator) serveExchange(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || bearer == "" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	key := jws.WithKey(jwa.RS256, &e.signingKey.PublicKey)
	if e.hmacKey != nil {
		key = jws.WithKey(jwa.HS256, e.hmacKey)
	}
	payload, err := jws.Verify([]byte(bearer), key)
	var claims map[string]any
	if err != nil || json.Unmarshal(payload, &claims) != nil {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	exp, _ := claims["exp"].(float64)
	consumer, _ := claims["consumer"].(map[string]any)
	if claims["iss"] != e.Issuer() || consumer == nil || !time.Unix(int64(exp), 0).After(e.now().Add(-ClockSkew)) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	for _, k := range []string{"aud", "iss", "client_amr", "sid"} {
		delete(claims, k)
	}
	now := e.now()
	org, _ := consumer["ID"].(string)
	claims["iss"] = strings.TrimSuffix(e.Issuer(), "/") + "/altinn"
	claims["urn:altinn:orgNumber"] = strings.TrimPrefix(org, maskinporten.OrgPrefix)
	claims["urn:altinn:authenticatemethod"] = "maskinporten"
	claims["urn:altinn:authlevel"] = 3
	claims["sid"] = uuid.NewString()
	claims["iat"], claims["exp"] = now.Unix(), now.Add(AltinnTokenTTL).Unix()
	out, _ := json.Marshal(claims)
	signKey := jws.WithKey(jwa.RS256, e.signingKey)
	if e.hmacKey != nil {
		signKey = jws.WithKey(jwa.HS256, e.hmacKey)
	}
	signed, err := jws.Sign(out, signKey)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	e.exchanges.Add(1)
	e.mu.Lock()
	if e.record {
		e.tokens = append(e.tokens, string(signed))
	}
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, string(signed))
}

// oauthError is an error answer of the token endpoint.
type oauthError struct {
	status      int
	code        string
	description string
}

func fail(status int, code, mp, msg string) *oauthError {
	d := msg
	if mp != "" {
		d = mp + ": " + msg
	}
	return &oauthError{status: status, code: code, description: d + " (emulator)"}
}

func (e *Emulator) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "invalid_request", "error_description": "use POST"})
		return
	}
	tok, oerr := e.issue(r)
	if oerr != nil {
		writeJSON(w, oerr.status, map[string]string{"error": oerr.code, "error_description": oerr.description})
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, tok)
}

func (e *Emulator) issue(r *http.Request) (map[string]any, *oauthError) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		return nil, fail(400, "invalid_request", "", "Content-Type must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(nil, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		return nil, fail(400, "invalid_request", "", "malformed form")
	}
	if gt := r.PostForm.Get("grant_type"); gt != maskinporten.GrantType {
		return nil, fail(400, "unsupported_grant_type", "", "grant_type must be "+maskinporten.GrantType)
	}
	assertion := r.PostForm.Get("assertion")
	if assertion == "" {
		return nil, fail(400, "invalid_request", "MP-011", "Invalid parameter value: assertion is missing")
	}
	e.mu.Lock()
	if e.record {
		e.assertions = append(e.assertions, assertion)
	}
	e.mu.Unlock()

	g, oerr := e.verify(assertion)
	if oerr != nil {
		return nil, oerr
	}
	return e.mint(g)
}

// grant is a verified grant.
type grant struct {
	client      *Client
	scopes      []string
	org         string
	externalRef string
	systemUser  string
	resource    []string
	// certificate is true when the grant was signed with an enterprise
	// certificate (x5c) rather than a registered key (kid).
	certificate bool
}

// documentedClaims are the claims Digdir lists for grants.
var documentedClaims = map[string]bool{
	"aud": true, "iss": true, "iat": true, "exp": true, "jti": true, "scope": true,
	"resource": true, "pid": true, "consumer_org": true, "authorization_details": true,
}

func (e *Emulator) verify(assertion string) (*grant, *oauthError) {
	msg, err := jws.Parse([]byte(assertion))
	if err != nil || len(msg.Signatures()) != 1 {
		return nil, fail(400, "invalid_request", "MP-011", "Invalid parameter value: assertion is not a compact JWS")
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	alg := hdr.Algorithm()
	if alg != jwa.RS256 && alg != jwa.RS384 && alg != jwa.RS512 {
		return nil, fail(400, "invalid_grant", "MP-124", fmt.Sprintf("Invalid JWT signature: unsupported alg %q", alg))
	}
	chain := hdr.X509CertChain()
	kid := hdr.KeyID()
	if kid == "" && (chain == nil || chain.Len() == 0) {
		return nil, fail(400, "invalid_grant", "MP-124", "Invalid assertion: kid or x5c is required")
	}

	var claims map[string]json.RawMessage
	if err := json.Unmarshal(msg.Payload(), &claims); err != nil {
		return nil, fail(400, "invalid_request", "MP-011", "Invalid parameter value: claims are not a JSON object")
	}
	var iss string
	if json.Unmarshal(claims["iss"], &iss) != nil || iss == "" {
		return nil, fail(400, "invalid_grant", "MP-100", "Invalid assertion. Client authentication failed: iss is missing")
	}
	e.mu.Lock()
	client := e.clients[iss]
	issuer := e.issuer
	e.mu.Unlock()
	if client == nil {
		return nil, fail(400, "invalid_grant", "MP-100", "Invalid assertion. Client authentication failed: unknown client")
	}
	var verifyKey any
	certificate := chain != nil && chain.Len() > 0
	if certificate {
		// A client with a registered key must name it with kid instead of
		// sending x5c (felleslosninger/docs
		// _docs/idporten/oidc/oidc_api_admin.md, "Bruk av asymmetrisk
		// nøkkel"); Maskinporten's text is from
		// felleslosninger/efm-integrasjonspunkt issue #1443.
		if e.hasKeys(client.ID) {
			return nil, fail(400, "invalid_grant", "", "Invalid JWT. The client requires pre-registered jwk and no key identifier (kid) provided")
		}
		leaf, oerr := checkCertificate(chain, client)
		if oerr != nil {
			return nil, oerr
		}
		verifyKey = leaf.PublicKey
	} else {
		pub, oerr := e.clientKey(client.ID, kid)
		if oerr != nil {
			return nil, oerr
		}
		verifyKey = pub
	}
	if _, err := jws.Verify([]byte(assertion), jws.WithKey(alg, verifyKey)); err != nil {
		return nil, fail(400, "invalid_grant", "MP-124", "Invalid JWT signature")
	}

	for name := range claims {
		if !documentedClaims[name] {
			return nil, fail(400, "invalid_grant", "", fmt.Sprintf("Invalid assertion: unknown claim %q", name))
		}
	}
	var aud string
	if json.Unmarshal(claims["aud"], &aud) != nil || aud != issuer {
		return nil, fail(400, "invalid_grant", "MP-110", "Invalid assertion: aud must be the issuer "+issuer)
	}
	if oerr := e.checkTimes(claims); oerr != nil {
		return nil, oerr
	}

	g := &grant{client: client, certificate: certificate}
	var scope string
	if json.Unmarshal(claims["scope"], &scope) != nil || strings.TrimSpace(scope) == "" {
		return nil, fail(400, "invalid_scope", "MP-200", "Invalid scope: scope is missing")
	}
	g.scopes = strings.Fields(scope)
	for _, s := range g.scopes {
		if !contains(client.Scopes, s) {
			return nil, fail(400, "invalid_scope", "MP-200", fmt.Sprintf("Invalid scope: %q is not registered on the client", s))
		}
		if oerr := checkAdminScope(s, certificate); oerr != nil {
			return nil, oerr
		}
	}
	if raw, ok := claims["resource"]; ok {
		res, oerr := parseResource(raw)
		if oerr != nil {
			return nil, oerr
		}
		g.resource = res
	}
	if _, ok := claims["consumer_org"]; ok {
		return nil, fail(400, "invalid_request", "", "consumer_org delegation is not emulated")
	}
	if _, ok := claims["pid"]; ok {
		return nil, fail(400, "invalid_request", "", "pid restriction is not emulated")
	}
	if raw, ok := claims["authorization_details"]; ok {
		if oerr := e.checkSystemUser(raw, g); oerr != nil {
			return nil, oerr
		}
	}
	// The jti is recorded last, so that a refused grant can be fixed and
	// sent again with the same jti only if it never got this far.
	if oerr := e.checkJTI(claims); oerr != nil {
		return nil, oerr
	}
	return g, nil
}

// oidOrganizationIdentifier is the X.520 organizationIdentifier attribute,
// where newer Norwegian enterprise certificates put "NTRNO-<orgno>".
var oidOrganizationIdentifier = asn1.ObjectIdentifier{2, 5, 4, 97}

// checkCertificate verifies an x5c chain against the client's CAs and that
// the leaf names the client's organisation.
func checkCertificate(chain *cert.Chain, client *Client) (*x509.Certificate, *oauthError) {
	if client.CertificateCAs == nil {
		return nil, fail(400, "invalid_grant", "MP-120", "the client has no enterprise certificate registered")
	}
	var certs []*x509.Certificate
	for i := 0; i < chain.Len(); i++ {
		b, _ := chain.Get(i)
		c, err := cert.Parse(b)
		if err != nil {
			return nil, fail(400, "invalid_grant", "MP-123", "x5c must be an array of base64 DER certificates")
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: client.CertificateCAs, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fail(400, "invalid_grant", "MP-124", "certificate not valid: "+err.Error())
	}
	org := certs[0].Subject.SerialNumber
	for _, n := range certs[0].Subject.Names {
		if n.Type.Equal(oidOrganizationIdentifier) {
			if v, ok := n.Value.(string); ok {
				org = strings.TrimPrefix(v, "NTRNO-")
			}
		}
	}
	if org != client.Org {
		return nil, fail(400, "invalid_grant", "MP-122", "the certificate's organisation number is not the client's")
	}
	return certs[0], nil
}

func (e *Emulator) checkTimes(claims map[string]json.RawMessage) *oauthError {
	var iat, exp int64
	if json.Unmarshal(claims["iat"], &iat) != nil || iat <= 0 {
		return fail(400, "invalid_grant", "", "Invalid assertion: iat is missing")
	}
	if json.Unmarshal(claims["exp"], &exp) != nil || exp <= 0 {
		return fail(400, "invalid_grant", "", "Invalid assertion: exp is missing")
	}
	now := e.now()
	issued, expires := time.Unix(iat, 0), time.Unix(exp, 0)
	switch {
	case issued.After(now.Add(ClockSkew)):
		return fail(400, "invalid_grant", "", "Issue time is after now")
	case issued.Before(now.Add(-ClockSkew - MaxGrantLifetime)):
		return fail(400, "invalid_grant", "MP-130", "Invalid assertion: issued too long ago")
	case expires.Sub(issued) > MaxGrantLifetime:
		return fail(400, "invalid_grant", "", "Invalid assertion: exp - iat exceeds 120 seconds")
	case !expires.After(issued):
		return fail(400, "invalid_grant", "", "Invalid assertion: exp is not after iat")
	case !expires.After(now.Add(-ClockSkew)):
		return fail(400, "invalid_grant", "MP-130", "Invalid assertion: the grant has expired")
	}
	return nil
}

func (e *Emulator) checkJTI(claims map[string]json.RawMessage) *oauthError {
	raw, ok := claims["jti"]
	if !ok {
		return nil // recommended, not required
	}
	var jti string
	if json.Unmarshal(raw, &jti) != nil || jti == "" {
		return fail(400, "invalid_request", "MP-011", "Invalid parameter value: jti")
	}
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for j, until := range e.seenJTI {
		if now.After(until) {
			delete(e.seenJTI, j)
		}
	}
	if _, seen := e.seenJTI[jti]; seen {
		return fail(400, "invalid_grant", "MP-012", "Grant is used before")
	}
	e.seenJTI[jti] = now.Add(MaxGrantLifetime + 2*ClockSkew)
	return nil
}

func parseResource(raw json.RawMessage) ([]string, *oauthError) {
	var list []string
	if json.Unmarshal(raw, &list) != nil {
		var one string
		if json.Unmarshal(raw, &one) != nil {
			return nil, fail(400, "invalid_target", "", "resource must be an array of strings")
		}
		list = []string{one}
	}
	if len(list) == 0 {
		return nil, fail(400, "invalid_target", "", "resource is empty")
	}
	for _, s := range list {
		u, err := url.Parse(s)
		if err != nil || !u.IsAbs() {
			return nil, fail(400, "invalid_target", "", "resource must be an absolute URI")
		}
	}
	return list, nil
}

func (e *Emulator) checkSystemUser(raw json.RawMessage, g *grant) *oauthError {
	var details []map[string]json.RawMessage
	if json.Unmarshal(raw, &details) != nil {
		return fail(400, "invalid_authorization_details", "MP-302", "authorization_details must be an array of objects")
	}
	if len(details) != 1 {
		return fail(400, "invalid_authorization_details", "MP-303", "authorization_details must hold exactly one element")
	}
	d := details[0]
	var typ string
	if json.Unmarshal(d["type"], &typ) != nil || typ != maskinporten.SystemUserType {
		return fail(400, "invalid_authorization_details", "MP-301", fmt.Sprintf("unsupported authorization_details type %q", typ))
	}
	for k := range d {
		if k != "type" && k != "systemuser_org" && k != "externalRef" {
			return fail(400, "invalid_authorization_details", "MP-302", fmt.Sprintf("unknown field %q in authorization_details", k))
		}
	}
	var org map[string]json.RawMessage
	if json.Unmarshal(d["systemuser_org"], &org) != nil {
		return fail(400, "invalid_altinn_customer_configuration", "MP-303", "systemuser_org is missing")
	}
	for k := range org {
		if k != "authority" && k != "ID" {
			return fail(400, "invalid_authorization_details", "MP-302", fmt.Sprintf("unknown field %q in systemuser_org", k))
		}
	}
	var authority, id string
	_ = json.Unmarshal(org["authority"], &authority)
	_ = json.Unmarshal(org["ID"], &id)
	number, ok := strings.CutPrefix(id, maskinporten.OrgPrefix)
	if authority != maskinporten.OrgAuthority || !ok || !orgno.Valid(number) {
		return fail(400, "invalid_altinn_customer_configuration", "MP-303", "systemuser_org is not a valid 0192 organisation identifier")
	}
	var ref string
	if raw, ok := d["externalRef"]; ok && json.Unmarshal(raw, &ref) != nil {
		return fail(400, "invalid_altinn_customer_configuration", "MP-303", "externalRef must be a string")
	}
	lookup := ref
	if lookup == "" {
		lookup = number
	}
	e.mu.Lock()
	suID, found := e.systemUsers[systemUserKey{g.client.ID, number, lookup}]
	// Altinn finds the system user by the client id on the registered
	// system (Altinn/altinn-authentication
	// src/Authentication/Controllers/SystemUserController.cs
	// CheckIfPartyHasIntegration): a client id dropped from the system
	// finds none.
	if sys := e.systems[g.client.SystemID]; sys != nil && !slices.Contains(sys.ClientID, g.client.ID) {
		found = false
	}
	e.mu.Unlock()
	if !found {
		return fail(400, "invalid_altinn_customer_configuration", "MP-303",
			"no system user found for the customer, system and external reference")
	}
	g.org, g.externalRef, g.systemUser = number, ref, suID
	return nil
}

// mint issues an access token for g.
func (e *Emulator) mint(g *grant) (map[string]any, *oauthError) {
	e.mu.Lock()
	ttl, issuer := e.ttl, e.issuer
	e.mu.Unlock()
	now := e.now()
	amr := "private_key_jwt"
	if g.certificate {
		// The client_amr of a token granted with an enterprise
		// certificate, as in the example token of felleslosninger/docs
		// _docs/idporten/oidc/oidc_api_admin.md.
		amr = "virksomhetssertifikat"
	}
	claims := map[string]any{
		"iss":        issuer,
		"client_amr": amr,
		"token_type": "Bearer",
		"client_id":  g.client.ID,
		"scope":      strings.Join(g.scopes, " "),
		"consumer":   map[string]string{"authority": maskinporten.OrgAuthority, "ID": maskinporten.OrgPrefix + g.client.Org},
		"iat":        now.Unix(),
		"exp":        now.Add(ttl).Unix(),
		"jti":        uuid.NewString(),
	}
	if len(g.resource) > 0 {
		claims["aud"] = g.resource
	} else {
		claims["aud"] = "unspecified"
	}
	if g.systemUser != "" {
		claims["authorization_details"] = []map[string]any{{
			"type":           maskinporten.SystemUserType,
			"systemuser_id":  []string{g.systemUser},
			"systemuser_org": map[string]string{"authority": maskinporten.OrgAuthority, "ID": maskinporten.OrgPrefix + g.org},
			"system_id":      g.client.SystemID,
		}}
	}
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, e.signingKID)
	_ = hdr.Set(jws.TypeKey, "at+jwt")
	key := jws.WithKey(jwa.RS256, e.signingKey, jws.WithProtectedHeaders(hdr))
	if e.hmacKey != nil {
		key = jws.WithKey(jwa.HS256, e.hmacKey, jws.WithProtectedHeaders(hdr))
	}
	signed, err := jws.Sign(payload, key)
	if err != nil {
		return nil, fail(500, "server_error", "", "signing the token failed")
	}
	e.issued.Add(1)
	e.mu.Lock()
	if e.issuedTo == nil {
		e.issuedTo = map[string]int64{}
	}
	e.issuedTo[g.client.ID]++
	if e.record {
		e.tokens = append(e.tokens, string(signed))
	}
	e.mu.Unlock()
	return map[string]any{
		"access_token": string(signed),
		"token_type":   "Bearer",
		"expires_in":   int64(ttl / time.Second),
		"scope":        strings.Join(g.scopes, " "),
	}, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// CheckNoLeaks fails tb if text holds any recorded assertion or issued
// token, whole or just its signature. Call Record before the traffic.
func (e *Emulator) CheckNoLeaks(tb testing.TB, where, text string) {
	tb.Helper()
	e.mu.Lock()
	secrets := append(append([]string(nil), e.assertions...), e.tokens...)
	recorded := e.record
	e.mu.Unlock()
	if !recorded {
		tb.Fatal("maskinportentest: CheckNoLeaks without Record")
	}
	for _, s := range secrets {
		sig := s
		if i := strings.LastIndexByte(s, '.'); i >= 0 {
			sig = s[i+1:]
		}
		if strings.Contains(text, s) || (len(sig) >= 16 && strings.Contains(text, sig)) {
			tb.Errorf("%s holds a grant or token", where)
			return
		}
	}
}
