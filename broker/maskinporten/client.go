// Package maskinporten gets access tokens from Maskinporten with JWT bearer
// grants: it builds the grant with exactly the documented claims, signs it
// with a key from package signer, posts it to the token endpoint and turns
// the answer into a Token or an *Error that keeps Maskinporten's error code.
//
// Grants and tokens are credentials. Nothing in this package logs them, puts
// them in an error, or prints them from a String method.
package maskinporten

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/hedge"
	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// Config configures a Client for one Maskinporten client (one client_id).
type Config struct {
	// ClientID is the Maskinporten client_id, the grant's iss.
	ClientID string
	// Key signs the grants; its kid is registered on the client.
	Key *signer.Key
	// Environment names the issuer (the grant's aud) and token URL.
	Environment Environment
	// HTTPClient posts the grants; nil means a client with a 30 s timeout.
	HTTPClient *http.Client
	// HedgeHTTPClient posts hedged attempts (the second attempt of a
	// run). It should open a new connection for every request
	// (http.Transport.DisableKeepAlives), so that a hedge never lands on
	// the connection that hangs or on another one to the same stuck
	// backend, and resolves the host anew. nil means HTTPClient with a
	// clone of its transport that keeps no connection alive, when its
	// transport is an *http.Transport (HTTPClient itself otherwise).
	HedgeHTTPClient *http.Client
	// GrantLifetime is exp - iat of each grant; 0 means 60 s. At most 120 s.
	GrantLifetime time.Duration
	// ResourceAsString sends resource as a plain string instead of the
	// one-element array Digdir documents (some APIs' docs show a string).
	ResourceAsString bool
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Retry is the retry policy; zero fields take their defaults.
	Retry RetryPolicy
	// AttemptTimeout bounds one HTTP exchange; 0 means 10 s.
	AttemptTimeout time.Duration
	// Hedger hedges slow attempts and feeds the breaker (see package
	// hedge). Share one among the clients of one environment. nil means
	// one of its own with the default hedge delays and budget, around
	// Breaker.
	Hedger *hedge.Hedger
	// Breaker, when not nil and Hedger is nil, guards the token endpoint.
	// Share one breaker among the clients of one environment.
	Breaker *breaker.Breaker
	// GrantRate caps the grants sent per second by this client, and
	// GrantBurst the grants sent at once; 0 means 50 and 50, negative
	// GrantRate lifts the cap. A cold start over thousands of orgs then
	// cannot make Maskinporten throttle the client. Digdir documents no
	// rate limit for /token (none in maskinporten_protocol_token.md or
	// maskinporten_feilsoking.md of felleslosninger/docs), so the cap is
	// generous and only smooths bursts. Grants for which a caller waits
	// go before refresh-ahead grants (see WithWaiters). Hedges are bounded
	// by the hedge budget instead.
	GrantRate  float64
	GrantBurst int
	// OnAttempt, when not nil, is called after every grant sent (or
	// refused by the breaker) with its duration and error, for metrics.
	OnAttempt func(time.Duration, error)
}

// RetryPolicy says how often and how fast to retry retryable failures.
type RetryPolicy struct {
	// MaxAttempts counts the first try; 0 means 3, 1 disables retries.
	MaxAttempts int
	// InitialBackoff is the first backoff window; 0 means 200 ms.
	InitialBackoff time.Duration
	// MaxBackoff caps the window; 0 means 2 s.
	MaxBackoff time.Duration
}

