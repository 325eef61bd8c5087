package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TLSConfig is the mutual TLS of the gRPC traffic between processes (root
// key grpc.tls). Empty: plain gRPC (the all-in-one shape, whose services
// call each other in memory, needs none). Set: the gRPC listener accepts
// only clients with a certificate signed by the CA, and this process
// dials the other services with its certificate, checking theirs against
// the CA. The files are PEM, as cert-manager writes them into a Secret
// (tls.crt, tls.key, ca.crt); a renewed certificate is picked up from the
// files without a restart.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
}

// Enabled reports whether mutual TLS is configured.
func (c TLSConfig) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" || c.CAFile != "" }

// Validate checks that all three files are set, or none.
func (c TLSConfig) Validate() error {
	if c.Enabled() && (c.CertFile == "" || c.KeyFile == "" || c.CAFile == "") {
		return errors.New("grpc.tls: cert_file, key_file and ca_file must all be set (or none)")
	}
	return nil
}

// Credentials are a process's mutual TLS material.
type Credentials struct {
	pool *x509.CertPool
	cert *certFiles
}

// LoadCredentials reads the files (nil, nil when TLS is not configured).
func LoadCredentials(c TLSConfig) (*Credentials, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("grpc.tls.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("grpc.tls.ca_file %s: no PEM certificate", c.CAFile)
	}
	cf := &certFiles{certFile: c.CertFile, keyFile: c.KeyFile}
	if _, err := cf.get(); err != nil {
		return nil, fmt.Errorf("grpc.tls: %w", err)
	}
	return &Credentials{pool: pool, cert: cf}, nil
}

// certFiles loads a key pair, again whenever a file changes (cert-manager
// renews certificates in place).
type certFiles struct {
	certFile, keyFile string

	mu       sync.Mutex
	cert     *tls.Certificate
	modified [2]time.Time
	checked  time.Time
}

func (c *certFiles) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && time.Since(c.checked) < 10*time.Second {
		return c.cert, nil
	}
	c.checked = time.Now()
	var mod [2]time.Time
	for i, f := range []string{c.certFile, c.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			if c.cert != nil {
				return c.cert, nil // a renewal in progress: keep the old one
			}
			return nil, err
		}
		mod[i] = st.ModTime()
	}
	if c.cert != nil && mod == c.modified {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		if c.cert != nil {
			return c.cert, nil
		}
		return nil, err
	}
	c.cert, c.modified = &cert, mod
	return c.cert, nil
}

func (c *Credentials) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  c.pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cert.get()
		},
	}
}

func (c *Credentials) clientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    c.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.cert.get()
		},
	}
}

// ServerOption makes the gRPC server require mutual TLS on its network
// listeners; connections through the in-process listener (the process's
// own services) stay plain.
func (c *Credentials) ServerOption() grpc.ServerOption {
	return grpc.Creds(&serverCreds{TransportCredentials: credentials.NewTLS(c.serverTLS())})
}

// serverCreds are the embedded credentials (TLS or plain) on network
// connections; an in-process connection is plain and names its caller in
// its first bytes (DialInProcess).
type serverCreds struct {
	credentials.TransportCredentials
}

func (s *serverCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if conn.LocalAddr().Network() == InProcessNetwork {
		caller, err := readInProcessCaller(conn)
		if err != nil {
			return nil, nil, err
		}
		return conn, inProcessInfo{caller: caller}, nil
	}
	return s.TransportCredentials.ServerHandshake(conn)
}

func (s *serverCreds) Clone() credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: s.TransportCredentials.Clone()}
}

// maxCallerName bounds an in-process caller's name (one length byte).
const maxCallerName = 255

// readInProcessCaller reads the caller's name DialInProcess writes first:
// a length byte, then the name.
func readInProcessCaller(conn net.Conn) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil {
		return "", fmt.Errorf("in-process caller name: %w", err)
	}
	name := make([]byte, n[0])
	if _, err := io.ReadFull(conn, name); err != nil {
		return "", fmt.Errorf("in-process caller name: %w", err)
	}
	return string(name), nil
}

// inProcessInfo is an in-process connection's AuthInfo: the caller's name.
type inProcessInfo struct {
	credentials.CommonAuthInfo
	caller string
}

func (inProcessInfo) AuthType() string { return "in-process" }

// DialTLS is Dial with this process's certificate (creds nil: plain, as
// Dial). The server's certificate must name the address's host.
func DialTLS(addr string, creds *Credentials) (*grpc.ClientConn, error) {
	if creds == nil {
		return dial(addr)
	}
	return dial(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.clientTLS())))
}

// Caller is who made a call: the names of its client certificate (its
// subject's common name and DNS names), or a service of this process with
// the name it dialled as (DialInProcess). Without mutual TLS a call from
// another process has no names.
type Caller struct {
	InProcess bool
	Names     []string
}

// CallerOf returns the caller of a call.
func CallerOf(ctx context.Context) Caller {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}
	}
	if p.Addr != nil && p.Addr.Network() == InProcessNetwork {
		c := Caller{InProcess: true}
		if info, ok := p.AuthInfo.(inProcessInfo); ok && info.caller != "" {
			c.Names = []string{info.caller}
		}
		return c
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Caller{}
	}
	leaf := info.State.VerifiedChains[0][0]
	names := slices.Clone(leaf.DNSNames)
	if cn := leaf.Subject.CommonName; cn != "" {
		names = append(names, cn)
	}
	return Caller{Names: names}
}

// AnyCaller in a Policy admits every caller with a valid certificate.
const AnyCaller = "*"

// Policy says which callers may call what: the key is a gRPC service's
// full name ("myelin.keyserver.v1.KeyService") or one method's full name
// ("/myelin.keyserver.v1.KeyService/SignJSON", which takes precedence),
// the value the certificate names admitted. What no key covers is
// refused; in-process calls are always admitted.
type Policy map[string][]string

func (p Policy) allows(fullMethod string, c Caller) bool {
	if c.InProcess {
		return true
	}
	allowed, ok := p[fullMethod]
	if !ok {
		svc, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
		allowed = p[svc]
	}
	return c.OneOf(allowed)
}

// OneOf reports whether the caller bears one of the names (AnyCaller:
// any name at all), by its certificate or, in-process, by the name it
// dialled as. A handler checks with it who may ask for what one RPC
// offers beyond what the Policy admits to.
func (c Caller) OneOf(names []string) bool {
	for _, a := range names {
		if a == AnyCaller && len(c.Names) > 0 || slices.Contains(c.Names, a) {
			return true
		}
	}
	return false
}

func (p Policy) check(ctx context.Context, fullMethod string) error {
	c := CallerOf(ctx)
	if p.allows(fullMethod, c) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "%s: caller %v is not allowed", fullMethod, c.Names)
}

// ServerOptions are the interceptors that enforce the policy.
func (p Policy) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := p.check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := p.check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// RootCAs is the CA pool certificates are checked against.
func (c *Credentials) RootCAs() *x509.CertPool { return c.pool }
