package daemon

import (
	"strings"
	"testing"
	"time"
)

// TestTLSConfigErrors: every bad tls value stops the broker with the
// field's name.
func TestTLSConfigErrors(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	for _, tc := range []struct {
		tls  TLSConfig
		want string
	}{
		{TLSConfig{Source: "vault"}, "tls.source"},
		{TLSConfig{Cert: "a.pem", Key: "k.pem"}, "tls: cert, key and client_ca are required"},
		{TLSConfig{Cert: "a.pem", Key: "k.pem", ClientCA: "ca.pem", ReloadInterval: Duration(-time.Second)}, "tls.reload_interval"},
		{TLSConfig{Cert: "a.pem", Key: "k.pem", ClientCA: "ca.pem", SPIFFE: SPIFFETLSConfig{Socket: "unix:///x"}}, "tls.spiffe"},
		{TLSConfig{Source: "spiffe"}, "tls.spiffe.socket: required when SPIFFE_ENDPOINT_SOCKET is not set"},
		{TLSConfig{Source: "spiffe", Cert: "a.pem", SPIFFE: SPIFFETLSConfig{Socket: "unix:///run/agent.sock"}}, "remove tls.cert"},
		{TLSConfig{Source: "spiffe", SPIFFE: SPIFFETLSConfig{Socket: "relative/agent.sock"}}, "tls.spiffe.socket"},
		{TLSConfig{Source: "spiffe", SPIFFE: SPIFFETLSConfig{Socket: "tcp://agent.local:8080"}}, "tls.spiffe.socket"},
		{TLSConfig{Source: "spiffe", ReloadInterval: Duration(time.Second), SPIFFE: SPIFFETLSConfig{Socket: "/run/agent.sock"}}, "tls.reload_interval"},
	} {
		if err := tc.tls.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check(%+v) = %v, want an error with %q", tc.tls, err, tc.want)
		}
	}
	for _, ok := range []TLSConfig{
		{Cert: "a.pem", Key: "k.pem", ClientCA: "ca.pem"},
		{Source: "spiffe", SPIFFE: SPIFFETLSConfig{Socket: "unix:///run/spire/agent.sock"}},
		{Source: "spiffe", SPIFFE: SPIFFETLSConfig{Socket: "/run/spire/agent.sock"}},
		{Source: "spiffe", SPIFFE: SPIFFETLSConfig{Socket: "tcp://127.0.0.1:8081"}},
	} {
		if err := ok.check(); err != nil {
			t.Errorf("check(%+v) = %v", ok, err)
		}
	}
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")
	if err := (TLSConfig{Source: "spiffe"}).check(); err != nil {
		t.Errorf("spiffe with SPIFFE_ENDPOINT_SOCKET set: %v", err)
	}
}
