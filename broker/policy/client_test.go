package policy

import "testing"

func TestAllowsClient(t *testing.T) {
	t.Parallel()
	p, err := New([]Rule{
		{Callers: []string{"unix:billing"}, Clients: []string{"smartcloud"}, Scopes: []string{"*"}, CustomerOrgs: []string{"310904473"}},
		{Callers: []string{"unix:ops-*"}, Clients: []string{"*"}, Scopes: []string{"*"}, CustomerOrgs: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		caller, client string
		want           bool
	}{
		{"unix:billing", "smartcloud", true},
		{"unix:billing", "other", false},
		{"unix:ops-1", "other", true},
		{"unix:stranger", "smartcloud", false},
		{"cn:billing", "smartcloud", false},
	} {
		if got := p.AllowsClient(tc.caller, tc.client); got != tc.want {
			t.Errorf("AllowsClient(%q, %q) = %v, want %v", tc.caller, tc.client, got, tc.want)
		}
	}
	if (*Policy)(nil).AllowsClient("billing", "smartcloud") || !AllowAll().AllowsClient("x", "y") {
		t.Error("nil must allow nothing and AllowAll everything")
	}
}
