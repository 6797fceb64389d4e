package keymaker_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/tokenbroker/tokenbroker/broker/signer"
	"github.com/tokenbroker/tokenbroker/broker/signer/awskmssigner"
	"github.com/tokenbroker/tokenbroker/broker/signer/keymaker"
	"github.com/tokenbroker/tokenbroker/broker/signer/keys"
	"github.com/tokenbroker/tokenbroker/broker/signer/signertest"
)

// localKMS starts the KMS emulator and returns a maker location for it and
// a client that looks at it.
func localKMS(t *testing.T) (string, *kms.Client) {
	t.Helper()
	_, query, _ := strings.Cut(signertest.LocalKMS(t), "?")
	var endpoint string
	for _, kv := range strings.Split(query, "&") {
		if v, ok := strings.CutPrefix(kv, "endpoint="); ok {
			endpoint = v
		}
	}
	return "awskms:?" + query, kms.New(kms.Options{Region: "eu-north-1", BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")})
}

func countKeys(t *testing.T, c *kms.Client) int {
	t.Helper()
	out, err := c.ListKeys(context.Background(), &kms.ListKeysInput{})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Keys)
}

// TestAWSKMSMaker: a key made in the KMS emulator opens by its alias with
// keys.Open and gets a token; it carries its kid as a tag; making the kid
// again finds it by its alias instead of creating a second key; Destroy
// disables it, schedules its deletion in 30 days and deletes the alias, and
// again is fine.
func TestAWSKMSMaker(t *testing.T) {
	t.Parallel()
	loc, c := localKMS(t)
	keysBefore := countKeys(t, c)
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: loc, Bits: 3072, Algorithm: signer.RS384})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(spec.URI, "awskms:alias/tokenbroker/"+kid+"?") || spec.KeyID != kid || spec.Algorithm != signer.RS384 {
		t.Errorf("spec %+v", spec)
	}
	key := open(t, spec)
	if bits(key) != 3072 || key.Backend != "awskms" {
		t.Errorf("%d-bit %s key, want 3072 awskms", bits(key), key.Backend)
	}
	signertest.Conformance(t, key)
	d, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String("alias/tokenbroker/" + kid)})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(d.KeyMetadata.Arn)
	if !strings.Contains(aws.ToString(d.KeyMetadata.Description), kid) || d.KeyMetadata.KeyUsage != types.KeyUsageTypeSignVerify {
		t.Errorf("key metadata %+v", d.KeyMetadata)
	}
	tags, err := c.ListResourceTags(context.Background(), &kms.ListResourceTagsInput{KeyId: aws.String(arn)})
	if err != nil || len(tags.Tags) != 1 || aws.ToString(tags.Tags[0].TagKey) != awskmssigner.KIDTag || aws.ToString(tags.Tags[0].TagValue) != kid {
		t.Errorf("tags %+v, %v", tags, err)
	}

	again, err := m.Make(context.Background(), kid)
	if err != nil {
		t.Fatal(err)
	}
	if again != spec || !samePublic(open(t, again), key) {
		t.Errorf("second Make gave %+v, another key", again)
	}
	if n := countKeys(t, c); n != keysBefore+1 {
		t.Errorf("%d keys after two Makes, want %d", n, keysBefore+1)
	}

	for name, bad := range map[string]signer.Spec{
		"other kid":    {URI: spec.URI, KeyID: "other"},
		"by key id":    {URI: strings.Replace(spec.URI, "alias/tokenbroker/"+kid, arn, 1), KeyID: kid},
		"other region": {URI: strings.Replace(spec.URI, "region=eu-north-1", "region=eu-west-1", 1), KeyID: kid},
		"not awskms":   {URI: "file:x.pem", KeyID: kid},
	} {
		if err := m.Destroy(context.Background(), bad); err == nil {
			t.Errorf("Destroy %s accepted", name)
		}
	}
	open(t, spec) // still there
	for range 2 {
		if err := m.Destroy(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
	}
	d, err = c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(arn)})
	if err != nil || d.KeyMetadata.KeyState != types.KeyStatePendingDeletion || d.KeyMetadata.DeletionDate == nil {
		t.Errorf("after Destroy the key is %+v, %v; want it pending deletion", d, err)
	}
	var nf *types.NotFoundException
	if _, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String("alias/tokenbroker/" + kid)}); !errors.As(err, &nf) {
		t.Errorf("the alias outlived Destroy: %v", err)
	}
	if k, err := keys.Open(context.Background(), spec); err == nil {
		k.Close()
		t.Error("the destroyed key still opens")
	}
}

func TestAWSKMSMakerRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ loc, want string }{
		{"awskms:alias/mine?region=eu-north-1", "location: an awskms location names a region, not a key"},
		{"awskms:?colour=red", `location: awskms URI: unknown query attribute "colour"`},
		{"awskms:?endpoint=ftp://x", "location: awskms URI: endpoint"},
	} {
		_, err := keymaker.NewMaker(keymaker.MakerConfig{Location: tc.loc})
		wantErr(t, tc.loc, err, tc.want)
	}
	m, err := keymaker.NewMaker(keymaker.MakerConfig{Location: "awskms:?region=eu-north-1&endpoint=http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Make(context.Background(), "a.b")
	wantErr(t, "bad kid", err, "kid")
}