// Client gets tokens for one Maskinporten client. It is safe for concurrent
// use.
type Client struct {
	clientID string
	key      atomic.Pointer[signer.Key]
	// fallback is the key that was active before the last switch, while
	// it is still held (see SetFallbackKey); fallbacks counts its uses.
	fallback         atomic.Pointer[signer.Key]
	fallbacks        atomic.Int64
	env              Environment
	http             *http.Client
	grantLifetime    time.Duration
	resourceAsString bool
	now              func() time.Time
	retry            RetryPolicy
	attemptTimeout   time.Duration
	hedgeHTTP        *http.Client
	hedger           *hedge.Hedger
	classes          hedge.Classes
	limiter          grantLimiter
	pausedUntil      atomic.Int64 // unix ns: no grant before, after a 429 with Retry-After
	onAttempt        func(time.Duration, error)
	skew             atomic.Int64
	skewKnown        atomic.Bool
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.ClientID) == "" {
		return nil, errors.New("maskinporten: client_id is empty")
	}
	if cfg.Key == nil {
		return nil, errors.New("maskinporten: no signing key")
	}
	if cfg.Environment.Issuer == "" || cfg.Environment.TokenURL == "" {
		return nil, errors.New("maskinporten: environment has no issuer or token URL")
	}
	c := &Client{
		clientID:         cfg.ClientID,
		env:              cfg.Environment,
		http:             cfg.HTTPClient,
		grantLifetime:    cfg.GrantLifetime,
		resourceAsString: cfg.ResourceAsString,
		now:              cfg.Now,
		retry:            cfg.Retry,
		attemptTimeout:   cfg.AttemptTimeout,
		hedgeHTTP:        cfg.HedgeHTTPClient,
		hedger:           cfg.Hedger,
		onAttempt:        cfg.OnAttempt,
	}
	if c.hedger == nil {
		c.hedger = hedge.New(hedge.Config{Breaker: cfg.Breaker})
	}
	c.classes = hedge.Classes{
		Answered: func(err error) bool { return answered(context.Background(), err) },
		Final: func(err error) bool {
			var me *Error
			return !errors.As(err, &me) || !me.Retryable
		},
		Open: func(oe *breaker.OpenError) error {
			return &Error{Err: oe, Retryable: true, CircuitOpen: true, RetryAfter: max(time.Until(oe.Until), 0)}
		},
	}
	switch {
	case cfg.GrantRate < 0:
		c.limiter.lim = rate.NewLimiter(rate.Inf, 0)
	default:
		r, burst := cfg.GrantRate, cfg.GrantBurst
		if r == 0 {
			r = DefaultGrantRate
		}
		if burst <= 0 {
			burst = DefaultGrantBurst
		}
		c.limiter.lim = rate.NewLimiter(rate.Limit(r), burst)
	}
	c.key.Store(cfg.Key)
	if c.retry.MaxAttempts <= 0 {
		c.retry.MaxAttempts = 3
	}
	if c.retry.InitialBackoff <= 0 {
		c.retry.InitialBackoff = 200 * time.Millisecond
	}
	if c.retry.MaxBackoff <= 0 {
		c.retry.MaxBackoff = 2 * time.Second
	}
	if c.attemptTimeout <= 0 {
		c.attemptTimeout = 10 * time.Second
	}
	if c.http == nil {
		c.http = &http.Client{Timeout: 30 * time.Second}
	}
	if c.hedgeHTTP == nil {
		c.hedgeHTTP = c.http
		if t, ok := c.http.Transport.(*http.Transport); ok {
			fresh := t.Clone()
			fresh.DisableKeepAlives = true
			hc := *c.http
			hc.Transport = fresh
			c.hedgeHTTP = &hc
		} else if c.http.Transport == nil {
			fresh := http.DefaultTransport.(*http.Transport).Clone()
			fresh.DisableKeepAlives = true
			hc := *c.http
			hc.Transport = fresh
			c.hedgeHTTP = &hc
		}
	}
	if err := CheckGrantLifetime(c.grantLifetime); err != nil {
		return nil, fmt.Errorf("maskinporten: grant lifetime %w", err)
	}
	if c.grantLifetime == 0 {
		c.grantLifetime = DefaultGrantLifetime
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// ClientID returns the Maskinporten client_id.
func (c *Client) ClientID() string { return c.clientID }

// KeyID returns the kid of the key that signs the grants.
func (c *Client) KeyID() string { return c.key.Load().KeyID }

// SetKey makes k the key that signs grants from now on (key rotation).
// Grants being signed keep the key they started with.
func (c *Client) SetKey(k *signer.Key) error {
	if k == nil {
		return errors.New("maskinporten: no signing key")
	}
	c.key.Store(k)
	return nil
}

// Key returns the key that signs grants now.
func (c *Client) Key() *signer.Key { return c.key.Load() }

// SetFallbackKey makes k the key a fetch falls back to when Maskinporten
// does not know the kid of the active key, nil for none. After a switch to
// a new key, Maskinporten may not know it everywhere yet: Digdir says
// configuration reaches Maskinporten in 0-2 minutes
// (felleslosninger/docs _docs/idporten/oidc/oidc_api_admin.md), and an
// answer from one of its nodes does not show that all know it. The broker
// keeps the key it switched from here while that key is still registered
// (a rotation's grace period), so that such a refusal costs one more grant
// instead of a failed call.
func (c *Client) SetFallbackKey(k *signer.Key) { c.fallback.Store(k) }

// FallbackKey returns the key set by SetFallbackKey, or nil.
func (c *Client) FallbackKey() *signer.Key { return c.fallback.Load() }

// Fallbacks counts the tokens got with the fallback key after Maskinporten
// did not know the active key's kid.
func (c *Client) Fallbacks() int64 { return c.fallbacks.Load() }

// Environment returns the environment the client talks to.
func (c *Client) Environment() Environment { return c.env }

// Token is an access token from Maskinporten with what the broker learned
// about it. Its String method hides the token itself.
type Token struct {
	// AccessToken is the credential. Never log it.
	AccessToken string
	// TokenType is "Bearer".
	TokenType string
	// Scopes are the scopes granted, sorted.
	Scopes []string
	// IssuedAt is when Maskinporten issued the token (its iat, or the
	// local time the answer arrived).
	IssuedAt time.Time
	// ExpiresAt is the token's exp, or IssuedAt + expires_in.
	ExpiresAt time.Time
	// SystemUserID and SystemID come from the token's
	// authorization_details when it has them.
	SystemUserID string
	SystemID     string
	// JWTID is the token's jti, an identifier safe to log and audit.
	JWTID string
	// Fingerprint is the first 16 hex digits of the SHA-256 of
	// AccessToken: it identifies the token in audit records without
	// revealing it.
	Fingerprint string
}

// String describes the token without the token.
func (t *Token) String() string {
	return fmt.Sprintf("token(jti=%q, scopes=%v, expires=%s)", t.JWTID, t.Scopes, t.ExpiresAt.UTC().Format(time.RFC3339))
}

// GoString is String, so that %#v hides the token too.
func (t *Token) GoString() string { return t.String() }

// Lifetime is ExpiresAt - IssuedAt.
func (t *Token) Lifetime() time.Duration { return t.ExpiresAt.Sub(t.IssuedAt) }

// maxResponse bounds the size of a token endpoint answer.
const maxResponse = 256 << 10

// Defaults of Config.GrantRate and GrantBurst.
const (
	DefaultGrantRate  = 50
	DefaultGrantBurst = 50
)

// Token gets an access token for r, signing a fresh grant for every
// attempt. Its first slow attempt is hedged (package hedge): if it has not
// answered within the hedge delay, a second one with a fresh grant goes out
// on a fresh connection, and the first good answer wins; one hedge per
// call, retries included. Retryable failures (no
// answer, 5xx, 429, MP-012, MP-130, "issue time is after now") are retried
// with exponential backoff and full jitter, honouring Retry-After, as long
// as the policy and ctx's deadline allow; nothing else is retried. A 429's
// Retry-After holds back every grant of the client, not just this one.
// When the breaker is open it fails at once, and an attempt hung past the
// hedge delay is given up as soon as the breaker opens. Failures are
// *Error values.
func (c *Client) Token(ctx context.Context, r Request) (*Token, error) {
	ctx = hedge.OneHedge(ctx) // one hedge per fetch, not per retry
	tok, err := c.token(ctx, r)
	if err == nil || !UnknownKID(err) {
		return tok, err
	}
	// Maskinporten does not know the active key (yet): one more fetch with
	// the key in use before it, while the broker still holds it.
	fb, active := c.fallback.Load(), c.key.Load()
	if fb == nil || active == nil || fb.KeyID == active.KeyID || ctx.Err() != nil {
		return nil, err
	}
	tok, ferr := c.token(context.WithValue(ctx, signingKey{}, fb), r)
	if ferr != nil {
		if UnknownKID(ferr) {
			return nil, err
		}
		return nil, ferr // Maskinporten's answer to the request itself
	}
	c.fallbacks.Add(1)
	return tok, nil
}

// signingKey is the context key of a key that signs instead of the active
// one (the fallback).
type signingKey struct{}

// UnknownKID reports whether err is Maskinporten's refusal of a grant whose
// kid it does not know for the client: "Invalid assertion. Client
// authentication failed. Unknown key identifier (kid) for client." (the
// text Maskinporten answers, as seen by ks-no/fiks-maskinporten-client-dotnet
// PR #186).
func UnknownKID(err error) bool {
	var me *Error
	return errors.As(err, &me) && strings.Contains(strings.ToLower(me.Description), "unknown key identifier")
}

// token is Token's retry loop, with the key the context names or the
// active one.
func (c *Client) token(ctx context.Context, r Request) (*Token, error) {
	for attempt := 1; ; attempt++ {
		tok, err := c.try(ctx, r)
		if err == nil {
			return tok, nil
		}
		var me *Error
		if !errors.As(err, &me) || !me.Retryable || me.CircuitOpen || attempt >= c.retry.MaxAttempts || ctx.Err() != nil {
			return nil, err
		}
		delay := c.backoff(attempt, me.RetryAfter)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return nil, err
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
	}
}

// try waits for the client's grant rate and any pause a 429 asked for,
// then makes one hedged attempt. Each attempt, the hedge included, signs
// its own grant with a fresh jti: Digdir's JWT grant page says a grant
// cannot be reused (felleslosninger/docs,
// _docs/Maskinporten/maskinporten_protocol_jwtgrant.md, claim jti;
// MP-012 "Grant is used before" otherwise), so two grants in flight for one
// token are two independent requests, and whichever answers first is a
// valid token.
func (c *Client) try(ctx context.Context, r Request) (*Token, error) {
	if err := c.admit(ctx); err != nil {
		return nil, err
	}
	return hedge.Run(ctx, c.hedger, c.classes, func(ctx context.Context, hedged bool) (*Token, error) {
		return c.attempt(ctx, r, hedged)
	})
}

// admit waits until a grant may be sent: after the client-wide pause a
// 429's Retry-After set, and within the grant rate.
func (c *Client) admit(ctx context.Context) error {
	if wait := time.Duration(c.pausedUntil.Load() - time.Now().UnixNano()); wait > 0 {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return c.pausedError(wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return c.pausedError(wait)
		}
	}
	if err := c.limiter.wait(ctx, urgent(ctx)); err != nil {
		return &Error{Err: fmt.Errorf("grant rate limit of the client: %w", err), Retryable: true}
	}
	return nil
}

func (c *Client) pausedError(wait time.Duration) error {
	return &Error{StatusCode: http.StatusTooManyRequests, Description: "Maskinporten asked the client to slow down (429 with Retry-After); no grants until then",
		Retryable: true, RetryAfter: wait, Throttled: true}
}

// pause holds back every grant of the client for d, as a 429's
// Retry-After asks (RFC 9110, section 10.2.3).
func (c *Client) pause(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := c.pausedUntil.Load()
		if cur >= until || c.pausedUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// Unavailable returns the error a caller without a cached token should get
// at once instead of waiting for a fetch: the breaker is open (and no probe
// is due), or Maskinporten asked the client to wait with a 429. It returns
// nil when a grant could go out now.
func (c *Client) Unavailable() error {
	if wait := time.Duration(c.pausedUntil.Load() - time.Now().UnixNano()); wait > 0 {
		return c.pausedError(wait)
	}
	if b := c.hedger.Breaker(); b != nil {
		var oe *breaker.OpenError
		if errors.As(b.Check(), &oe) {
			return c.classes.Open(oe)
		}
	}
	return nil
}

// Recovering reports whether the breaker is open or half-open: a grant
// sent now would be a probe, which nobody should wait for, since it may
// hang for a hedge delay.
func (c *Client) Recovering() bool {
	b := c.hedger.Breaker()
	return b != nil && b.Open()
}

// Hedger returns the hedger of the client's attempts.
func (c *Client) Hedger() *hedge.Hedger { return c.hedger }

// Hedging reports whether slow attempts are hedged (and so whether a
// stuck flight may be raced).
func (c *Client) Hedging() bool { return c.hedger.Hedging() }

// HedgeDelay is how long an attempt may go unanswered before it counts as
// hung (and is hedged).
func (c *Client) HedgeDelay() time.Duration { return c.hedger.Delay() }

// OnRecovery calls f (on its own goroutine) whenever grants may go out
// again after the breaker was open: when a probe becomes due and when the
// circuit closes. The broker uses it to refresh at once.
func (c *Client) OnRecovery(f func()) {
	if b := c.hedger.Breaker(); b != nil {
		b.Notify(func(s breaker.State) {
			if s != breaker.Open {
				f()
			}
		})
	}
}

// backoff is the wait before attempt+1: full jitter over an exponentially
// growing window, but never less than the server's Retry-After.
func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	window := c.retry.InitialBackoff << (attempt - 1)
	if window > c.retry.MaxBackoff || window <= 0 {
		window = c.retry.MaxBackoff
	}
	d := time.Duration(rand.Int64N(int64(window) + 1))
	if retryAfter > d {
		d = retryAfter
	}
	return d
}

// attempt makes one token request within the attempt timeout; a hedge
// goes out on a fresh connection.
func (c *Client) attempt(ctx context.Context, r Request, hedged bool) (tok *Token, err error) {
	if c.onAttempt != nil {
		start := time.Now()
		defer func() { c.onAttempt(time.Since(start), err) }()
	}
	claims, err := c.Grant(r, c.now())
	if err != nil {
		return nil, err
	}
	key, _ := ctx.Value(signingKey{}).(*signer.Key)
	if key == nil {
		key = c.key.Load()
	}
	assertion, err := c.signWith(key, claims)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, c.attemptTimeout)
	defer cancel()
	form := url.Values{"grant_type": {GrantType}, "assertion": {assertion}}
	req, err := http.NewRequestWithContext(actx, http.MethodPost, c.env.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("maskinporten: token URL: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")

	hc := c.http
	if hedged {
		hc = c.hedgeHTTP
	}
	sent := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &Error{Err: scrubURLError(err), Retryable: true}
	}
	defer resp.Body.Close()
	c.observeDate(resp.Header.Get("Date"), sent, time.Now())
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, &Error{StatusCode: resp.StatusCode, Err: fmt.Errorf("read answer: %w", scrubURLError(err)), Retryable: true}
	}
	if len(body) > maxResponse {
		return nil, &Error{StatusCode: resp.StatusCode, Description: "answer too large", Retryable: resp.StatusCode >= 500}
	}
	if resp.StatusCode != http.StatusOK {
		e := parseErrorAnswer(resp, body)
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		if resp.StatusCode == http.StatusTooManyRequests && e.RetryAfter > 0 {
			c.pause(e.RetryAfter)
		}
		return nil, e
	}
	return c.parseToken(body, c.now())
}

