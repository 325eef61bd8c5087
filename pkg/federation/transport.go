// Package federation is Myelin's server-server transport: outbound clients
// (gomatrixserverlib's fclient) that find other homeservers the spec's way,
// verify their TLS certificates, refuse non-public addresses (SSRF) and
// sign requests with X-Matrix using the key-server's key; and inbound
// X-Matrix verification for any service's federation HTTP handlers, with
// keys from the key-server's ServerKeyService.
package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
)

// ErrDisabled is returned for every outbound request while
// federation.enabled is off.
var ErrDisabled = errors.New("federation is disabled (federation.enabled)")

// Options build a Transport.
type Options struct {
	Config Config
	Logger *zap.Logger
	// Resolver answers DNS questions; nil is net.DefaultResolver. Tests
	// pass their own answers (the code path is the same).
	Resolver Resolver
	// Timeout bounds each whole request (default 30 s); DialTimeout each
	// connection attempt (default 5 s).
	Timeout     time.Duration
	DialTimeout time.Duration
	// WellKnownPort and DefaultPort replace 443 (where .well-known is
	// fetched) and 8448 (the federation port when discovery names none).
	// Zero keeps the spec's ports; tests on loopback set free ports.
	WellKnownPort int
	DefaultPort   int
	// Now is the clock of the discovery cache (default time.Now).
	Now func() time.Time
	// MaxResponseBody bounds the body of every response (default
	// DefaultMaxResponseBody): reading past it fails, so a remote server
	// cannot make a caller buffer without end.
	MaxResponseBody int64
}

// DefaultMaxResponseBody bounds responses from other servers (a
// send_join of a room with tens of thousands of state events fits).
const DefaultMaxResponseBody = 128 << 20

// ErrResponseTooLarge is a response body past Options.MaxResponseBody.
var ErrResponseTooLarge = errors.New("federation: response body too large")

// Transport is an http.RoundTripper for "matrix://<server name>/path" URLs,
// the form gomatrixserverlib's fclient clients send: it resolves the server
// name, connects through the SSRF-guarded dialer and verifies the
// certificate against the system roots plus federation.trusted_ca_files.
type Transport struct {
	enabled bool
	log     *zap.Logger
	tls     *tls.Config
	dialer  *dialer
	res     *resolver
	timeout time.Duration
	maxBody int64

	mu         sync.Mutex
	transports map[string]*hostTransport
}

type hostTransport struct {
	*http.Transport
	lastUsed time.Time
}

