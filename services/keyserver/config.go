package keyserver

import (
	"errors"
	"time"
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
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{KeyValidity: 24 * time.Hour, MaxConns: 8, KeyChangePollInterval: time.Second}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.KeyValidity < time.Minute {
		return errors.New("key_validity must be at least 1m")
	}
	if c.MaxConns < 2 {
		return errors.New("max_conns must be at least 2")
	}
	if c.KeyChangePollInterval <= 0 {
		return errors.New("key_change_poll_interval must be positive")
	}
	return nil
}