// answered reports whether the upstream answered, for the breaker: errors
// of Maskinporten's own (a refused grant) count as answers, while no answer,
// 5xx and 429 do not. A caller giving up is not the upstream's fault.
func answered(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return true
	}
	var me *Error
	if !errors.As(err, &me) {
		return true
	}
	return me.StatusCode != 0 && me.StatusCode < 500 && me.StatusCode != http.StatusTooManyRequests
}

// maxRetryAfter caps how long a Retry-After can make the client wait.
const maxRetryAfter = 30 * time.Second

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// observeDate records the offset between Maskinporten's clock (its Date
// header, whole seconds) and ours, taken at the middle of the exchange.
func (c *Client) observeDate(date string, sent, received time.Time) {
	t, err := http.ParseTime(date)
	if err != nil {
		return
	}
	mid := sent.Add(received.Sub(sent) / 2)
	c.skew.Store(int64(t.Sub(mid.Truncate(time.Second))))
	c.skewKnown.Store(true)
}

// ClockSkew returns Maskinporten's clock minus ours, as last seen in a Date
// header (to about a second), and whether one was seen yet. Maskinporten
// refuses grants whose iat is more than 10 s off its clock.
func (c *Client) ClockSkew() (time.Duration, bool) {
	return time.Duration(c.skew.Load()), c.skewKnown.Load()
}

