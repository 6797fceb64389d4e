package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/identity"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/server"
)

// The dev mode's fixed setup.
const (
	devClientName = "demo"
	devScope      = "altinn:systembruker.demo"
	devVendorOrg  = "991825827"
	devSystemID   = devVendorOrg + "_demo"
)

// devAgentPackage is the access package of the dev system's agent system
// users: one meant for client relations (accountants), so the system is
// registered with is_visible false.
const devAgentPackage = "urn:altinn:accesspackage:regnskapsforer-med-signeringsrettighet"

// devOrganisations are in the emulator's business register, so that
// system user requests can name them: synthetic test numbers that pass
// MOD11.
var devOrganisations = []string{"310904473", "314250052", "313775429", "210493352", "889640782", "123456785", "910753614"}

// devCustomers are test organisations (synthetic numbers that pass MOD11)
// with an approved system user in dev mode; the value is the external
// reference, empty for the default.
var devCustomers = []struct{ org, externalRef string }{
	{"310904473", ""},
	{"314250052", ""},
	{"313775429", ""},
	{"210493352", "tenant-42"},
}

// devEnv is what runDev reports to tests once it serves.
type devEnv struct {
	Addr     string
	Emulator *maskinportentest.Emulator
}

// runDev runs the broker against an in-process Maskinporten emulator with a
// freshly generated key. ready, when not nil, receives the environment once
// the broker listens.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- devEnv) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:50051", "gRPC listen address")
	ttl := fs.Duration("token-ttl", 2*time.Minute, "lifetime of the emulator's tokens")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (for performance work)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	log.Warn("DEV MODE: plaintext gRPC, no caller authentication, a policy that allows everything, a throwaway key, " +
		"and an in-process Maskinporten emulator; the tokens are worthless outside this process")

	emu, err := maskinportentest.New(maskinportentest.Config{TokenTTL: *ttl})
	if err != nil {
		return err
	}
	emuLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("emulator listen: %w", err)
	}
	base := "http://" + emuLis.Addr().String()
	emu.SetIssuer(base + "/")
	emuSrv := &http.Server{Handler: emu, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = emuSrv.Serve(emuLis) }()
	defer emuSrv.Close()

	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	key, err := signer.New("dev-"+uuid.NewString()[:8], signer.RS256, rk, "memory")
	if err != nil {
		return err
	}
	pub, err := key.PublicJWK()
	if err != nil {
		return err
	}
	clientID := uuid.NewString()
	if err := emu.AddClient(maskinportentest.Client{
		ID: clientID, Org: devVendorOrg, SystemID: devSystemID, Keys: []jwk.Key{pub},
		Scopes: []string{devScope, altinn.ScopeRequestWrite, altinn.ScopeRequestRead, altinn.ScopeSystemRegisterWrite},
	}); err != nil {
		return err
	}
	emu.AddSystem(maskinportentest.System{ID: devSystemID, Vendor: devVendorOrg, ClientID: clientID,
		Name: map[string]string{"nb": "Demo", "en": "Demo"}, Description: map[string]string{"nb": "Demosystem", "en": "Demo system"},
		Rights: []string{"ske-krav-og-betalinger"}, AccessPackages: []string{devAgentPackage},
		RedirectURLs: []string{"https://vendor.example/done"}})
	// The business register: every test organisation dev mode mentions.
	emu.AddOrganisations(devOrganisations...)
	for _, c := range devCustomers {
		emu.ApproveSystemUser(clientID, c.org, c.externalRef)
	}
	mp, err := maskinporten.New(maskinporten.Config{
		ClientID:    clientID,
		Key:         key,
		Environment: maskinporten.Environment{Name: "dev", Issuer: base + "/", TokenURL: base + "/token"},
	})
	if err != nil {
		return err
	}
	b, err := broker.New(broker.Config{
		Clients: []broker.Client{{Name: devClientName, Scopes: []string{devScope}, Source: mp,
			Exchanger: altinn.NewExchanger(base+maskinportentest.ExchangePath, nil),
			SystemID:  devSystemID, Vendor: altinn.NewVendor(base+"/authentication/api/v1", nil)}},
		Policy: policy.AllowAll(),
		Logger: log,
	})
	if err != nil {
		return err
	}
	defer b.Close()
	srv, err := server.New(server.Config{Broker: b, Logger: log, Authenticate: server.Fixed(identity.MustParse("local:dev"))})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addr := lis.Addr().String()
	log.Info("dev client", slog.String("client", devClientName), slog.String("client_id", clientID),
		slog.String("kid", key.KeyID), slog.String("backend", key.Backend), slog.String("emulator", base))
	fmt.Fprintf(stdout, `tokenbroker dev is serving on %s (Maskinporten emulator at %s)
customer orgs with an approved system user: 310904473, 314250052, 313775429, and 210493352 with external_ref "tenant-42"
try:
  grpcurl -plaintext -d '{"customer_org":"310904473","scopes":["%s"]}' %s tokenbroker.v1.TokenBrokerService/GetToken
ask a new customer to approve a system user (open the confirm URL it returns, add &action=approve):
  grpcurl -plaintext -d '{"customer_org":"889640782","rights":["ske-krav-og-betalinger"]}' %s tokenbroker.v1.SystemUserService/CreateSystemUserRequest
`, addr, base, devScope, addr, addr)
	if ready != nil {
		ready <- devEnv{Addr: addr, Emulator: emu}
	}
	if err := srv.Serve(ctx, lis); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
