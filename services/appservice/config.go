package appservice

import (
	"errors"
	"time"
)

// Config is the appservice service's configuration (root key:
// appservice). ConfigFiles is read by every process at start (the
// client-API needs the registrations too); the rest is this service's.
type Config struct {
	// ConfigFiles are the registration files (YAML), one per application
	// service. A bad file refuses the start.
	ConfigFiles []string `yaml:"config_files"`
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxConns bounds the PostgreSQL pool.
	MaxConns int32 `yaml:"max_conns"`
	// ConsumerPrefix names the durable JetStream consumers:
	// <prefix>-rooms and <prefix>-ephemeral.
	ConsumerPrefix string `yaml:"consumer_prefix"`
	// BackoffMin is the wait after an appservice's first failed
	// transaction; each further failure doubles it, up to BackoffMax.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// RequestTimeout bounds one transaction's PUT.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// QueryTimeout bounds a user or alias query, its retries included,
	// and each third-party lookup and ping.
	QueryTimeout time.Duration `yaml:"query_timeout"`
	// MaxEventsPerTxn bounds the events (and, apart, the ephemeral items)
	// of one transaction.
	MaxEventsPerTxn int `yaml:"max_events_per_txn"`
	// AdminToken guards GET /_myelin/admin/appservices (Authorization:
	// Bearer <admin_token>). Empty (the default) turns the endpoint off;
	// the same listing is on the gRPC API (ListAppservices) and the
	// per-appservice gauges on /metrics.
	AdminToken string `yaml:"admin_token"`
	// LeaderRetry is how often a replica tries again to take the
	// consuming lock or an appservice's pushing lock held by another.
	LeaderRetry time.Duration `yaml:"leader_retry"`
	// RoomCacheSize bounds the rooms whose room-wide appservice interest
	// the rooms consumer keeps in memory (recomputed from the room copy
	// when a room's members or aliases change).
	RoomCacheSize int `yaml:"room_cache_size"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxConns:        8,
		ConsumerPrefix:  "appservice",
		BackoffMin:      time.Second,
		BackoffMax:      5 * time.Minute,
		RequestTimeout:  30 * time.Second,
		QueryTimeout:    10 * time.Second,
		MaxEventsPerTxn: 100,
		LeaderRetry:     5 * time.Second,
		RoomCacheSize:   10000,
	}
}

// Validate checks the settings (the registration files are checked when
// the process loads them).
func (c Config) Validate() error {
	var errs []error
	if c.MaxConns < 4 {
		errs = append(errs, errors.New("max_conns must be at least 4 (the two consumers and the pushers share the pool)"))
	}
	if c.ConsumerPrefix == "" {
		errs = append(errs, errors.New("consumer_prefix must be set"))
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, errors.New("need 0 < backoff_min <= backoff_max"))
	}
	if c.RequestTimeout <= 0 || c.QueryTimeout <= 0 || c.LeaderRetry <= 0 {
		errs = append(errs, errors.New("request_timeout, query_timeout and leader_retry must be positive"))
	}
	if c.RoomCacheSize < 1 {
		errs = append(errs, errors.New("room_cache_size must be at least 1"))
	}
	if c.MaxEventsPerTxn < 1 {
		errs = append(errs, errors.New("max_events_per_txn must be at least 1"))
	}
	return errors.Join(errs...)
}
