package federation

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Config is the process-wide federation configuration (root key:
// federation). The same settings serve the inbound listener and every
// outbound request this process makes to other homeservers.
type Config struct {
	// Enabled turns federation on: the HTTPS federation listener and
	// outbound requests. Off, no request leaves for another server.
	Enabled bool `yaml:"enabled"`
	// Listen is the federation listener's address (HTTPS).
	Listen string `yaml:"listen"`
	// TLSCertFile and TLSKeyFile are the federation listener's own
	// certificate (chain) and private key, PEM.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// TrustedCAFiles are extra CA certificates (PEM) trusted for outbound
	// TLS on top of the system roots.
	TrustedCAFiles []string `yaml:"trusted_ca_files"`
	// InsecureSkipTLSVerify turns off outbound certificate verification.
	// For tests and closed networks only; it is logged loudly.
	InsecureSkipTLSVerify bool `yaml:"insecure_skip_tls_verify"`
	// ServerNameMap maps server names to host:port, bypassing discovery
	// (tests, private networks). The certificate must still be valid for
	// the server name's host, and the address must pass the SSRF rule.
	ServerNameMap map[string]string `yaml:"server_name_map"`
	// AllowedPrivateNetworks (CIDRs) may be reached although they are not
	// public addresses. Every other private, loopback, link-local or
	// otherwise non-public address is refused, checked on the IP at dial
	// time.
	AllowedPrivateNetworks []string `yaml:"allowed_private_networks"`
}

// DefaultConfig is federation off, listening on :8448 once turned on.
func DefaultConfig() Config {
	return Config{Listen: ":8448"}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.Enabled {
		if c.Listen == "" {
			errs = append(errs, errors.New("listen must be set when federation is enabled"))
		}
		if c.TLSCertFile == "" || c.TLSKeyFile == "" {
			errs = append(errs, errors.New("tls_cert_file and tls_key_file must be set when federation is enabled (the listener serves HTTPS only)"))
		}
	}
	errs = append(errs, c.validateOutbound())
	return errors.Join(errs...)
}

// validateOutbound checks the settings of outbound requests.
func (c Config) validateOutbound() error {
	var errs []error
	if _, err := c.allowedPrefixes(); err != nil {
		errs = append(errs, err)
	}
	for name, addr := range c.ServerNameMap {
		if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(name)); !ok {
			errs = append(errs, fmt.Errorf("server_name_map: %q is not a server name", name))
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("server_name_map: %s: %q is not host:port", name, addr))
		}
	}
	return errors.Join(errs...)
}

func (c Config) allowedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, cidr := range c.AllowedPrivateNetworks {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("allowed_private_networks: %q: %w", cidr, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
