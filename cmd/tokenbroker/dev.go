package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
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

	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/server/daemon"
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
	// ClientID is the dev client's client_id.
	ClientID string
}

// runDev runs the broker against an in-process Maskinporten emulator with a
// freshly generated key, assembled by daemon.Run exactly as serve is. ready,
// when not nil, receives the environment once the broker listens; built,
// when not nil, what was assembled.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- devEnv, built func(daemon.Components)) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:50051", "gRPC listen address")
	ttl := fs.Duration("token-ttl", 2*time.Minute, "lifetime of the emulator's tokens")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (for performance work)")
	propagation := fs.Duration("propagation-delay", 10*time.Second, "how long the emulator takes to accept a newly registered key")
	rotate := fs.Duration("rotate-after", 0, "rotate the client's key once, this long after the start (0: only when due)")
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
	emu.SetPropagationDelay(*propagation)
	rot, err := newDevRotation(emu)
	if err != nil {
		return err
	}
	defer rot.close()
	cfg := devConfig(*listen, base, clientID, key)
	rot.configure(cfg, base)
	// The first key and the business certificate live in memory only: the
	// ring opens them through this. Keys the rotation makes are files.
	openKey := func(ctx context.Context, spec signer.Spec) (*signer.Key, error) {
		if k, ok := rot.open(spec); ok {
			return k, nil
		}
		if spec.URI != devKeyURI {
			return keys.Open(ctx, spec)
		}
		return signer.New(key.KeyID, key.Algorithm, rk, "memory")
	}
	onReady := func(addr string) {
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
			ready <- devEnv{Addr: addr, Emulator: emu, ClientID: clientID}
		}
	}
	return daemon.Run(ctx, cfg, daemon.Options{Stderr: stderr, Logger: log, OpenKey: openKey,
		Hooks: daemon.Hooks{Ready: onReady, Built: built, Rotation: func(r *daemon.Rotation) {
			if *rotate > 0 {
				go rotateAfter(ctx, r, *rotate, log)
			}
		}}})
}

// devKeyURI names dev mode's in-memory key in its config.
const devKeyURI = "memory:dev"

// devConfig is dev mode's config: what a config file would say for a
// broker on listen, without caller authentication (every caller is
// local:dev, allowed everything), against the emulator at base, with one
// client holding key. Everything else takes the defaults serve takes.
func devConfig(listen, base, clientID string, key *signer.Key) *daemon.Config {
	return &daemon.Config{
		Listen:           listen,
		Insecure:         true,
		InsecureIdentity: "local:dev",
		Policy: []daemon.RuleConfig{{Callers: []string{"local:dev"}, Clients: []string{"*"}, Scopes: []string{"*"},
			CustomerOrgs: []string{"*"}}},
		Maskinporten: daemon.MaskinportenConfig{Environment: "test", Issuer: base + "/", TokenURL: base + "/token"},
		Altinn:       daemon.AltinnConfig{ExchangeURL: base + maskinportentest.ExchangePath, BaseURL: base + "/authentication/api/v1"},
		Clients: []daemon.ClientConfig{{Name: devClientName, ClientID: clientID, Scopes: []string{devScope}, SystemID: devSystemID,
			Key: daemon.KeyConfig{KID: key.KeyID, Signer: devKeyURI, Algorithm: string(key.Algorithm)}}},
	}
}