// scrubURLError keeps the operation and cause of a transport error; the URL
// carries no secret (the grant is in the body) but is shortened to the host.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		host := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Host
		}
		return fmt.Errorf("%s %s: %w", ue.Op, host, ue.Err)
	}
	return err
}

func parseErrorAnswer(resp *http.Response, body []byte) *Error {
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if isJSON(resp.Header.Get("Content-Type"), body) {
		_ = json.Unmarshal(body, &e)
	}
	if e.Error == "" && e.Description == "" {
		// Not an OAuth error answer (a proxy page, say): keep a short,
		// sanitised excerpt for the log.
		e.Description = string(body)
	}
	return newResponseError(resp.StatusCode, e.Error, e.Description)
}

func isJSON(contentType string, body []byte) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt == "application/json" || strings.HasSuffix(mt, "+json") || bytes.HasPrefix(bytes.TrimSpace(body), []byte("{"))
}

func (c *Client) parseToken(body []byte, now time.Time) (*Token, error) {
	var a struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Scope       string `json:"scope"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, &Error{StatusCode: http.StatusOK, Description: "malformed token answer", Retryable: true}
	}
	switch {
	case a.AccessToken == "":
		return nil, &Error{StatusCode: http.StatusOK, Description: "token answer without access_token", Retryable: true}
	case !strings.EqualFold(a.TokenType, "Bearer"):
		return nil, &Error{StatusCode: http.StatusOK, Description: fmt.Sprintf("token type %q, want Bearer", sanitize(a.TokenType))}
	case a.ExpiresIn <= 0:
		return nil, &Error{StatusCode: http.StatusOK, Description: "token answer without a positive expires_in", Retryable: true}
	}
	t := &Token{
		AccessToken: a.AccessToken,
		TokenType:   "Bearer",
		Scopes:      SortedScopes(strings.Fields(a.Scope)),
		IssuedAt:    now,
		ExpiresAt:   now.Add(time.Duration(a.ExpiresIn) * time.Second),
	}
	sum := sha256.Sum256([]byte(a.AccessToken))
	t.Fingerprint = hex.EncodeToString(sum[:8])
	readClaims(t)
	return t, nil
}

// readClaims fills in what the token's payload says, when the token is a JWT.
// Digdir asks clients to treat tokens as opaque, so nothing here is required:
// a token that is not a JWT keeps the times from the answer. The token's exp
// wins only when it is earlier, so a token is never reported to live longer
// than expires_in says.
func readClaims(t *Token) {
	parts := strings.Split(t.AccessToken, ".")
	if len(parts) != 3 {
		return
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return
	}
	var cl struct {
		Exp                  json.Number                  `json:"exp"`
		Iat                  json.Number                  `json:"iat"`
		Jti                  string                       `json:"jti"`
		AuthorizationDetails []map[string]json.RawMessage `json:"authorization_details"`
	}
	if json.Unmarshal(payload, &cl) != nil {
		return
	}
	t.JWTID = cl.Jti
	if exp, err := cl.Exp.Int64(); err == nil && exp > 0 {
		if e := time.Unix(exp, 0); e.Before(t.ExpiresAt) {
			t.ExpiresAt = e
		}
	}
	if iat, err := cl.Iat.Int64(); err == nil && iat > 0 {
		if i := time.Unix(iat, 0); i.Before(t.ExpiresAt) {
			t.IssuedAt = i
		}
	}
	for _, d := range cl.AuthorizationDetails {
		if typ := stringField(d, "type"); typ != SystemUserType {
			continue
		}
		t.SystemID = stringField(d, "system_id")
		t.SystemUserID = stringField(d, "systemuser_id")
		break
	}
}

// stringField reads key from m case-insensitively; an array yields its first
// string (systemuser_id is a list).
func stringField(m map[string]json.RawMessage, key string) string {
	for k, raw := range m {
		if !strings.EqualFold(k, key) {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		var ss []string
		if json.Unmarshal(raw, &ss) == nil && len(ss) > 0 {
			return ss[0]
		}
	}
	return ""
}

// SortedScopes returns scopes sorted and without duplicates. The result
// may share its array with scopes when there is nothing to change (a single
// scope); treat both as read-only.
func SortedScopes(scopes []string) []string {
	if len(scopes) <= 1 {
		return scopes[:len(scopes):len(scopes)]
	}
	out := append([]string(nil), scopes...)
	sort.Strings(out)
	n := 0
	for i, s := range out {
		if i == 0 || s != out[n-1] {
			out[n] = s
			n++
		}
	}
	return out[:n]
}
