// Package store holds the presence service's PostgreSQL schema and queries:
// receipts, presence, the membership copy and the ephemeral stream
// position.
package store

import (
	"context"
	"embed"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the presence service owns.
const Schema = "presence"

// ErrNotFound: no such row.
var ErrNotFound = errors.New("not found")

// Store is the presence service's storage.
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

// Close closes the pool.
func (s *Store) Close() { s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// Position is the last position handed out by the stream sequence (0 when
// none was). Positions are only handed out by the one writer, under its
// lock, so at start every allocated position is also committed.
func (s *Store) Position(ctx context.Context) (int64, error) {
	var last int64
	var called bool
	if err := s.db.QueryRow(ctx, `SELECT last_value, is_called FROM stream_pos`).Scan(&last, &called); err != nil {
		return 0, err
	}
	if !called {
		return 0, nil
	}
	return last, nil
}

// NextPosition allocates a position (for changes that are not stored, such
// as typing).
func (s *Store) NextPosition(ctx context.Context) (int64, error) {
	var p int64
	err := s.db.QueryRow(ctx, `SELECT nextval('stream_pos')`).Scan(&p)
	return p, err
}

// withPosition runs fn in a transaction with a freshly allocated position.
func (s *Store) withPosition(ctx context.Context, fn func(tx pgx.Tx, pos int64) error) (int64, error) {
	var pos int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT nextval('stream_pos')`).Scan(&pos); err != nil {
			return err
		}
		return fn(tx, pos)
	})
	return pos, err
}
