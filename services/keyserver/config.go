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
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{KeyValidity: 24 * time.Hour}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.KeyValidity < time.Minute {
		return errors.New("key_validity must be at least 1m")
	}
	return nil
}
