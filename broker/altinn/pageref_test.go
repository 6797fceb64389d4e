package altinn_test

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
)

func TestPageRef(t *testing.T) {
	t.Parallel()
	const list = "/authentication/api/v1/systemuser/vendor/bysystem/991825827_smartcloud"
	for link, want := range map[string]string{
		// The host, whatever it is, is dropped; path and query are kept.
		"https://platform.tt02.altinn.no" + list + "?token=abc": list + "?token=abc",
		"https://gateway.internal:8443" + list + "?token=abc":   list + "?token=abc",
		"http://10.0.0.1" + list:                                list,
		list + "?token=a%2Bb":                                   list + "?token=a%2Bb",
		"//elsewhere.example" + list + "?token=1":               list + "?token=1",
		"https://x.example" + list + "?token=1#frag":            list + "?token=1",
	} {
		if got, err := altinn.PageRef(list, link); err != nil || got != want {
			t.Errorf("PageRef(%q) = %q, %v; want %q", link, got, err, want)
		}
	}
	for _, link := range []string{
		"https://x.example/authentication/api/v1/systemuser/vendor/bysystem/991825827_smartcloud2?token=1",
		"https://x.example" + list + "/../991825827_smartcloud2",
		"https://x.example" + list + "/%2e%2e/991825827_smartcloud2",
		"https://x.example" + list + "/%2E%2E/991825827_smartcloud2",
		"https://x.example/authentication/api/v1/systemuser/vendor/bysystem/991825827%2fsmartcloud",
		"https://x.example" + list + "%5c..",
		"https://x.example" + list + "/",
		"https://x.example/authentication/api/v1/systemuser/vendor/bysystem//991825827_smartcloud",
		"https://x.example/authentication/api/v1/systemuser/vendor/bysystem/./991825827_smartcloud",
		"https://user:pw@x.example" + list,
		"https://user@x.example" + list,
		"ftp://x.example" + list,
		"javascript:alert(1)",
		"https://x.example" + list + "?token=%zz",
		"https://x.example/authentication/api/v1/systemuser/request/vendor/bysystem/991825827_smartcloud",
		"https://x.example/AUTHENTICATION/api/v1/systemuser/vendor/bysystem/991825827_smartcloud",
		"",
	} {
		if got, err := altinn.PageRef(list, link); err == nil {
			t.Errorf("PageRef(%q) = %q, want an error", link, got)
		}
	}
}
