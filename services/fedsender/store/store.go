// Package store holds the federation sender's PostgreSQL schema and
// queries: the per-destination queues of PDUs and EDUs, each destination's
// retry state, the membership copy and the stream consumers' positions.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the federation sender owns.
const Schema = "fedsender"

// ErrNotFound: no such row.
var ErrNotFound = errors.New("not found")

// Store is the federation sender's storage.
type Store struct {
	db    *pgxpool.Pool
	token string
}

// Open connects and migrates.
func Open(ctx context.Context, url string, maxConns int32) (*Store, error) {
	db, err := pgstore.Open(ctx, withIdleTimeout(url), Schema, maxConns, migrations, "migrations")
	if err != nil {
		return nil, err
	}
	s := &Store{db: db}
	if err := db.QueryRow(ctx, `SELECT token FROM instance`).Scan(&s.token); err != nil {
		db.Close()
		return nil, fmt.Errorf("instance token: %w", err)
	}
	return s, nil
}

// idleInTxTimeout bounds how long a session may sit idle inside a
// transaction. A replica frozen mid-transaction (SIGSTOP, a long pause)
// would otherwise hold its row locks (a destination's fence, a consumer's
// position) until it resumes, stalling the replica that took its leases;
// PostgreSQL ends such a session instead, and its commit then fails.
const idleInTxTimeout = "5000" // ms

// withIdleTimeout sets idle_in_transaction_session_timeout on the
// sessions of a URL or keyword/value connection string (unless it sets
// one).
func withIdleTimeout(url string) string {
	const param = "idle_in_transaction_session_timeout"
	switch {
	case strings.Contains(url, param):
		return url
	case strings.Contains(url, "://") && strings.Contains(url, "?"):
		return url + "&" + param + "=" + idleInTxTimeout
	case strings.Contains(url, "://"):
		return url + "?" + param + "=" + idleInTxTimeout
	default:
		return url + " " + param + "=" + idleInTxTimeout
	}
}

// Close closes the pool.
func (s *Store) Close() { s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// Pool is the connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.db }

// Tx is one transaction of a consumer: what it applies for one stream
// message commits together with the consumer's position.
type Tx struct {
	tx pgx.Tx
	// queued: the transaction queued PDUs or EDUs for sending.
	queued bool
}

// Apply runs fn for the message at streamSeq of consumer in one
// transaction and records the position. A message at or below the
// recorded position was applied already: fn is not run and applied is
// false. Consumers take their messages in stream order, so this makes
// every message count once.
func (s *Store) Apply(ctx context.Context, consumer string, streamSeq uint64, fn func(*Tx) error) (applied bool, err error) {
	return s.ApplyBatch(ctx, consumer, []uint64{streamSeq}, func(tx *Tx, _ int) error { return fn(tx) })
}

// ApplyBatch is Apply for a batch of messages (stream sequences seqs,
// ascending): fn(i) runs for each message above the recorded position, in
// order, all in one transaction, which records the last as the position;
// applied reports whether fn ran at all. One commit, and so one WAL
// flush, per batch instead of per message (#20).
func (s *Store) ApplyBatch(ctx context.Context, consumer string, seqs []uint64, fn func(tx *Tx, i int) error) (applied bool, err error) {
	if len(seqs) == 0 {
		return false, nil
	}
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var last int64
		err := tx.QueryRow(ctx, `SELECT stream_seq FROM consumer_positions WHERE consumer = $1 FOR UPDATE`, consumer).Scan(&last)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			last = 0
		case err != nil:
			return err
		}
		t := &Tx{tx: tx}
		for i, seq := range seqs {
			if int64(seq) <= last {
				continue
			}
			if err := fn(t, i); err != nil {
				return err
			}
			applied = true
		}
		if !applied {
			return nil
		}
		if !t.queued {
			// Nothing to send in the whole batch (other servers' events, most of a
			// federation ingest: the membership copy and the position
			// only): the commit does not wait for the WAL flush. A commit
			// lost to an operating system crash is applied again, since
			// the consumer restarts from the recorded position, and the
			// next durable commit flushes it anyway.
			if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO consumer_positions (consumer, stream_seq) VALUES ($1, $2)
			ON CONFLICT (consumer) DO UPDATE SET stream_seq = EXCLUDED.stream_seq`, consumer, int64(seqs[len(seqs)-1]))
		return err
	})
	if err != nil {
		applied = false
	}
	return applied, err
}

// Position is the last stream sequence a consumer applied (0: none).
func (s *Store) Position(ctx context.Context, consumer string) (int64, error) {
	var pos int64
	err := s.db.QueryRow(ctx, `SELECT stream_seq FROM consumer_positions WHERE consumer = $1`, consumer).Scan(&pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return pos, err
}
