package federation

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"time"
)

// WebOptions build a WebTransport.
type WebOptions struct {
	// AllowedNetworks (CIDRs) may be reached although they are not
	// public; every other non-public address is refused, as for
	// federation requests.
	AllowedNetworks []string
	// Resolver answers DNS questions; nil is net.DefaultResolver.
	Resolver Resolver
	// DialTimeout bounds each connection attempt (default 5 s).
	DialTimeout time.Duration
	// RootCAs verify HTTPS certificates; nil is the system roots.
	RootCAs *x509.CertPool
}

// NewWebTransport is an http.Transport for ordinary http and https URLs
// that users or other servers hand this server (URL previews): it connects
// only through the dialer federation requests use, so every address,
// whatever led to it (the URL's host, a DNS answer, a redirect), is
// checked on the resolved IP at dial time and refused unless it is public
// or in opts.AllowedNetworks. No proxy is used. Redirects are the
// http.Client's business: each one dials through the same check.
func NewWebTransport(opts WebOptions) (*http.Transport, error) {
	allowed, err := Config{AllowedPrivateNetworks: opts.AllowedNetworks}.allowedPrefixes()
	if err != nil {
		return nil, err
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	d := newDialer(opts.Resolver, allowed, opts.DialTimeout)
	return &http.Transport{
		Proxy:                 nil, // a proxy would dial for us, past the address check
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2,
		ResponseHeaderTimeout: 30 * time.Second,
	}, nil
}

// WebTransport is an http.Transport for ordinary https URLs that answers
// of other homeservers point to (the Location of a federation media
// download): the same guarded dialer, federation.allowed_private_networks
// and trusted CAs as federation requests, with the certificate checked
// against the URL's host. It is built once per call; keep it.
func (t *Transport) WebTransport() *http.Transport {
	return t.newHostTransport(nil).Transport
}
