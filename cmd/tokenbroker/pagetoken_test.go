package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestPageTokenKeyFile: two replicas configured with the same
// altinn.page_token_key_file accept each other's page tokens; a key file
// shorter than 32 bytes stops the start.
func TestPageTokenKeyFile(t *testing.T) {
	t.Parallel()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	emu.Record()
	const id, system = "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "991825827_x"
	pub, _ := signertest.Key(t, signertest.KeyA, "smartcloud-2026").PublicJWK()
	if err := emu.AddClient(maskinportentest.Client{ID: id, Org: "991825827", SystemID: system, Keys: []jwk.Key{pub},
		Scopes: []string{demoScope, altinn.ScopeSystemRegisterWrite}}); err != nil {
		t.Fatal(err)
	}
	emu.AddSystem(maskinportentest.System{ID: system, Vendor: "991825827", ClientID: id})
	for _, org := range []string{"310904473", "314250052", "313775429"} {
		emu.ApproveSystemUser(id, org, "")
	}
	config := func(key []byte) string {
		path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
		if err := os.WriteFile(filepath.Join(filepath.Dir(path), "page.key"), key, 0o600); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		text := strings.Replace(string(b), "altinn:\n", "altinn:\n  page_token_key_file: page.key\n  base_url: "+srv.URL+"/authentication/api/v1\n", 1)
		text = strings.Replace(text, "    scopes: [altinn:systembruker.demo]\n", "    scopes: [altinn:systembruker.demo]\n    system_id: "+system+"\n", 1)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	key := bytes.Repeat([]byte("k"), 32)
	list := func(addr, token string) (*tokenbrokerv1.ListSystemUsersResponse, error) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return tokenbrokerv1.NewSystemUserServiceClient(conn).ListSystemUsers(ctx, &tokenbrokerv1.ListSystemUsersRequest{PageToken: token})
	}
	a, _, _ := startServe(t, config(key), serveHooks{})
	b, _, _ := startServe(t, config(key), serveHooks{})
	first, err := list(a, "")
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page from one replica: %v %v", first, err)
	}
	second, err := list(b, first.GetNextPageToken())
	if err != nil || len(second.GetSystemUsers()) != 1 {
		t.Errorf("second page from the other replica: %v %v", second, err)
	}
	var out syncBuffer
	if err := runServe(context.Background(), []string{"--config", config(key[:31])}, &out, serveHooks{}); err == nil || !strings.Contains(err.Error(), "page_token_key_file") {
		t.Errorf("a 31-byte key: %v, want a start error naming page_token_key_file", err)
	}
}
