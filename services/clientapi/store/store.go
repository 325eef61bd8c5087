// Package store holds the client-API's PostgreSQL schema, its embedded
// migrations and the queries of everything but the users domain's tables
// (those are store/accounts'): the client-API's own copy of room events,
// current state and memberships that /sync and /messages read (Reader,
// Batch, Snapshot), account data, filters, push rules' inputs,
// notifications and unread counts, pushers, to-device messages, reports,
// erasures, the consumer lock and the hand-overs' old tables.
package store

import (
	"context"
	"embed"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the client-API owns.
const Schema = "clientapi"

var (
	// ErrNotFound is returned when a row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUserExists is returned when creating an account whose localpart is taken.
	ErrUserExists = errors.New("user already exists")
)

// Store is the client-API's storage.
type Store struct {
	db *pgxpool.Pool
}

// Open connects and migrates.
func Open(ctx context.Context, url string, maxConns int32) (*Store, error) {
	db, err := pgstore.Open(ctx, url, Schema, maxConns, migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

// Pool is the connection pool, for the per-domain stores (store/accounts).
func (s *Store) Pool() *pgxpool.Pool { return s.db }

// Close closes the pool.
func (s *Store) Close() { s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// querier is what both the pool and a transaction offer.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var (
	_ querier = (*pgxpool.Pool)(nil)
	_ querier = (pgx.Tx)(nil)
)
