package altinn_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// echoingTransport fails every request with an error that quotes the
// request's Authorization header, as a chatty proxy might.
type echoingTransport struct{}

func (echoingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return nil, errors.New("proxy refused request with " + r.Header.Get("Authorization"))
}

// TestExchangeErrorHoldsNoToken: whatever the transport says, the
// Maskinporten token never reaches the error.
func TestExchangeErrorHoldsNoToken(t *testing.T) {
	t.Parallel()
	const secret = "eyJhbGciOiJSUzI1NiJ9.eyJzZWNyZXQiOnRydWV9.c2lnbmF0dXJl"
	x := altinn.NewExchanger("https://platform.tt02.altinn.no/authentication/api/v1/exchange/maskinporten", &http.Client{Transport: echoingTransport{}})
	_, err := x.Exchange(context.Background(), &maskinporten.Token{AccessToken: secret})
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("the error holds the token: %v", err)
	}
	var me *maskinporten.Error
	if !errors.As(err, &me) || !me.Retryable {
		t.Errorf("error = %v, want a retryable *maskinporten.Error", err)
	}
}
