package fedsender

import (
	"errors"
	"time"
)

// Config is the federation sender's own configuration (root key:
// federation_sender). The transport (discovery, TLS, the server-name map,
// the private-address rule) is the process-wide federation key.
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxConns bounds the PostgreSQL pool.
	MaxConns int32 `yaml:"max_conns"`
	// ConsumerPrefix names the durable JetStream consumers:
	// <prefix>-rooms, -ephemeral, -keys and -todevice.
	ConsumerPrefix string `yaml:"consumer_prefix"`
	// BackoffMin is the wait after a destination's first failure; each
	// further failure doubles it, up to BackoffMax.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// CatchUpAfter: a destination failing for this long switches to
	// catch-up: of its waiting PDUs only each room's newest is kept and
	// sent when it answers again (it fetches the rest with
	// /get_missing_events).
	CatchUpAfter time.Duration `yaml:"catch_up_after"`
	// MaxQueuedPDUs and MaxQueuedEDUs bound one destination's queue: past
	// the PDU bound the destination switches to catch-up (and then the
	// oldest are dropped); past the EDU bound the oldest EDUs are dropped.
	MaxQueuedPDUs int `yaml:"max_queued_pdus"`
	MaxQueuedEDUs int `yaml:"max_queued_edus"`
	// RequestTimeout bounds each outbound request (a transaction, a
	// query, one step of a join).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// LeaseTTL is how long a replica's heartbeat and its leases on
	// destinations last unrenewed (they are renewed every lease_ttl/4):
	// a replica that dies or is cut off loses its destinations to the
	// others about this long after, and a replica that joins gets its
	// share within a fifth of it.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxConns:       8,
		ConsumerPrefix: "fedsender",
		BackoffMin:     2 * time.Second,
		BackoffMax:     time.Hour,
		CatchUpAfter:   10 * time.Minute,
		MaxQueuedPDUs:  10000,
		MaxQueuedEDUs:  10000,
		RequestTimeout: time.Minute,
		LeaseTTL:       5 * time.Second,
	}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.MaxConns < 4 {
		errs = append(errs, errors.New("max_conns must be at least 4 (the consumers and the workers share it)"))
	}
	if c.ConsumerPrefix == "" {
		errs = append(errs, errors.New("consumer_prefix must be set"))
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, errors.New("need 0 < backoff_min <= backoff_max"))
	}
	if c.CatchUpAfter <= 0 {
		errs = append(errs, errors.New("catch_up_after must be positive"))
	}
	if c.MaxQueuedPDUs < maxPDUsPerTxn || c.MaxQueuedEDUs < maxEDUsPerTxn {
		errs = append(errs, errors.New("max_queued_pdus must be at least 50 and max_queued_edus at least 100"))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, errors.New("request_timeout must be positive"))
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL > time.Minute {
		errs = append(errs, errors.New("lease_ttl must be between 1s and 1m"))
	}
	return errors.Join(errs...)
}

// The spec's limits of one transaction.
const (
	maxPDUsPerTxn = 50
	maxEDUsPerTxn = 100
)
