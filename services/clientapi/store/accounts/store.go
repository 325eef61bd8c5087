// Package accounts holds the users domain's queries: accounts, devices,
// access, refresh and login tokens, registration tokens and nonces, UIA
// sessions and profiles. The tables are in the client-API's schema, which
// the store package creates and migrates; writes that touch other tables
// of a user (pushers, to-device messages, the key-server queue) happen in
// the same transactions, as before.
package accounts

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// The store package's errors, so that errors.Is works across both.
var (
	// ErrNotFound is returned when a row does not exist.
	ErrNotFound = store.ErrNotFound
	// ErrUserExists is returned when creating an account whose localpart is taken.
	ErrUserExists = store.ErrUserExists
)

// Store is the users domain's storage.
type Store struct {
	db *pgxpool.Pool
}

// New returns the users domain's queries on st's database.
func New(st *store.Store) *Store { return &Store{db: st.Pool()} }

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
