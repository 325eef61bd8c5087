package federation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// SigningKey holds this server's current signing key for a service that
// signs (federation requests, the room-server's events). The key-server
// owns the key: it hands it out through ServerKeyService.SigningKey with a
// valid_until_ts, and the holder asks again once that has passed (so a
// rotation reaches every holder within it; the key-server keeps the old
// key valid for longer than that) or after Forget. The key is held in
// memory only.
type SigningKey struct {
	keys keyserverv1.ServerKeyServiceClient

	mu         sync.Mutex
	identity   *fclient.SigningIdentity
	validUntil time.Time
}

// NewSigningKey makes a holder that asks keys for the key when first
// needed.
func NewSigningKey(keys keyserverv1.ServerKeyServiceClient) *SigningKey {
	return &SigningKey{keys: keys}
}

// Identity returns the current signing identity (server name, key ID,
// private key), asking the key-server first when the held one is due. The
// returned identity is never changed afterwards (a new key is a new one).
func (k *SigningKey) Identity(ctx context.Context) (*fclient.SigningIdentity, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.identity != nil && time.Now().Before(k.validUntil) {
		return k.identity, nil
	}
	resp, err := k.keys.SigningKey(ctx, &keyserverv1.SigningKeyRequest{})
	if err != nil {
		return nil, fmt.Errorf("signing key from the key-server: %w", err)
	}
	if len(resp.GetSeed()) != ed25519.SeedSize || resp.GetServerName() == "" || resp.GetKeyId() == "" {
		return nil, fmt.Errorf("the key-server sent an unusable signing key")
	}
	if k.identity == nil || string(k.identity.KeyID) != resp.GetKeyId() || string(k.identity.ServerName) != resp.GetServerName() {
		k.identity = &fclient.SigningIdentity{
			ServerName: spec.ServerName(resp.GetServerName()),
			KeyID:      gomatrixserverlib.KeyID(resp.GetKeyId()),
			PrivateKey: ed25519.NewKeyFromSeed(resp.GetSeed()),
		}
	}
	k.validUntil = time.UnixMilli(resp.GetValidUntilTs())
	return k.identity, nil
}

// Forget drops the held key, so the next Identity asks the key-server
// again (for example after a remote refused the key as unknown or
// expired).
func (k *SigningKey) Forget() {
	k.mu.Lock()
	k.validUntil = time.Time{}
	k.mu.Unlock()
}
