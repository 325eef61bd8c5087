package federation

import (
	"context"
	"fmt"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/fclient"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// Client hands out gomatrixserverlib federation clients that sign their
// requests (X-Matrix) with this server's current key, held by a SigningKey
// (from the key-server, in memory only, asked for again once its
// valid_until_ts has passed or after Forget).
type Client struct {
	transport *Transport
	key       *SigningKey

	mu       sync.Mutex
	identity *fclient.SigningIdentity // what fed signs with
	fed      fclient.FederationClient
}

// NewClient makes a signing client over transport with keys from the
// key-server.
func NewClient(transport *Transport, keys keyserverv1.ServerKeyServiceClient) *Client {
	return &Client{transport: transport, key: NewSigningKey(keys)}
}

// Federation returns a federation client signing with the current key.
// Callers should ask for it per request (or batch), not keep it.
func (c *Client) Federation(ctx context.Context) (fclient.FederationClient, error) {
	id, err := c.key.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.identity != id {
		c.identity = id
		c.fed = fclient.NewFederationClient([]*fclient.SigningIdentity{id},
			fclient.WithTransport(c.transport), fclient.WithTimeout(c.transport.timeout), fclient.WithUserAgent(userAgent))
	}
	return c.fed, nil
}

// Identity returns the current signing identity (server name, key ID,
// private key), for requests the federation client has no method for:
// sign an fclient.FederationRequest with it.
func (c *Client) Identity(ctx context.Context) (*fclient.SigningIdentity, error) {
	id, err := c.key.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	cp := *id
	return &cp, nil
}

// Forget drops the held key, so the next request asks the key-server again
// (for example after a remote refused the key as unknown or expired).
func (c *Client) Forget() { c.key.Forget() }
