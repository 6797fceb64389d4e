package maskinporten

import (
	"fmt"
	"net/url"
	"strings"
)

// Environment is one Maskinporten environment: its issuer identifier, which
// every grant names as aud, and its token endpoint.
type Environment struct {
	// Name is "test", "prod", or a custom name for an emulator.
	Name string
	// Issuer is Maskinporten's issuer identifier, with its trailing slash.
	Issuer string
	// TokenURL is the token endpoint grants are posted to.
	TokenURL string
}

// The two public Maskinporten environments. Test pairs with Altinn TT02,
// prod with Altinn production.
var (
	Test = Environment{Name: "test", Issuer: "https://test.maskinporten.no/", TokenURL: "https://test.maskinporten.no/token"}
	Prod = Environment{Name: "prod", Issuer: "https://maskinporten.no/", TokenURL: "https://maskinporten.no/token"}
)

// NewEnvironment returns the environment called name ("test" or "prod"),
// with issuer and tokenURL replacing its defaults when not empty (for an
// emulator or a proxy). It refuses overrides that point at the other public
// environment, so that test and prod endpoints are never mixed, and URLs that
// are not absolute http(s) URLs.
func NewEnvironment(name, issuer, tokenURL string) (Environment, error) {
	var env, other Environment
	switch name {
	case "test":
		env, other = Test, Prod
	case "prod":
		env, other = Prod, Test
	default:
		return Environment{}, fmt.Errorf("environment %q: want test or prod", name)
	}
	for _, o := range []struct {
		field, value string
		dst          *string
	}{{"issuer", issuer, &env.Issuer}, {"token_url", tokenURL, &env.TokenURL}} {
		if o.value == "" {
			continue
		}
		u, err := url.Parse(o.value)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			return Environment{}, fmt.Errorf("%s %q: want an absolute http(s) URL", o.field, o.value)
		}
		if host := strings.ToLower(u.Hostname()); host == hostOf(other.Issuer) {
			return Environment{}, fmt.Errorf("%s %q belongs to Maskinporten %s, but the environment is %s", o.field, o.value, other.Name, name)
		}
		*o.dst = o.value
	}
	return env, nil
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return strings.ToLower(u.Hostname())
}
