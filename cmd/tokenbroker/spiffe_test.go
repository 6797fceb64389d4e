package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
	tokenbrokerclient "github.com/tokenbroker/tokenbroker/client"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial"
	"github.com/tokenbroker/tokenbroker/server/tlsmaterial/spiffetest"
	"github.com/tokenbroker/tokenbroker/server/tlstest"
)

const brokerSPIFFEID = "spiffe://example.org/tokenbroker"

// spiffeCall makes one GetToken call on a new connection dialled with
// tokenbrokerclient.DialSPIFFE from src, and returns the serial of the
// broker's SVID that connection got.
func spiffeCall(ctx context.Context, addr string, src tokenbrokerclient.SPIFFESource) (string, error) {
	conn, err := tokenbrokerclient.DialSPIFFE(addr, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(brokerSPIFFEID)))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	var p peer.Peer
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(rctx,
		&tokenbrokerv1.GetTokenRequest{CustomerOrg: "310904473", Scopes: []string{demoScope}}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.Text(16), nil
}

// workloadSource is the X509Source a workload gets from its own agent (a
// fake Workload API set to u).
func workloadSource(t *testing.T, u spiffetest.Update) (*spiffetest.WorkloadAPI, *workloadapi.X509Source) {
	t.Helper()
	api := spiffetest.Start(t)
	api.Set(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(api.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return api, src
}

// TestSPIFFESource: with tls.source spiffe the broker serves its SVID from
// the Workload API and knows callers by the SPIFFE ID of their verified
// SVID; it follows an SVID rotation and a CA rotation without a restart; a
// caller of a federated trust domain gets in once the agent delivers that
// domain's bundle and only if the policy names it; a caller of a trust
// domain without a bundle never does. (The fake Workload API stands in for
// SPIRE here; TestSPIRE runs the real one.)
func TestSPIFFESource(t *testing.T) {
	t.Parallel()
	emu, srv := maskinportentest.NewServer(t, maskinportentest.Config{SigningKey: signertest.RSA(t, signertest.KeyB)})
	pub := publicJWK(t, signertest.Key(t, signertest.KeyA, "smartcloud-2026"))
	if err := emu.AddClient(maskinportentest.Client{ID: "7ee41fce-9f6e-4c32-8195-0fe2c1517f43", Org: "991825827",
		SystemID: "991825827_smartcloud", Scopes: []string{demoScope}, Keys: []jwk.Key{pub}}); err != nil {
		t.Fatal(err)
	}
	emu.ApproveSystemUser("7ee41fce-9f6e-4c32-8195-0fe2c1517f43", "310904473", "")

	ca1, partnerCA, strangerCA := tlstest.NewCA(t, "example.org 1"), tlstest.NewCA(t, "partner.org"), tlstest.NewCA(t, "stranger.org")
	svid := func(ca *tlstest.CA, id string) *tlstest.Issued {
		return ca.Issue(t, tlstest.Leaf{URIs: []string{id}})
	}
	agent := spiffetest.Start(t)
	firstSVID := svid(ca1, brokerSPIFFEID)
	agent.Set(t, spiffetest.Update{SPIFFEID: brokerSPIFFEID, SVID: firstSVID, Bundle: []*tlstest.CA{ca1}})

	path := writeConfig(t, emu.Issuer(), srv.URL+"/token")
	cfg := strings.Replace(string(readFile(t, path)), "insecure: true\n",
		"tls:\n  source: spiffe\n  spiffe:\n    socket: "+agent.Addr()+"\n", 1)
	cfg = strings.Replace(cfg, "callers: [local:insecure]",
		`callers: ["spiffe://example.org/ns/*/sa/billing", "spiffe://partner.org/billing"]`, 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	updated := make(chan tlsmaterial.CertInfo)
	addr, log, stop := startServe(t, path, serveHooks{svidUpdated: updated})
	ctx := context.Background()
	waitSVID := func(serial string) {
		t.Helper()
		for {
			select {
			case ci := <-updated:
				if ci.Serial == serial {
					return
				}
			case <-time.After(time.Minute):
				t.Fatalf("the broker did not take SVID %s", serial)
			}
		}
	}

	expect := func(name string, src tokenbrokerclient.SPIFFESource, code codes.Code, wantSerial string) {
		t.Helper()
		got, err := spiffeCall(ctx, addr, src)
		if status.Code(err) != code {
			t.Errorf("%s: %v, want %v", name, err, code)
			return
		}
		if code == codes.OK && got != wantSerial {
			t.Errorf("%s: the broker presented SVID %s, want %s", name, got, wantSerial)
		}
	}
	billingAPI, billing := workloadSource(t, spiffetest.Update{SPIFFEID: "spiffe://example.org/ns/prod/sa/billing",
		SVID: svid(ca1, "spiffe://example.org/ns/prod/sa/billing"), Bundle: []*tlstest.CA{ca1}})
	expect("billing", billing, codes.OK, serialOf(firstSVID))
	partnerFed := map[string][]*tlstest.CA{"example.org": {ca1}}
	_, partner := workloadSource(t, spiffetest.Update{SPIFFEID: "spiffe://partner.org/billing",
		SVID: svid(partnerCA, "spiffe://partner.org/billing"), Bundle: []*tlstest.CA{partnerCA}, Federated: partnerFed})
	_, partnerReports := workloadSource(t, spiffetest.Update{SPIFFEID: "spiffe://partner.org/reports",
		SVID: svid(partnerCA, "spiffe://partner.org/reports"), Bundle: []*tlstest.CA{partnerCA}, Federated: partnerFed})
	_, stranger := workloadSource(t, spiffetest.Update{SPIFFEID: "spiffe://stranger.org/billing",
		SVID: svid(strangerCA, "spiffe://stranger.org/billing"), Bundle: []*tlstest.CA{strangerCA}, Federated: partnerFed})
	_, impostor := workloadSource(t, spiffetest.Update{SPIFFEID: "spiffe://example.org/ns/prod/sa/billing",
		SVID: svid(partnerCA, "spiffe://example.org/ns/prod/sa/billing"), Bundle: []*tlstest.CA{ca1}})
	expect("partner.org before it is federated", partner, codes.Unauthenticated, "")
	expect("an example.org ID signed by partner.org's CA", impostor, codes.Unauthenticated, "")

	// SPIRE delivers partner.org's bundle: the broker now federates with it.
	agent.Set(t, spiffetest.Update{SPIFFEID: brokerSPIFFEID, SVID: firstSVID, Bundle: []*tlstest.CA{ca1},
		Federated: map[string][]*tlstest.CA{"partner.org": {partnerCA}}})
	waitSVID(serialOf(firstSVID))
	expect("partner.org/billing, federated and in the policy", partner, codes.OK, serialOf(firstSVID))
	expect("partner.org/reports, federated but not in the policy", partnerReports, codes.PermissionDenied, "")
	expect("stranger.org, not federated", stranger, codes.Unauthenticated, "")
	expect("still an impostor", impostor, codes.Unauthenticated, "")

	// An SVID rotation: new connections get the new SVID.
	secondSVID := svid(ca1, brokerSPIFFEID)
	agent.Set(t, spiffetest.Update{SPIFFEID: brokerSPIFFEID, SVID: secondSVID, Bundle: []*tlstest.CA{ca1}})
	waitSVID(serialOf(secondSVID))
	expect("billing after the broker's SVID rotation", billing, codes.OK, serialOf(secondSVID))
	expect("partner.org after its bundle was withdrawn", partner, codes.Unauthenticated, "")

	// A CA rotation: the bundle holds both CAs, then the broker's SVID
	// comes from the new one, then the caller's, then the old CA leaves.
	ca2 := tlstest.NewCA(t, "example.org 2")
	both := []*tlstest.CA{ca1, ca2}
	agent.Set(t, spiffetest.Update{SPIFFEID: brokerSPIFFEID, SVID: secondSVID, Bundle: both})
	waitSVID(serialOf(secondSVID))
	billingAPI.Set(t, spiffetest.Update{SPIFFEID: "spiffe://example.org/ns/prod/sa/billing",
		SVID: svid(ca1, "spiffe://example.org/ns/prod/sa/billing"), Bundle: both})
	_, oldBilling := workloadSource(t, spiffetest.Update{SPIFFEID: "spiffe://example.org/ns/staging/sa/billing",
		SVID: svid(ca1, "spiffe://example.org/ns/staging/sa/billing"), Bundle: both})
	thirdSVID := svid(ca2, brokerSPIFFEID)
	agent.Set(t, spiffetest.Update{SPIFFEID: brokerSPIFFEID, SVID: thirdSVID, Bundle: both})
	waitSVID(serialOf(thirdSVID))
	expect("billing (old CA) with the broker on the new CA", billing, codes.OK, serialOf(thirdSVID))
	newBilling := svid(ca2, "spiffe://example.org/ns/prod/sa/billing")
	billingAPI.Set(t, spiffetest.Update{SPIFFEID: "spiffe://example.org/ns/prod/sa/billing", SVID: newBilling, Bundle: both})
	for give := time.Now().Add(time.Minute); ; {
		s, err := billing.GetX509SVID()
		if err == nil && s.Certificates[0].SerialNumber.Cmp(newBilling.TLS.Leaf.SerialNumber) == 0 {
			break
		}
		if time.Now().After(give) {
			t.Fatal("the caller's source did not take its new SVID")
		}
		<-billing.Updated()
	}
	agent.Set(t, spiffetest.Update{SPIFFEID: brokerSPIFFEID, SVID: thirdSVID, Bundle: []*tlstest.CA{ca2}})
	waitSVID(serialOf(thirdSVID))
	expect("billing (new CA) after the old CA left the bundle", billing, codes.OK, serialOf(thirdSVID))
	expect("a caller still on the old CA after it left", oldBilling, codes.Unauthenticated, "")

	tb := &tlsBroker{log: log}
	h := tb.healthz(t)
	tlsz := h["tls"].(map[string]any)
	if tlsz["source"] != "spiffe" || tlsz["spiffe_id"] != brokerSPIFFEID || tlsz["serial"] != serialOf(thirdSVID) {
		t.Errorf("/healthz tls: %v", tlsz)
	}
	scrape := scrapeMetrics(t, log.String())
	if !strings.Contains(scrape, `tokenbroker_tls_certificate_expiry_seconds{source="spiffe"} `) {
		t.Error("no expiry metric for the SVID")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	out := log.String()
	for _, want := range []string{`"msg":"X.509-SVID in use"`, `"spiffe_id":"` + brokerSPIFFEID + `"`, `"caller":"spiffe://partner.org/reports"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	for _, k := range []*tlstest.Issued{firstSVID, secondSVID, thirdSVID} {
		for _, l := range strings.Split(string(k.KeyPEM), "\n") {
			if len(l) > 20 && (strings.Contains(out, l) || strings.Contains(scrape, l)) {
				t.Fatal("the log or the metrics hold an SVID key")
			}
		}
	}
}
