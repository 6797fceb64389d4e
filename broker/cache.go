package broker

import (
	"sync"
	"sync/atomic"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
)

// cacheKey covers everything that changes a token. Scopes are sorted and
// unique, joined with spaces; the org number is bare.
type cacheKey struct {
	client      string
	keyID       string
	issuer      string
	scopes      string
	resource    string
	customerOrg string
	externalRef string
}

// cache maps keys to entries. Lookups of existing entries take no lock.
type cache struct {
	entries sync.Map // cacheKey -> *entry
}

// entry holds the newest token for one key and the fetch in flight, if any.
type entry struct {
	tok      atomic.Pointer[maskinporten.Token]
	lifetime atomic.Int64 // of the newest token, in ns; 0 before the first

	mu     sync.Mutex // guards flight
	flight *flight
}

// flight is one fetch in progress; done closes when tok or err is set.
type flight struct {
	done chan struct{}
	tok  *maskinporten.Token
	err  error
}

func (c *cache) entry(k cacheKey) *entry {
	if e, ok := c.entries.Load(k); ok {
		return e.(*entry)
	}
	e, _ := c.entries.LoadOrStore(k, &entry{})
	return e.(*entry)
}
