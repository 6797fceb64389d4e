package signertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// LocalKMS starts a local AWS KMS emulator (the local-kms binary that
// scripts/tools.sh installs into .tmp/bin, found on PATH), creates an RSA
// 2048 signing key in it, and returns an awskms: URI for that key. The
// process stops when the test ends. It sets dummy AWS credentials in the
// environment when none are set, for the SDK's default chain. Without the
// binary the test is skipped, except under CI.
func LocalKMS(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("local-kms")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatal("signertest: local-kms not on PATH; scripts/test.sh installs it")
		}
		tb.Skip("signertest: local-kms not on PATH (bash scripts/tools.sh; PATH=.tmp/bin:$PATH)")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "KMS_DATA_PATH="+tb.TempDir(),
		"KMS_REGION=eu-north-1", "KMS_ACCOUNT_ID=111122223333")
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		os.Setenv("AWS_ACCESS_KEY_ID", "test")
		os.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	}
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := kms.New(kms.Options{
		Region:       "eu-north-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
	})
	var out *kms.CreateKeyOutput
	for i := 0; i < 100; i++ { // wait for it to listen
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		out, err = client.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeSignVerify})
		cancel()
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("signertest: local-kms CreateKey: %v", err)
	}
	return fmt.Sprintf("awskms:%s?region=eu-north-1&endpoint=%s", *out.KeyMetadata.KeyId, endpoint)
}
