// Package altinn talks to Altinn 3's authentication API on the vendor's
// behalf. This file exchanges a Maskinporten token for an Altinn token, as
// Altinn's platform APIs want one.
package altinn

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
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/breaker"
	"github.com/tokenbroker/tokenbroker/broker/hedge"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/redact"
)

// The exchange endpoints, paired with the Maskinporten environments: test
// with TT02, prod with production.
const (
	TT02ExchangeURL = "https://platform.tt02.altinn.no/authentication/api/v1/exchange/maskinporten"
	ProdExchangeURL = "https://platform.altinn.no/authentication/api/v1/exchange/maskinporten"
)

// ExchangeURLFor returns the exchange URL that pairs with the Maskinporten
// environment env ("test" or "prod"), or override when not empty. An
// override naming the other environment's Altinn host is refused, so test
// and production are never mixed.
func ExchangeURLFor(env, override string) (string, error) {
	return paired("exchange_url", env, override, TT02ExchangeURL, ProdExchangeURL)
}

// paired picks the URL of env (test or prod), or override, which must be
// an absolute http(s) URL not on the other environment's host.
func paired(field, env, override, test, prod string) (string, error) {
	var own, other string
	switch env {
	case "test":
		own, other = test, prod
	case "prod":
		own, other = prod, test
	default:
		return "", fmt.Errorf("altinn: no %s for environment %q", field, env)
	}
	if override == "" {
		return own, nil
	}
	u, err := url.Parse(override)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("altinn %s %q: want an absolute http(s) URL", field, override)
	}
	if ou, _ := url.Parse(other); strings.EqualFold(u.Hostname(), ou.Hostname()) {
		return "", fmt.Errorf("altinn %s %q belongs to the other environment than %s", field, override, env)
	}
	return strings.TrimSuffix(override, "/"), nil
}

// Exchanger exchanges Maskinporten tokens at one exchange URL.
type Exchanger struct {
	url  string
	http *http.Client
	now  func() time.Time
	// OnExchange, when set, is called after every exchange with its
	// duration and error, for metrics.
	OnExchange func(time.Duration, error)
	// Hedger hedges slow exchanges and guards Altinn with its breaker,
	// as for Maskinporten (package hedge). The exchange is a GET that
	// Altinn answers with a new token each time (AuthenticationController
	// in Altinn/altinn-authentication), so a second attempt is safe.
	// NewExchanger sets one with the defaults and a breaker of its own.
	Hedger *hedge.Hedger
	// HedgeHTTP sends hedged exchanges; it should open a new connection
	// per request. nil means the client given to NewExchanger.
	HedgeHTTP *http.Client
	// AttemptTimeout bounds one exchange; NewExchanger sets 10 s.
	AttemptTimeout time.Duration
}

// NewExchanger returns an Exchanger; a nil client means one with a 30 s
// timeout.
func NewExchanger(exchangeURL string, client *http.Client) *Exchanger {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return &Exchanger{url: exchangeURL, http: client, now: time.Now, AttemptTimeout: 10 * time.Second,
		Hedger: hedge.New(hedge.Config{Breaker: breaker.New(breaker.Config{})})}
}

// Unavailable returns the error a caller without a cached Altinn token
// gets at once while Altinn's breaker is open, or nil.
func (x *Exchanger) Unavailable() error {
	if b := x.hedger().Breaker(); b != nil {
		var oe *breaker.OpenError
		if errors.As(b.Check(), &oe) {
			return exchangeOpen(oe)
		}
	}
	return nil
}

// Recovering reports whether Altinn's breaker is open or half-open.
func (x *Exchanger) Recovering() bool {
	b := x.hedger().Breaker()
	return b != nil && b.Open()
}

// HedgeDelay is how long an exchange may go unanswered before it counts
// as hung.
func (x *Exchanger) HedgeDelay() time.Duration { return x.hedger().Delay() }

// Hedging reports whether slow exchanges are hedged (and so whether a
// stuck flight may be raced).
func (x *Exchanger) Hedging() bool { return x.hedger().Hedging() }

// OnRecovery calls f when exchanges may go out again after Altinn's
// breaker was open.
func (x *Exchanger) OnRecovery(f func()) {
	if b := x.hedger().Breaker(); b != nil {
		b.Notify(func(s breaker.State) {
			if s != breaker.Open {
				f()
			}
		})
	}
}

// unguarded hedges the exchanges of an Exchanger made without
// NewExchanger and without a Hedger: no breaker, default delays.
var unguarded = hedge.New(hedge.Config{})

func (x *Exchanger) hedger() *hedge.Hedger {
	if x.Hedger == nil {
		return unguarded
	}
	return x.Hedger
}