// NewTransport builds the transport of one process.
func NewTransport(opts Options) (*Transport, error) {
	cfg := opts.Config
	if err := cfg.validateOutbound(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	allowed, _ := cfg.allowedPrefixes()
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	for _, file := range cfg.TrustedCAFiles {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("federation.trusted_ca_files: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("federation.trusted_ca_files: %s holds no PEM certificate", file)
		}
	}
	if cfg.InsecureSkipTLSVerify {
		log.Error("federation.insecure_skip_tls_verify is on: certificates of other homeservers are NOT verified; " +
			"anyone on the network path can impersonate them. Use it only for tests or closed networks.")
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.WellKnownPort == 0 {
		opts.WellKnownPort = 443
	}
	if opts.DefaultPort == 0 {
		opts.DefaultPort = 8448
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxResponseBody <= 0 {
		opts.MaxResponseBody = DefaultMaxResponseBody
	}
	t := &Transport{
		enabled: cfg.Enabled,
		log:     log,
		tls: &tls.Config{
			RootCAs:            roots,
			InsecureSkipVerify: cfg.InsecureSkipTLSVerify, //nolint:gosec // explicitly configured, logged above
			MinVersion:         tls.VersionTLS12,
		},
		dialer:     newDialer(opts.Resolver, allowed, opts.DialTimeout),
		timeout:    opts.Timeout,
		maxBody:    opts.MaxResponseBody,
		transports: map[string]*hostTransport{},
	}
	static := map[spec.ServerName]string{}
	for name, addr := range cfg.ServerNameMap {
		static[spec.ServerName(name)] = addr
	}
	t.res = &resolver{
		static:        static,
		dns:           opts.Resolver,
		wellKnownPort: opts.WellKnownPort,
		defaultPort:   opts.DefaultPort,
		now:           opts.Now,
		wellKnown: &http.Client{
			Transport: t.newHostTransport(nil).Transport,
			Timeout:   10 * time.Second,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 5 {
					return errors.New("well-known: too many redirects")
				}
				if req.URL.Scheme != "https" {
					return errors.New("well-known: redirect to a non-HTTPS URL")
				}
				return nil
			},
		},
	}
	return t, nil
}

// Enabled reports federation.enabled.
func (t *Transport) Enabled() bool { return t.enabled }

// Resolve returns where requests for serverName go (the static map, or
// discovery), in order of preference.
func (t *Transport) Resolve(ctx context.Context, serverName spec.ServerName) ([]Destination, error) {
	return t.res.resolve(ctx, serverName)
}

// RoundTrip sends a matrix:// request to the server named by its host,
// trying each destination of the server in turn.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.enabled {
		closeBody(req)
		return nil, ErrDisabled
	}
	if req.URL.Scheme != "matrix" && req.URL.Scheme != "matrix-federation" {
		closeBody(req)
		return nil, fmt.Errorf("federation: unsupported URL scheme %q (want matrix://)", req.URL.Scheme)
	}
	dests, err := t.res.resolve(req.Context(), spec.ServerName(req.URL.Host))
	if err != nil {
		closeBody(req)
		return nil, err
	}
	var lastErr error
	for i, d := range dests {
		out := req.Clone(req.Context())
		out.URL.Scheme, out.URL.Host, out.Host = "https", d.Addr, d.Host
		if i > 0 && req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				break // the body is spent and cannot be sent again
			}
			if out.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		resp, err := t.transportFor(d.TLSServerName).RoundTrip(out)
		if err == nil {
			resp.Body = &limitedBody{rc: resp.Body, left: t.maxBody}
			return resp, nil
		}
		lastErr = fmt.Errorf("%s via %s: %w", req.URL.Host, d.Addr, err)
	}
	return nil, lastErr
}

// CloseIdleConnections closes idle connections to every server.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ht := range t.transports {
		ht.CloseIdleConnections()
	}
	t.res.wellKnown.CloseIdleConnections()
}

// transportFor returns the HTTP transport for one certificate name: a
// transport's TLS ServerName is fixed, and connections must not be shared
// between names that happen to reach the same address.
func (t *Transport) transportFor(tlsName string) *hostTransport {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	ht, ok := t.transports[tlsName]
	if !ok {
		// Forget transports of servers not talked to for a while.
		for name, old := range t.transports {
			if now.Sub(old.lastUsed) > 10*time.Minute {
				old.CloseIdleConnections()
				delete(t.transports, name)
			}
		}
		ht = t.newHostTransport(&tlsName)
		t.transports[tlsName] = ht
	}
	ht.lastUsed = now
	return ht
}

// newHostTransport makes an HTTP transport through the guarded dialer.
// With tlsName nil, the certificate name comes from the URL (well-known
// requests and their redirects).
func (t *Transport) newHostTransport(tlsName *string) *hostTransport {
	cfg := t.tls.Clone()
	if tlsName != nil {
		cfg.ServerName = *tlsName
	}
	return &hostTransport{Transport: &http.Transport{
		Proxy:                 nil, // a proxy would dial for us, past the address check
		DialContext:           t.dialer.DialContext,
		TLSClientConfig:       cfg,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: t.timeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}}
}

// NewKeyClient is the plain (unsigned) gomatrixserverlib client over t: key
// requests (/_matrix/key/v2/server, /_matrix/key/v2/query) need no X-Matrix.
func (t *Transport) NewKeyClient() *fclient.Client {
	return fclient.NewClient(fclient.WithTransport(t), fclient.WithTimeout(t.timeout), fclient.WithUserAgent(userAgent))
}

const userAgent = "Myelin"

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// limitedBody fails a read past its limit with ErrResponseTooLarge.
type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body that ends exactly at the limit
		// from one that goes on.
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, ErrResponseTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
