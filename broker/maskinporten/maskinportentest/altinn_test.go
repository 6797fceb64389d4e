package maskinportentest_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
)

// altinnToken returns an Altinn token of the fixture's vendor, through the
// emulator's token endpoint and exchange.
func (f *fixture) altinnToken(t *testing.T) string {
	t.Helper()
	status, body := f.post(t, sign(t, f.claims(), jwa.RS256, "kid-a", "rsa-a"))
	if status != 200 {
		t.Fatalf("token: %d %v", status, body)
	}
	req, _ := http.NewRequest(http.MethodGet, f.url+maskinportentest.ExchangePath, nil)
	req.Header.Set("Authorization", "Bearer "+body["access_token"].(string))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok string
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// call makes a vendor API call and returns the status and the body.
func (f *fixture) call(t *testing.T, tok, method, path, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, _ := http.NewRequest(method, f.url+"/authentication/api/v1"+path, rd)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// TestEmulatorSystemRegister: the register follows Altinn's
// SystemRegisterController.cs: description required (missing 400, null
// 500), isVisible true by default and refused with a client-relation
// package, and PUT replaces the whole system.
func TestEmulatorSystemRegister(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tok := f.altinnToken(t)
	const sys = "991825827_reg"
	body := func(extra string) string {
		return `{"id":"` + sys + `","vendor":{"authority":"iso6523-actorid-upis","ID":"0192:991825827"},"name":{"nb":"R"}` + extra + `}`
	}
	pkg := `,"accessPackages":[{"urn":"urn:altinn:accesspackage:regnskapsforer-lonn"}]`
	for what, tc := range map[string]struct {
		body   string
		status int
		want   string
	}{
		"missing_description": {body(``), 400, "description"},
		"null_description":    {body(`,"description":null`), 500, ""},
		"visible_by_default":  {body(`,"description":{"nb":"R"}` + pkg), 400, "AUTH.VLD-00018"},
		"visible_explicitly":  {body(`,"description":{"nb":"R"},"isVisible":true` + pkg), 400, "AUTH.VLD-00018"},
	} {
		if status, out := f.call(t, tok, http.MethodPost, "/systemregister/vendor", tc.body); status != tc.status || !strings.Contains(out, tc.want) {
			t.Errorf("%s: %d %s, want %d with %q", what, status, out, tc.status, tc.want)
		}
	}
	if status, out := f.call(t, tok, http.MethodPost, "/systemregister/vendor",
		body(`,"description":{"nb":"R"},"isVisible":false,"clientId":["a","b"]`+pkg)); status != 200 {
		t.Fatalf("invisible: %d %s", status, out)
	}
	if status, _ := f.call(t, tok, http.MethodPut, "/systemregister/vendor/"+sys, body(`,"description":{"nb":"R2"},"isVisible":false,"clientId":["b"]`)); status != 200 {
		t.Fatalf("PUT: %d", status)
	}
	got, _ := f.emu.RegisteredSystem(sys)
	if len(got.ClientIDs) != 1 || got.ClientIDs[0] != "b" || len(got.AccessPackages) != 0 || got.Description["nb"] != "R2" {
		t.Errorf("after PUT %+v, want the body's fields only", got)
	}
}

// TestEmulatorRequests: requests follow RequestSystemUserController.cs and
// RequestSystemUserService.cs: trimmed strings, the customer in the
// register, redirect allow-list, a re-post returns the request whatever its
// status until it is deleted, and the timedOut flag leaves the status New.
func TestEmulatorRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tok := f.altinnToken(t)
	f.emu.AddSystem(maskinportentest.System{ID: "991825827_x", Vendor: "991825827", ClientID: clientID, Rights: []string{"res"}})
	f.emu.AddOrganisations("314250052")
	post := func(party, extra string) (int, map[string]any) {
		status, out := f.call(t, tok, http.MethodPost, "/systemuser/request/vendor",
			`{"systemId":"991825827_x","partyOrgNo":"`+party+`","rights":[{"resource":[{"id":"urn:altinn:resource","value":"res"}]}]`+extra+`}`)
		var m map[string]any
		_ = json.Unmarshal([]byte(out), &m)
		return status, m
	}
	if status, m := post("313775429", ``); status != 400 || m["code"] != "AUTH-00000" {
		t.Errorf("customer not in the register: %d %v", status, m)
	}
	if status, m := post("314250052", `,"redirectUrl":"https://x.example/"`); status != 400 || m["code"] != "AUTH-00026" {
		t.Errorf("redirect on a system without allowed URLs: %d %v", status, m)
	}
	status, first := post("314250052", `,"externalRef":"  ref-2  "`)
	if status != 201 || first["externalRef"] != "ref-2" || first["timedOut"] != false {
		t.Fatalf("create: %d %v", status, first)
	}
	id := first["id"].(string)
	if err := f.emu.Decide(id, false); err != nil {
		t.Fatal(err)
	}
	if status, again := post("314250052", `,"externalRef":"ref-2"`); status != 200 || again["id"] != id || again["status"] != "Rejected" {
		t.Errorf("re-post of a rejected request: %d %v, want it back", status, again)
	}
	if status, _ := f.call(t, tok, http.MethodDelete, "/systemuser/request/vendor/"+id, ""); status != 202 {
		t.Fatalf("DELETE: %d", status)
	}
	status, fresh := post("314250052", `,"externalRef":"ref-2"`)
	if status != 201 || fresh["id"] == id {
		t.Fatalf("after DELETE: %d %v", status, fresh)
	}
	if err := f.emu.Backdate(fresh["id"].(string), maskinportentest.DefaultRequestTimeout+1); err != nil {
		t.Fatal(err)
	}
	_, out := f.call(t, tok, http.MethodGet, "/systemuser/request/vendor/"+fresh["id"].(string), "")
	if !strings.Contains(out, `"status":"New"`) || !strings.Contains(out, `"timedOut":true`) {
		t.Errorf("past the time-out: %s, want status New and timedOut true", out)
	}
	// A timed-out request is still returned on a re-post: only a status
	// Timedout, which nothing writes, would let Altinn create a new one.
	if status, again := post("314250052", `,"externalRef":"ref-2"`); status != 200 || again["id"] != fresh["id"] {
		t.Errorf("re-post of a timed-out request: %d %v, want it back", status, again)
	}

	// The time-out is configurable.
	f.emu.SetRequestTimeout(time.Hour)
	_, other := post("314250052", `,"externalRef":"ref-3"`)
	id3 := other["id"].(string)
	if err := f.emu.Backdate(id3, 59*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, out := f.call(t, tok, http.MethodGet, "/systemuser/request/vendor/"+id3, ""); !strings.Contains(out, `"timedOut":false`) {
		t.Errorf("within a one-hour time-out: %s", out)
	}
	if err := f.emu.Backdate(id3, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, out := f.call(t, tok, http.MethodGet, "/systemuser/request/vendor/"+id3, ""); !strings.Contains(out, `"timedOut":true`) {
		t.Errorf("past a one-hour time-out: %s", out)
	}
}
