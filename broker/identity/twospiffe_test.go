package identity

import "testing"

// TestTwoSPIFFEIDsRefusedWhateverElseTheCertificateNames: a certificate
// with two SPIFFE IDs is refused, as the X.509-SVID rules require, even
// when it also has a DNS SAN or a CN: it is not named by those instead
// (which would let a workload holding two SVID names pass as its DNS
// name).
func TestTwoSPIFFEIDsRefusedWhateverElseTheCertificateNames(t *testing.T) {
	t.Parallel()
	two := []string{"spiffe://example.org/ns/prod/sa/billing", "spiffe://example.org/ns/prod/sa/payroll"}
	for name, c := range map[string]struct {
		dns []string
		cn  string
	}{
		"with_dns_san": {[]string{"billing.internal"}, ""},
		"with_cn":      {nil, "billing"},
		"with_both":    {[]string{"billing.internal"}, "billing"},
	} {
		if id, err := FromCertificate(certWith(t, two, c.dns, c.cn)); err == nil {
			t.Errorf("%s: named %q, want the certificate refused", name, id)
		}
	}
}
