package daemon

import (
	"context"
	"fmt"

	"github.com/tokenbroker/tokenbroker/broker/signer"
)

// owns checks that spec, a key the rotation state of client says the
// rotation made, is in the client's rotation.new_keys (keymaker.Maker's
// Owns): the same backend and, for pkcs11, the same module and token, for
// files the new_keys directory, for a KMS the same region, key ring or
// vault. Whoever can write the state (the state_dir, Redis without the
// MAC key) could otherwise make the broker open a key elsewhere, and a
// pkcs11: URI with another module-path would load that module into the
// broker. The error names the client and the kid, never a PIN. A nil kr
// (no client rotates) owns nothing.
func (kr *keyRotation) owns(client string, spec signer.Spec) error {
	var err error
	if kr == nil || kr.makers[client] == nil {
		err = fmt.Errorf("client %s has no rotation section", client)
	} else {
		err = kr.makers[client].Owns(spec)
	}
	if err != nil {
		return fmt.Errorf("the rotation state of client %s names key %s, which is not in its rotation.new_keys (%v); refusing to open it: restore the state",
			client, spec.KeyID, err)
	}
	return nil
}

// ownedOpen is open for the keys client's rotator opens (the next key, to
// register and prove it), refusing those owns refuses.
func (kr *keyRotation) ownedOpen(client string, open func(context.Context, signer.Spec) (*signer.Key, error)) func(context.Context, signer.Spec) (*signer.Key, error) {
	return func(ctx context.Context, spec signer.Spec) (*signer.Key, error) {
		if err := kr.owns(client, spec); err != nil {
			return nil, err
		}
		return open(ctx, spec)
	}
}
