package keyserver

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Config is the key-server's own configuration (root key: key_server).
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// KeyValidity is how long remote servers may cache our verify keys
	// (valid_until_ts in /_matrix/key/v2/server).
	KeyValidity time.Duration `yaml:"key_validity"`
	// MaxConns is the PostgreSQL pool size (every /sync asks for the
	// device's key counts and the device list changes).
	MaxConns int32 `yaml:"max_conns"`
	// KeyChangePollInterval is how often the key change publisher looks
	// for changes other key-server replicas committed (its own wake it
	// at once).
	KeyChangePollInterval time.Duration `yaml:"key_change_poll_interval"`
	// Notaries are the notary (perspective) servers asked for a server's
	// keys when the server itself does not give them, each with the verify
	// keys its answers must be signed with (Synapse's trusted_key_servers).
	Notaries []Notary `yaml:"notaries"`
	// FetchRetryInterval: a server whose keys could not be fetched (it
	// could not be reached, directly or through a notary) is not asked
	// again for this long; one that answered without the key asked for,
	// not within 10 s (or this, if shorter). The cache answers meanwhile.
	FetchRetryInterval time.Duration `yaml:"fetch_retry_interval"`
}

// Notary is one trusted notary server.
type Notary struct {
	ServerName string `yaml:"server_name"`
	// VerifyKeys maps key IDs ("ed25519:auto") to unpadded base64 ed25519
	// public keys.
	VerifyKeys map[string]string `yaml:"verify_keys"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{KeyValidity: 24 * time.Hour, FetchRetryInterval: time.Minute, MaxConns: 8, KeyChangePollInterval: time.Second}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.KeyValidity < time.Minute {
		errs = append(errs, errors.New("key_validity must be at least 1m"))
	}
	if c.MaxConns < 2 {
		errs = append(errs, errors.New("max_conns must be at least 2"))
	}
	if c.KeyChangePollInterval <= 0 {
		errs = append(errs, errors.New("key_change_poll_interval must be positive"))
	}
	if c.FetchRetryInterval < 0 {
		errs = append(errs, errors.New("fetch_retry_interval must not be negative"))
	}
	for _, n := range c.Notaries {
		if _, err := n.publicKeys(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// publicKeys decodes the notary's verify keys.
func (n Notary) publicKeys() (map[string][]byte, error) {
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(n.ServerName)); !ok {
		return nil, fmt.Errorf("notaries: %q is not a server name", n.ServerName)
	}
	if len(n.VerifyKeys) == 0 {
		return nil, fmt.Errorf("notaries: %s: verify_keys must name at least one key", n.ServerName)
	}
	out := map[string][]byte{}
	for id, b64 := range n.VerifyKeys {
		if !strings.HasPrefix(id, "ed25519:") {
			return nil, fmt.Errorf("notaries: %s: key ID %q is not an ed25519 key", n.ServerName, id)
		}
		key, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(b64, "="))
		if err != nil || len(key) != 32 {
			return nil, fmt.Errorf("notaries: %s: %s is not a base64 ed25519 public key", n.ServerName, id)
		}
		out[id] = key
	}
	return out, nil
}
