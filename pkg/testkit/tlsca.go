package testkit

import (
	"crypto/tls"
	"testing"

	"github.com/myelin-chat/myelin/pkg/devinfra"
)

// CA is a certificate authority made for one test: federation tests serve
// real HTTPS on loopback with certificates it issues and trust it through
// its CertFile (federation.trusted_ca_files), never through the system.
// It is devinfra.CA with its files in the test's temp directory and
// failures failing the test.
type CA struct {
	*devinfra.CA
}

// NewCA makes a fresh CA whose files live in t.TempDir().
func NewCA(t testing.TB) *CA {
	t.Helper()
	ca, err := devinfra.NewCA(t.TempDir(), "Myelin test CA "+t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return &CA{CA: ca}
}

// Issue makes a certificate (for servers and clients: gRPC mTLS uses both)
// for hosts (DNS names or IP literals; the first is also the common name) and
// returns the paths of its certificate and key files (PEM).
func (ca *CA) Issue(t testing.TB, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := ca.CA.Issue(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TLSConfig is a server configuration with a certificate for hosts.
func (ca *CA) TLSConfig(t testing.TB, hosts ...string) *tls.Config {
	t.Helper()
	cfg, err := ca.ServerTLS(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
