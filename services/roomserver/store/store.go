// Package store holds the room-server's PostgreSQL schema and queries: rooms,
// events, state snapshots, client transaction IDs, the publish outbox and
// room aliases. It knows nothing about Matrix rules; the service decides.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the room-server owns.
const Schema = "roomserver"

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("not found")

// streamLockKey is the advisory lock that orders outbox positions.
const streamLockKey = "myelin.roomserver.stream"

// dbtx is what both a pool and a transaction offer.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Queries are the reads and writes; they run on the pool (Store) or inside
// a room write transaction (Tx).
type Queries struct {
	db dbtx
}

// Store is the room-server's storage.
type Store struct {
	*Queries
	pool *pgxpool.Pool
}

// Open connects to url and applies the embedded migrations.
func Open(ctx context.Context, url string, maxConns int32) (*Store, error) {
	pool, err := pgstore.Open(ctx, url, Schema, maxConns, migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &Store{Queries: &Queries{db: pool}, pool: pool}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Pool exposes the pool (tests count rows with it).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Tx is a write transaction on one room. It holds the room's transaction
// advisory lock, so writers of the same room (in this process or another
// replica) are serialized.
type Tx struct {
	*Queries
	tx pgx.Tx
}

// BeginRoom starts a write transaction and takes the room's advisory lock.
// The room need not exist yet: the lock is on the room ID.
func (s *Store) BeginRoom(ctx context.Context, roomID string) (*Tx, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('myelin.roomserver.room.' || $1, 0))`, roomID); err != nil {
		_ = tx.Rollback(ctx)
		return nil, fmt.Errorf("lock room: %w", err)
	}
	return &Tx{Queries: &Queries{db: tx}, tx: tx}, nil
}

// Commit commits the transaction.
func (t *Tx) Commit(ctx context.Context) error { return t.tx.Commit(ctx) }

// Rollback aborts the transaction; it is a no-op after Commit.
func (t *Tx) Rollback(ctx context.Context) { _ = t.tx.Rollback(context.WithoutCancel(ctx)) }

// LockStream takes the global stream lock. Call it right before writing
// outbox rows and committing: positions are then handed out in commit order.
func (t *Tx) LockStream(ctx context.Context) error {
	_, err := t.tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, streamLockKey)
	return err
}

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
