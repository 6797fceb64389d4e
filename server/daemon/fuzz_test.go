package daemon

import "testing"

// FuzzParseConfig checks that no config document makes the parser panic,
// and that what it accepts passes its own checks again.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:50051\ninsecure: true\nmaskinporten:\n  environment: test\nclients:\n  - name: a\n    client_id: b\n    scopes: [c:d]\n    key: {kid: k, signer: 'file:k.pem'}\n"))
	f.Add([]byte("listen: [\n"))
	f.Add([]byte("clients: {}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := cfg.check(); err != nil {
			t.Fatalf("accepted config fails its check: %v", err)
		}
	})
}
