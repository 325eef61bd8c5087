// Package store holds the federation-receiver's PostgreSQL schema and
// queries: received transactions (idempotency across replicas).
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the federation-receiver owns.
const Schema = "fedreceiver"

// Store is the federation-receiver's storage.
type Store struct {
	db *pgxpool.Pool
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

// Claim is the outcome of ClaimTransaction.
type Claim struct {
	// Claimed: the caller processes the transaction (a new one, or one
	// whose claim went stale).
	Claimed bool
	// Response is the stored answer of a transaction processed already.
	Response []byte
}

// ClaimTransaction claims (origin, txnID) for instance, or returns the
// stored response; neither means another claim is in progress. A claim
// older than staleAfter without a response is taken over.
func (s *Store) ClaimTransaction(ctx context.Context, origin, txnID, instance string, staleAfter time.Duration) (Claim, error) {
	var ok bool
	// The claim's and the answer's commits do not wait for the WAL flush
	// (set_config local to the statement's implicit transaction, as the
	// room-server's publish watermark): two flushes fewer in every /send.
	// Other replicas see the row at once all the same. What an operating
	// system crash can lose is the last moment's claims and answers (every
	// later durable commit, the room-server's of the transaction's events
	// among them, flushes them first): such a transaction is processed
	// again when it comes back, and its inputs are idempotent.
	err := s.db.QueryRow(ctx, `INSERT INTO transactions (origin, txn_id, claimed_by)
		SELECT $1::text, $2::text, $3::text WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL
		ON CONFLICT (origin, txn_id) DO NOTHING RETURNING true`, origin, txnID, instance).Scan(&ok)
	if err == nil {
		return Claim{Claimed: true}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Claim{}, fmt.Errorf("claim transaction: %w", err)
	}
	var resp []byte
	err = s.db.QueryRow(ctx, `UPDATE transactions SET claimed_by = $3, claimed_at = now()
		WHERE origin = $1 AND txn_id = $2 AND response IS NULL AND claimed_at < now() - make_interval(secs => $4)
		RETURNING true`, origin, txnID, instance, staleAfter.Seconds()).Scan(&ok)
	if err == nil {
		return Claim{Claimed: true}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Claim{}, fmt.Errorf("take over transaction: %w", err)
	}
	err = s.db.QueryRow(ctx, `SELECT response FROM transactions WHERE origin = $1 AND txn_id = $2`, origin, txnID).Scan(&resp)
	if errors.Is(err, pgx.ErrNoRows) {
		// Released between the two statements: try again.
		return s.ClaimTransaction(ctx, origin, txnID, instance, staleAfter)
	}
	if err != nil {
		return Claim{}, fmt.Errorf("read transaction: %w", err)
	}
	return Claim{Response: resp}, nil
}

// FinishTransaction stores the response of a transaction claimed by
// instance. False when the claim was taken over meanwhile (the other
// claimer's answer counts).
func (s *Store) FinishTransaction(ctx context.Context, origin, txnID, instance string, response []byte) (bool, error) {
	tag, err := s.db.Exec(ctx, `UPDATE transactions SET response = $4, done_at = now()
		WHERE origin = $1 AND txn_id = $2 AND claimed_by = $3 AND response IS NULL
			AND set_config('synchronous_commit', 'off', true) IS NOT NULL`, origin, txnID, instance, response)
	if err != nil {
		return false, fmt.Errorf("finish transaction: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// ReleaseTransaction drops instance's unanswered claim, so that the
// transaction is processed again when it comes back.
func (s *Store) ReleaseTransaction(ctx context.Context, origin, txnID, instance string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM transactions WHERE origin = $1 AND txn_id = $2 AND claimed_by = $3 AND response IS NULL`,
		origin, txnID, instance)
	if err != nil {
		return fmt.Errorf("release transaction: %w", err)
	}
	return nil
}

// PruneTransactions deletes answers older than retention, at most limit
// rows; it returns how many it deleted.
func (s *Store) PruneTransactions(ctx context.Context, retention time.Duration, limit int) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM transactions WHERE ctid IN (
		SELECT ctid FROM transactions WHERE done_at < now() - make_interval(secs => $1) LIMIT $2)`, retention.Seconds(), limit)
	if err != nil {
		return 0, fmt.Errorf("prune transactions: %w", err)
	}
	return tag.RowsAffected(), nil
}

// TransactionCount counts stored transactions of origin (tests).
func (s *Store) TransactionCount(ctx context.Context, origin string) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT count(*) FROM transactions WHERE origin = $1`, origin).Scan(&n)
	return n, err
}
