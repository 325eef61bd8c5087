// Package store holds the key-server's PostgreSQL schema and queries.
package store

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the key-server owns.
const Schema = "keyserver"

// Store is the key-server's storage.
type Store struct {
	db *pgxpool.Pool
}

// Key is one signing key.
type Key struct {
	ID        string
	Private   ed25519.PrivateKey
	ExpiredAt *time.Time
}

// Open connects with a pool of maxConns connections and migrates.
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

// EnsureCurrentKey returns the current signing key, creating and storing a
// new one the first time. Concurrent starters agree on one key.
func (s *Store) EnsureCurrentKey(ctx context.Context) (Key, error) {
	if k, err := s.currentKey(ctx); err == nil {
		return k, nil
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return Key{}, err
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return Key{}, err
	}
	idBytes := make([]byte, 4)
	if _, err := rand.Read(idBytes); err != nil {
		return Key{}, err
	}
	id := "ed25519:a_" + base64.RawURLEncoding.EncodeToString(idBytes)
	// The partial unique index makes a racing second insert fail; then the
	// winner's key is read back.
	_, err := s.db.Exec(ctx, `INSERT INTO signing_keys (key_id, seed) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, seed)
	if err != nil {
		return Key{}, fmt.Errorf("store signing key: %w", err)
	}
	return s.currentKey(ctx)
}

func (s *Store) currentKey(ctx context.Context) (Key, error) {
	var k Key
	var seed []byte
	err := s.db.QueryRow(ctx, `SELECT key_id, seed FROM signing_keys WHERE expired_at IS NULL`).Scan(&k.ID, &seed)
	if err != nil {
		return Key{}, err
	}
	k.Private = ed25519.NewKeyFromSeed(seed)
	return k, nil
}

// OldKeys returns expired keys (public halves are published as old_verify_keys).
func (s *Store) OldKeys(ctx context.Context) ([]Key, error) {
	rows, err := s.db.Query(ctx, `SELECT key_id, seed, expired_at FROM signing_keys WHERE expired_at IS NOT NULL ORDER BY expired_at`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Key
	for rows.Next() {
		var k Key
		var seed []byte
		var exp time.Time
		if err := rows.Scan(&k.ID, &seed, &exp); err != nil {
			return nil, err
		}
		k.Private = ed25519.NewKeyFromSeed(seed)
		k.ExpiredAt = &exp
		out = append(out, k)
	}
	return out, rows.Err()
}
