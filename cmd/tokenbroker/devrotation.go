package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/tokenbroker/tokenbroker/broker/maskinporten/maskinportentest"
	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// devAdminKeyURI names dev mode's in-memory business certificate key, the
// self-service client's.
const devAdminKeyURI = "memory:selfservice"

// devRotation is dev mode's key rotation: a self-service client in the
// emulator authenticated with a throwaway business certificate, new keys
// as files in a temp dir, and the rotation state next to them.
type devRotation struct {
	adminID string
	admin   *signer.Key
	dir     string
}

// newDevRotation registers the self-service client in emu and makes the
// temp dir; remove it with close.
func newDevRotation(emu *maskinportentest.Emulator) (*devRotation, error) {
	admin, pool, err := devBusinessCertificate(devVendorOrg)
	if err != nil {
		return nil, err
	}
	d := &devRotation{adminID: uuid.NewString(), admin: admin}
	if err := emu.AddClient(maskinportentest.Client{ID: d.adminID, Org: devVendorOrg, CertificateCAs: pool,
		Scopes: []string{maskinportentest.ScopeDCRRead, maskinportentest.ScopeDCRWrite}}); err != nil {
		return nil, err
	}
	if d.dir, err = os.MkdirTemp("", "tokenbroker-dev-"); err != nil {
		return nil, err
	}
	for _, sub := range []string{"keys", "state"} {
		if err := os.Mkdir(filepath.Join(d.dir, sub), 0o700); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

func (d *devRotation) close() { _ = os.RemoveAll(d.dir) }

// configure adds the self_service section and the client's rotation to cfg.
func (d *devRotation) configure(cfg *daemon.Config, base string) {
	cfg.SelfService = &daemon.SelfServiceConfig{ClientID: d.adminID, Key: daemon.KeyConfig{Signer: devAdminKeyURI},
		URL: base, StateDir: filepath.Join(d.dir, "state")}
	cfg.Clients[0].Rotation = &daemon.RotationConfig{NewKeys: "file:" + filepath.Join(d.dir, "keys") + "/"}
}

// open opens the admin key; other URIs are not its.
func (d *devRotation) open(spec signer.Spec) (*signer.Key, bool) {
	if spec.URI != devAdminKeyURI {
		return nil, false
	}
	k, err := signer.New(d.admin.KeyID, d.admin.Algorithm, d.admin.Signer, "memory")
	if err != nil {
		return nil, false
	}
	k.Chain = d.admin.Chain
	return k, true
}

// rotateAfter rotates the dev client's key once, after wait: the code
// path of `tokenbroker keys rotate`.
func rotateAfter(ctx context.Context, rot *daemon.Rotation, wait time.Duration, log *slog.Logger) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(wait):
	}
	log.Info("dev: rotating the key now (--rotate-after)", slog.String("client", devClientName))
	rep, err := rot.Rotate(ctx, devClientName, daemon.RotateOptions{})
	if err != nil {
		log.Error("dev: rotation failed", slog.String("error", err.Error()))
		return
	}
	log.Info("dev: rotation done as far as the grace period", slog.String("outcome", rep.Outcome),
		slog.String("active", rep.Active), slog.String("old", rep.Old), slog.Time("old_removed_at", rep.WaitUntil))
}

// devBusinessCertificate makes a throwaway CA and a business certificate
// ("virksomhetssertifikat") for org under it, and returns its key with the
// chain and a pool holding the CA.
func devBusinessCertificate(org string) (*signer.Key, *x509.CertPool, error) {
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	leafKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenbroker dev business CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, err
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject:   pkix.Name{CommonName: "DEV VENDOR AS", SerialNumber: org, Organization: []string{"DEV VENDOR AS"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, nil, err
	}
	k, err := signer.New("business-"+org, signer.RS256, leafKey, "memory")
	if err != nil {
		return nil, nil, fmt.Errorf("dev business certificate: %w", err)
	}
	k.Chain = []*x509.Certificate{leaf, ca}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return k, pool, nil
}
