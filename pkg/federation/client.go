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

// Client hands out gomatrixserverlib federation clients that sign their
// requests (X-Matrix) with this server's current key. The key comes from
// the key-server (ServerKeyService.SigningKey), is held in memory only and
// is asked for again once the key-server's valid_until_ts has passed (so a
// rotation reaches every signer within that time) or after Forget.
type Client struct {
	transport *Transport
	keys      keyserverv1.ServerKeyServiceClient

	mu         sync.Mutex
	identity   *fclient.SigningIdentity
	fed        fclient.FederationClient
	validUntil time.Time
}

// NewClient makes a signing client over transport with keys from the
// key-server.
func NewClient(transport *Transport, keys keyserverv1.ServerKeyServiceClient) *Client {
	return &Client{transport: transport, keys: keys}
}

// Federation returns a federation client signing with the current key.
// Callers should ask for it per request (or batch), not keep it.
func (c *Client) Federation(ctx context.Context) (fclient.FederationClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refreshLocked(ctx); err != nil {
		return nil, err
	}
	return c.fed, nil
}

// Identity returns the current signing identity (server name, key ID,
// private key), for requests the federation client has no method for:
// sign an fclient.FederationRequest with it.
func (c *Client) Identity(ctx context.Context) (*fclient.SigningIdentity, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refreshLocked(ctx); err != nil {
		return nil, err
	}
	id := *c.identity
	return &id, nil
}

// Forget drops the held key, so the next request asks the key-server again
// (for example after a remote refused the key as unknown or expired).
func (c *Client) Forget() {
	c.mu.Lock()
	c.validUntil = time.Time{}
	c.mu.Unlock()
}

func (c *Client) refreshLocked(ctx context.Context) error {
	if c.fed != nil && time.Now().Before(c.validUntil) {
		return nil
	}
	resp, err := c.keys.SigningKey(ctx, &keyserverv1.SigningKeyRequest{})
	if err != nil {
		return fmt.Errorf("federation: signing key from the key-server: %w", err)
	}
	if len(resp.GetSeed()) != ed25519.SeedSize || resp.GetServerName() == "" || resp.GetKeyId() == "" {
		return fmt.Errorf("federation: the key-server sent an unusable signing key")
	}
	if c.identity == nil || string(c.identity.KeyID) != resp.GetKeyId() || string(c.identity.ServerName) != resp.GetServerName() {
		c.identity = &fclient.SigningIdentity{
			ServerName: spec.ServerName(resp.GetServerName()),
			KeyID:      gomatrixserverlib.KeyID(resp.GetKeyId()),
			PrivateKey: ed25519.NewKeyFromSeed(resp.GetSeed()),
		}
		c.fed = fclient.NewFederationClient([]*fclient.SigningIdentity{c.identity},
			fclient.WithTransport(c.transport), fclient.WithTimeout(c.transport.timeout), fclient.WithUserAgent(userAgent))
	}
	c.validUntil = time.UnixMilli(resp.GetValidUntilTs())
	return nil
}
