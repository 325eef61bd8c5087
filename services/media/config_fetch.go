package media

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// URLPreviewConfig configures URL previews: the server fetches the page
// (and its og:image) a user asks about.
type URLPreviewConfig struct {
	// Enabled serves GET /media/preview_url. Off by default: a preview
	// makes this server fetch whatever URL a user names (the sites see
	// the server's address, and URLs from encrypted rooms reach it), which
	// an operator should choose; off, the endpoint answers 403.
	Enabled bool `yaml:"enabled"`
	// AllowedNetworks (CIDRs) may be fetched from although they are not
	// public. Every other private, loopback, link-local or reserved
	// address is refused, checked on the resolved IP at dial time (also
	// after redirects): the same rule as federation requests, with a list
	// of its own.
	AllowedNetworks []string `yaml:"allowed_networks"`
	// DeniedHosts are host names never fetched: each denies itself and
	// its subdomains ("example.com" denies "a.example.com"); IP literals
	// deny that address when it is the URL's host. Checked on redirects
	// too.
	DeniedHosts []string `yaml:"denied_hosts"`
	// MaxBytes caps what is read of one response: a page is previewed
	// from its first MaxBytes bytes, an image larger than that (or than
	// max_upload_size) is left out.
	MaxBytes int64 `yaml:"max_bytes"`
	// Timeout bounds each fetch (the page with its redirects; then its
	// image).
	Timeout time.Duration `yaml:"timeout"`
	// MaxRedirects is how many redirects a fetch follows.
	MaxRedirects int `yaml:"max_redirects"`
	// CacheTTL is how long a preview is served from the cache; it is also
	// the size of the ts buckets previews are cached by.
	CacheTTL time.Duration `yaml:"cache_ttl"`
}

func defaultURLPreviewConfig() URLPreviewConfig {
	return URLPreviewConfig{
		MaxBytes:     10 << 20,
		Timeout:      10 * time.Second,
		MaxRedirects: 5,
		CacheTTL:     time.Hour,
	}
}

func (c URLPreviewConfig) validate() error {
	var errs []error
	if c.MaxBytes < 1024 || c.Timeout <= 0 || c.MaxRedirects < 0 || c.CacheTTL < time.Second {
		errs = append(errs, errors.New("url_preview: max_bytes must be at least 1024, timeout positive, max_redirects >= 0, cache_ttl at least 1s"))
	}
	for _, n := range c.AllowedNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			errs = append(errs, fmt.Errorf("url_preview.allowed_networks: %q: %w", n, err))
		}
	}
	for _, h := range c.DeniedHosts {
		if strings.TrimSpace(h) == "" || strings.ContainsAny(h, "/ *") {
			errs = append(errs, fmt.Errorf("url_preview.denied_hosts: %q is not a host name", h))
		}
	}
	return errors.Join(errs...)
}

// RemoteConfig configures remote media: other servers' media that clients
// ask this server for, fetched over federation and kept.
type RemoteConfig struct {
	// Enabled fetches remote media (it also needs federation.enabled);
	// off, remote media is 404.
	Enabled bool `yaml:"enabled"`
	// MaxSize caps one remote file (or thumbnail); a larger one is 502
	// M_TOO_LARGE, as the spec asks, and nothing of it is kept.
	MaxSize int64 `yaml:"max_size"`
	// Timeout bounds one fetch, from the request to the last byte.
	Timeout time.Duration `yaml:"timeout"`
}

func defaultRemoteConfig() RemoteConfig {
	return RemoteConfig{Enabled: true, MaxSize: 50 << 20, Timeout: 5 * time.Minute}
}

func (c RemoteConfig) validate() error {
	if c.MaxSize < 1 || c.Timeout <= 0 {
		return errors.New("remote: max_size and timeout must be positive")
	}
	return nil
}
