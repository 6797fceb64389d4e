package altinn_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// quotingTransport fails every request with an error that quotes the
// bearer token alone, without the word Bearer before it.
type quotingTransport struct{}

func (quotingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return nil, &quotedError{strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")}
}

type quotedError struct{ tok string }

func (e *quotedError) Error() string { return "upstream said: token " + e.tok + " refused" }

// TestExchangeErrorHoldsNoOpaqueToken: the exchange removes the token it
// sent from a transport error by value, not only by its shape: a token
// that does not look like a JWT or a long secret (an opaque one, short)
// is removed too.
func TestExchangeErrorHoldsNoOpaqueToken(t *testing.T) {
	t.Parallel()
	const secret = "Op4que-T0ken"
	x := altinn.NewExchanger("https://platform.tt02.altinn.no/authentication/api/v1/exchange/maskinporten", &http.Client{Transport: quotingTransport{}})
	_, err := x.Exchange(context.Background(), &maskinporten.Token{AccessToken: secret})
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("the error holds the token: %v", err)
	}
}

// TestPageRefRefusesOverlongLink: a next link longer than 2048 bytes is
// not a page of the list (it could not come back in a page token, which
// holds at most that much).
func TestPageRefRefusesOverlongLink(t *testing.T) {
	t.Parallel()
	const list = "/authentication/api/v1/systemuser/request/vendor/bysystem/991825827_smartcloud"
	ok := list + "?token=" + strings.Repeat("a", 2048-len(list)-len("?token="))
	if _, err := altinn.PageRef(list, ok); err != nil {
		t.Fatalf("a link of 2048 bytes: %v", err)
	}
	if ref, err := altinn.PageRef(list, ok+"a"); err == nil {
		t.Fatalf("a link of 2049 bytes accepted as %d bytes", len(ref))
	}
}
