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
	id, seed, err := newKey()
	if err != nil {
		return Key{}, err
	}
	// The partial unique index makes a racing second insert fail; then the
	// winner's key is read back.
	_, err = s.db.Exec(ctx, `INSERT INTO signing_keys (key_id, seed) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, seed)
	if err != nil {
		return Key{}, fmt.Errorf("store signing key: %w", err)
	}
	return s.currentKey(ctx)
}

// newKey makes a fresh ed25519 seed and a random key ID for it.
func newKey() (id string, seed []byte, err error) {
	seed = make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return "", nil, err
	}
	idBytes := make([]byte, 4)
	if _, err := rand.Read(idBytes); err != nil {
		return "", nil, err
	}
	return "ed25519:a_" + base64.RawURLEncoding.EncodeToString(idBytes), seed, nil
}

// ErrNoCurrentKey: there is no current signing key to rotate.
var ErrNoCurrentKey = errors.New("no current signing key")

// RotateKey expires the current signing key (it becomes an old key whose
// expired_at is expiredAt) and makes a new current key, in one
// transaction. The row lock on the current key serializes concurrent
// rotations.
func (s *Store) RotateKey(ctx context.Context, expiredAt time.Time) (old, current Key, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var seed []byte
		err := tx.QueryRow(ctx, `SELECT key_id, seed FROM signing_keys WHERE expired_at IS NULL FOR UPDATE`).Scan(&old.ID, &seed)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoCurrentKey
		} else if err != nil {
			return err
		}
		old.Private = ed25519.NewKeyFromSeed(seed)
		var expired time.Time
		if err := tx.QueryRow(ctx, `UPDATE signing_keys SET expired_at = $2 WHERE key_id = $1 RETURNING expired_at`, old.ID, expiredAt).Scan(&expired); err != nil {
			return err
		}
		old.ExpiredAt = &expired
		for {
			id, newSeed, err := newKey()
			if err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `INSERT INTO signing_keys (key_id, seed) VALUES ($1, $2) ON CONFLICT (key_id) DO NOTHING`, id, newSeed)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 1 {
				current = Key{ID: id, Private: ed25519.NewKeyFromSeed(newSeed)}
				return nil
			}
		}
	})
	return old, current, err
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

// RemoteKey is a verify key of another server, as cached.
type RemoteKey struct {
	ServerName string
	KeyID      string
	PublicKey  []byte
	// ValidUntilTS is set for a current key (ms); 0 for an old key.
	ValidUntilTS int64
	// ExpiredTS is set for an old key (ms); 0 for a current key.
	ExpiredTS int64
	FetchedAt time.Time
}

// ServerKeys returns the cached keys of the servers named.
func (s *Store) ServerKeys(ctx context.Context, servers []string) ([]RemoteKey, error) {
	rows, err := s.db.Query(ctx, `SELECT server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_at
		FROM server_keys WHERE server_name = ANY($1)`, servers)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (RemoteKey, error) {
		var k RemoteKey
		err := row.Scan(&k.ServerName, &k.KeyID, &k.PublicKey, &k.ValidUntilTS, &k.ExpiredTS, &k.FetchedAt)
		return k, err
	})
}

// StoreServerKeys caches fetched keys. An old key stays old; a current key
// is replaced by news that it expired or by a later valid_until_ts (so an
// older response replayed by a notary cannot shorten or revive anything).
func (s *Store) StoreServerKeys(ctx context.Context, keys []RemoteKey) error {
	if len(keys) == 0 {
		return nil
	}
	batch := &pgx.Batch{}
	for _, k := range keys {
		batch.Queue(`INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (server_name, key_id) DO UPDATE SET
				public_key = EXCLUDED.public_key, valid_until_ts = EXCLUDED.valid_until_ts,
				expired_ts = EXCLUDED.expired_ts, fetched_at = now()
			WHERE server_keys.expired_ts = 0
				AND (EXCLUDED.expired_ts <> 0 OR EXCLUDED.valid_until_ts >= server_keys.valid_until_ts)`,
			k.ServerName, k.KeyID, k.PublicKey, k.ValidUntilTS, k.ExpiredTS)
	}
	return s.db.SendBatch(ctx, batch).Close()
}

// KeyResponse is a server's key response as its origin signed it.
type KeyResponse struct {
	ServerName   string
	JSON         []byte
	ValidUntilTS int64
	FetchedAt    time.Time
}

// StoreKeyResponse keeps a server's key response unless a stored one is
// valid for longer.
func (s *Store) StoreKeyResponse(ctx context.Context, r KeyResponse) error {
	_, err := s.db.Exec(ctx, `INSERT INTO server_key_responses (server_name, response, valid_until_ts) VALUES ($1, $2, $3)
		ON CONFLICT (server_name) DO UPDATE SET response = EXCLUDED.response, valid_until_ts = EXCLUDED.valid_until_ts, fetched_at = now()
		WHERE EXCLUDED.valid_until_ts >= server_key_responses.valid_until_ts`, r.ServerName, r.JSON, r.ValidUntilTS)
	return err
}

// KeyResponses returns the stored key responses of the servers named.
func (s *Store) KeyResponses(ctx context.Context, servers []string) (map[string]KeyResponse, error) {
	rows, err := s.db.Query(ctx, `SELECT server_name, response, valid_until_ts, fetched_at FROM server_key_responses WHERE server_name = ANY($1)`, servers)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (KeyResponse, error) {
		var r KeyResponse
		err := row.Scan(&r.ServerName, &r.JSON, &r.ValidUntilTS, &r.FetchedAt)
		return r, err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]KeyResponse, len(list))
	for _, r := range list {
		out[r.ServerName] = r
	}
	return out, nil
}
