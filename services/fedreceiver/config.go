package fedreceiver

import (
	"errors"
	"time"
)

// Config is the federation-receiver's own configuration (root key:
// federation_receiver).
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxConns bounds the PostgreSQL pool.
	MaxConns int32 `yaml:"max_conns"`
	// FetchTimeout bounds each request the receiver makes to another
	// server while filling a gap (/get_missing_events, /state_ids,
	// /state, /event, /event_auth).
	FetchTimeout time.Duration `yaml:"fetch_timeout"`
	// GapBudget bounds all the fetching done for one PDU of a
	// transaction; TransactionBudget the processing of a whole
	// transaction (what is left unprocessed gets an error in the answer,
	// and the sender sends the events again later).
	GapBudget         time.Duration `yaml:"gap_budget"`
	TransactionBudget time.Duration `yaml:"transaction_budget"`
	// MissingEventsLimit is the limit of a /get_missing_events request.
	MissingEventsLimit int `yaml:"missing_events_limit"`
	// MaxStateFetch bounds the state and auth events one gap may fetch
	// (beyond it the PDU is refused rather than fetching a whole room).
	MaxStateFetch int `yaml:"max_state_fetch"`
	// TransactionWait is how long a request for a transaction that
	// another request (on this or another replica) is processing waits
	// for its answer; TransactionStale is when a claim on a transaction
	// that never finished (a replica died) may be taken over.
	TransactionWait  time.Duration `yaml:"transaction_wait"`
	TransactionStale time.Duration `yaml:"transaction_stale"`
	// TransactionRetention is how long answered transactions are kept
	// (a replay within it gets the same answer, without processing).
	TransactionRetention time.Duration `yaml:"transaction_retention"`
	// TypingTimeout is how long a remote user's m.typing lasts without a
	// refresh (the EDU carries none).
	TypingTimeout time.Duration `yaml:"typing_timeout"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxConns:             8,
		FetchTimeout:         10 * time.Second,
		GapBudget:            30 * time.Second,
		TransactionBudget:    2 * time.Minute,
		MissingEventsLimit:   20,
		MaxStateFetch:        5000,
		TransactionWait:      3 * time.Minute,
		TransactionStale:     5 * time.Minute,
		TransactionRetention: 24 * time.Hour,
		TypingTimeout:        30 * time.Second,
	}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if c.MaxConns < 2 {
		errs = append(errs, errors.New("max_conns must be at least 2"))
	}
	if c.FetchTimeout <= 0 || c.GapBudget < c.FetchTimeout || c.TransactionBudget < c.GapBudget {
		errs = append(errs, errors.New("need 0 < fetch_timeout <= gap_budget <= transaction_budget"))
	}
	if c.MissingEventsLimit < 1 || c.MissingEventsLimit > 100 {
		errs = append(errs, errors.New("missing_events_limit must be between 1 and 100"))
	}
	if c.MaxStateFetch < 1 {
		errs = append(errs, errors.New("max_state_fetch must be positive"))
	}
	if c.TransactionStale <= c.TransactionBudget {
		errs = append(errs, errors.New("transaction_stale must be longer than transaction_budget (a claim in progress must not look abandoned)"))
	}
	if c.TransactionWait <= 0 || c.TransactionRetention <= 0 || c.TypingTimeout <= 0 {
		errs = append(errs, errors.New("transaction_wait, transaction_retention and typing_timeout must be positive"))
	}
	return errors.Join(errs...)
}