func exchangeOpen(oe *breaker.OpenError) error {
	return &maskinporten.Error{Description: "Altinn exchange: " + oe.Error(), Retryable: true, CircuitOpen: true, RetryAfter: max(time.Until(oe.Until), 0)}
}

var exchangeClasses = hedge.Classes{
	Answered: func(err error) bool {
		var me *maskinporten.Error
		if !errors.As(err, &me) {
			return true
		}
		return me.StatusCode != 0 && me.StatusCode < 500 && me.StatusCode != http.StatusTooManyRequests
	},
	Final: func(err error) bool {
		var me *maskinporten.Error
		return !errors.As(err, &me) || !me.Retryable || errors.Is(err, ErrRejected)
	},
	Open: exchangeOpen,
}

// ErrRejected is wrapped by Exchange when Altinn answers 401: the
// Maskinporten token was expired or not trusted; fetch a fresh one.
var ErrRejected = errors.New("altinn rejected the Maskinporten token")

// maxAnswer bounds the exchange answer.
const maxAnswer = 64 << 10

// Exchange trades mp for an Altinn token. The answer is a JWT, as a quoted
// JSON string or raw; its own exp is the token's expiry. Failures are
// *maskinporten.Error values (retryable for 5xx, 429 and network errors),
// wrapping ErrRejected for a 401. Neither token ever enters an error.
func (x *Exchanger) Exchange(ctx context.Context, mp *maskinporten.Token) (_ *maskinporten.Token, err error) {
	if x.OnExchange != nil {
		start := time.Now()
		defer func() { x.OnExchange(time.Since(start), err) }()
	}
	return hedge.Run(ctx, x.hedger(), exchangeClasses, func(ctx context.Context, hedged bool) (*maskinporten.Token, error) {
		hc := x.http
		if hedged && x.HedgeHTTP != nil {
			hc = x.HedgeHTTP
		}
		if x.AttemptTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, x.AttemptTimeout)
			defer cancel()
		}
		return x.exchange(ctx, hc, mp)
	})
}

// exchange makes one exchange request through hc.
func (x *Exchanger) exchange(ctx context.Context, hc *http.Client, mp *maskinporten.Token) (*maskinporten.Token, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, x.url, nil)
	if err != nil {
		return nil, fmt.Errorf("altinn: exchange URL: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+mp.AccessToken)
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &maskinporten.Error{Err: fmt.Errorf("altinn exchange: %s", redact.Cut(strings.ReplaceAll(err.Error(), mp.AccessToken, redact.Mark), 512)), Retryable: true}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, &maskinporten.Error{StatusCode: resp.StatusCode, Err: errors.New("altinn exchange: reading the answer failed"), Retryable: true}
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, &maskinporten.Error{StatusCode: 401, Description: "Altinn exchange: the Maskinporten token was not accepted", Retryable: true, Err: ErrRejected}
	case resp.StatusCode != http.StatusOK:
		return nil, &maskinporten.Error{StatusCode: resp.StatusCode, Description: fmt.Sprintf("Altinn exchange answered HTTP %d", resp.StatusCode),
			Retryable: resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests}
	}
	tok := strings.TrimSpace(string(body))
	if strings.HasPrefix(tok, `"`) {
		var s string
		if json.Unmarshal([]byte(tok), &s) != nil {
			return nil, &maskinporten.Error{StatusCode: 200, Description: "Altinn exchange: malformed answer", Retryable: true}
		}
		tok = s
	}
	exp, iat, ok := jwtTimes(tok)
	if !ok {
		return nil, &maskinporten.Error{StatusCode: 200, Description: "Altinn exchange: the answer is not a JWT with exp", Retryable: true}
	}
	sum := sha256.Sum256([]byte(tok))
	out := &maskinporten.Token{
		AccessToken: tok, TokenType: "Bearer", Scopes: mp.Scopes,
		IssuedAt: iat, ExpiresAt: exp, SystemUserID: mp.SystemUserID, SystemID: mp.SystemID,
		JWTID: mp.JWTID, Fingerprint: hex.EncodeToString(sum[:8]),
	}
	if out.IssuedAt.IsZero() || out.IssuedAt.After(exp) {
		out.IssuedAt = x.now()
	}
	return out, nil
}

// jwtTimes reads exp and iat from a JWT's payload, unverified.
func jwtTimes(tok string) (exp, iat time.Time, ok bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, time.Time{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	var c struct {
		Exp json.Number `json:"exp"`
		Iat json.Number `json:"iat"`
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if d.Decode(&c) != nil {
		return time.Time{}, time.Time{}, false
	}
	e, err := c.Exp.Int64()
	if err != nil || e <= 0 {
		return time.Time{}, time.Time{}, false
	}
	if i, err := c.Iat.Int64(); err == nil && i > 0 {
		iat = time.Unix(i, 0)
	}
	return time.Unix(e, 0), iat, true
}
