package selfservice

import (
	"context"
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// TokenSource hands out admin access tokens for the self-service API. A
// source that caches may also implement Forget(token string), which the
// Client calls after the API answered 401 to token, before asking for a
// new one.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// refreshBefore is how long before its expiry a cached token is replaced;
// at most half its lifetime.
const refreshBefore = 30 * time.Second

// MaskinportenTokens is a TokenSource that gets plain access tokens (no
// system user) from Maskinporten with a maskinporten.Client, the
// organisation's self-service client, whose key carries the enterprise
// certificate chain (so its grants carry x5c). It caches a token until
// shortly before it expires. Safe for concurrent use; one fetch at a time.
type MaskinportenTokens struct {
	mp     *maskinporten.Client
	scopes []string
	now    func() time.Time
	lock   chan struct{} // held while reading or fetching the token
	tok    *maskinporten.Token
}

var _ TokenSource = (*MaskinportenTokens)(nil)

// NewTokenSource returns a MaskinportenTokens asking mp for scopes; none
// means ScopeRead and ScopeWrite.
func NewTokenSource(mp *maskinporten.Client, scopes ...string) (*MaskinportenTokens, error) {
	if mp == nil {
		return nil, errors.New("selfservice: no Maskinporten client")
	}
	if len(scopes) == 0 {
		scopes = []string{ScopeRead, ScopeWrite}
	}
	return &MaskinportenTokens{mp: mp, scopes: append([]string(nil), scopes...), now: time.Now, lock: make(chan struct{}, 1)}, nil
}

// Token returns the cached token, or gets a new one when none is cached
// or the cached one expires within 30 s (or within half its lifetime).
func (s *MaskinportenTokens) Token(ctx context.Context) (string, error) {
	select {
	case s.lock <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-s.lock }()
	if s.tok != nil && s.now().Before(s.tok.ExpiresAt.Add(-min(refreshBefore, s.tok.Lifetime()/2))) {
		return s.tok.AccessToken, nil
	}
	s.tok = nil
	tok, err := s.mp.Token(ctx, maskinporten.Request{Scopes: s.scopes})
	if err != nil {
		return "", err // a *maskinporten.Error: holds no grant or token
	}
	s.tok = tok
	return tok.AccessToken, nil
}

// Forget drops the cached token if it is token, so that the next Token
// call gets a new one.
func (s *MaskinportenTokens) Forget(token string) {
	s.lock <- struct{}{}
	defer func() { <-s.lock }()
	if s.tok != nil && s.tok.AccessToken == token {
		s.tok = nil
	}
}

// String describes the source without its token.
func (s *MaskinportenTokens) String() string {
	return "selfservice.MaskinportenTokens{client: " + s.mp.ClientID() + "}"
}

// GoString is String, so that %#v hides the token too.
func (s *MaskinportenTokens) GoString() string { return s.String() }
