package rotation

import (
	"crypto"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

func publicJWK(kid string, alg signer.Algorithm, pub crypto.PublicKey) (json.RawMessage, error) {
	rk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("rotation: key %q is %T; Maskinporten takes RSA keys only", kid, pub)
	}
	if alg == "" {
		alg = signer.RS256
	}
	b64 := base64.RawURLEncoding.EncodeToString
	return json.Marshal(struct {
		KTY string `json:"kty"`
		N   string `json:"n"`
		E   string `json:"e"`
		KID string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
	}{"RSA", b64(rk.N.Bytes()), b64(big.NewInt(int64(rk.E)).Bytes()), kid, string(alg), "sig"})
}
