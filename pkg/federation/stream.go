package federation

import (
	"context"
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Stream sends a GET to destination signed (X-Matrix) with this server's
// current key and returns the response with its body unread, for answers
// that are streamed rather than decoded (media). Unlike the clients from
// Federation, nothing bounds the whole request but ctx: the transport
// bounds connecting and waiting for the response's headers. Redirects are
// not followed. The caller closes the body.
func (c *Client) Stream(ctx context.Context, destination spec.ServerName, requestURI string) (*http.Response, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, err
	}
	fr := fclient.NewFederationRequest(http.MethodGet, id.ServerName, destination, requestURI)
	if err := fr.Sign(id.ServerName, id.KeyID, id.PrivateKey); err != nil {
		return nil, err
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	return c.streamClient().Do(req.WithContext(ctx))
}

// StreamUnsigned is Stream without X-Matrix, for endpoints other servers
// serve without it (the deprecated /_matrix/media/v3/download).
func (c *Client) StreamUnsigned(ctx context.Context, destination spec.ServerName, requestURI string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "matrix://"+string(destination)+requestURI, nil)
	if err != nil {
		return nil, err
	}
	if req.URL.RequestURI() != requestURI {
		return nil, errors.New("federation: the request URI does not survive encoding")
	}
	req.Header.Set("User-Agent", userAgent)
	return c.streamClient().Do(req)
}

// WebTransport is the transport's WebTransport (Transport.WebTransport):
// for https URLs that other servers' answers point to.
func (c *Client) WebTransport() *http.Transport { return c.transport.WebTransport() }

func (c *Client) streamClient() *http.Client {
	return &http.Client{
		Transport:     c.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
