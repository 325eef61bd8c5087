package presence

import (
	"errors"
	"time"
)

// Config is the presence service's own configuration (root key: presence).
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxConns bounds the PostgreSQL pool.
	MaxConns int32 `yaml:"max_conns"`
	// IdleTimeout: an online user with no sync and no activity for this
	// long becomes unavailable.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// OfflineTimeout: a user with no sync and no activity for this long
	// becomes offline.
	OfflineTimeout time.Duration `yaml:"offline_timeout"`
	// DefaultTypingTimeout applies when a client starts typing without a
	// timeout; MaxTypingTimeout caps the one it asks for.
	DefaultTypingTimeout time.Duration `yaml:"default_typing_timeout"`
	MaxTypingTimeout     time.Duration `yaml:"max_typing_timeout"`
	// ConsumerName is the durable JetStream consumer of room events that
	// keeps the service's membership table.
	ConsumerName string `yaml:"consumer_name"`

	// Clock drives the idle and typing timers. Nil is the system clock;
	// tests pass a ManualClock. Not configurable from YAML.
	Clock Clock `yaml:"-"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxConns:             8,
		IdleTimeout:          5 * time.Minute,
		OfflineTimeout:       30 * time.Minute,
		DefaultTypingTimeout: 30 * time.Second,
		MaxTypingTimeout:     5 * time.Minute,
		ConsumerName:         "presence-memberships",
	}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.MaxConns < 2 {
		errs = append(errs, errors.New("max_conns must be at least 2"))
	}
	if c.IdleTimeout <= 0 || c.OfflineTimeout <= c.IdleTimeout {
		errs = append(errs, errors.New("need 0 < idle_timeout < offline_timeout"))
	}
	if c.DefaultTypingTimeout <= 0 || c.MaxTypingTimeout < c.DefaultTypingTimeout {
		errs = append(errs, errors.New("need 0 < default_typing_timeout <= max_typing_timeout"))
	}
	if c.ConsumerName == "" {
		errs = append(errs, errors.New("consumer_name must be set"))
	}
	return errors.Join(errs...)
}
