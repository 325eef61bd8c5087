package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pipeTx is a write transaction that costs no round trip of its own: BEGIN
// goes out with its first statement and COMMIT with its last batch
// (commitWith). The room-event consumer's transaction is on the path of
// every send (the sender waits for the copy) and of every /sync wake-up,
// so each round trip it saves is one less wait for the database to be
// scheduled, and on a busy machine that is the largest part of a round
// trip. It offers what querier offers, so the store's helpers and
// Reader run on it unchanged.
type pipeTx struct {
	conn  *pgxpool.Conn
	begun bool
	done  bool
}

var _ querier = (*pipeTx)(nil)

// errCommitRolledBack is a COMMIT that PostgreSQL answered with ROLLBACK:
// an earlier statement of the transaction had failed.
var errCommitRolledBack = errors.New("commit rolled back")

// beginPipelined acquires a connection for a transaction that has not
// sent BEGIN yet.
func (s *Store) beginPipelined(ctx context.Context) (*pipeTx, error) {
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return &pipeTx{conn: conn}, nil
}

// withBegin puts BEGIN in front of b when the transaction has not begun;
// it reports whether it did (the first result is then BEGIN's).
func (t *pipeTx) withBegin(b *pgx.Batch) bool {
	if t.begun {
		return false
	}
	t.begun = true
	b.QueuedQueries = append([]*pgx.QueuedQuery{{SQL: "BEGIN"}}, b.QueuedQueries...)
	return true
}

// SendBatch sends b (after BEGIN, in the same round trip, when it is the
// transaction's first statement). The results are b's own, whichever way
// the caller reads them.
func (t *pipeTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if !t.withBegin(b) {
		return t.conn.SendBatch(ctx, b)
	}
	br := t.conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		return failedBatch{br: br, err: fmt.Errorf("begin: %w", err)}
	}
	return br
}

// Exec runs one statement (with BEGIN first, in one round trip, when it
// is the transaction's first).
func (t *pipeTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.begun {
		return t.conn.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.SendBatch(ctx, b)
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// Query runs one query (with BEGIN first, in one round trip, when it is
// the transaction's first).
func (t *pipeTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.begun {
		return t.conn.Query(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.SendBatch(ctx, b)
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

// QueryRow is Query for one row.
func (t *pipeTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.begun {
		return t.conn.QueryRow(ctx, sql, args...)
	}
	rows, err := t.Query(ctx, sql, args...)
	return &pipeRow{rows: rows, err: err}
}

// commitWith sends b and COMMIT in one round trip (b may be empty) and
// releases the connection. An error of any statement in b, or a COMMIT
// answered with ROLLBACK, fails it: nothing of the transaction is kept.
func (t *pipeTx) commitWith(ctx context.Context, b *pgx.Batch) error {
	if b == nil {
		b = &pgx.Batch{}
	}
	if !t.begun && b.Len() == 0 {
		t.release(ctx)
		return nil
	}
	b.Queue("COMMIT").Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" {
			return errCommitRolledBack
		}
		return nil
	})
	err := t.SendBatch(ctx, b).Close()
	t.done = err == nil
	t.release(ctx)
	return err
}

// release rolls back what is not committed (a connection in a failed or
// open transaction is closed by the pool rather than reused) and returns
// the connection to the pool. It may be called more than once.
func (t *pipeTx) release(ctx context.Context) {
	if t.conn == nil {
		return
	}
	if t.begun && !t.done {
		if _, err := t.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); err != nil {
			// The connection's state is unknown: do not reuse it.
			_ = t.conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}
	t.conn.Release()
	t.conn = nil
}

// failedBatch is a batch whose BEGIN failed: every result is that error.
type failedBatch struct {
	br  pgx.BatchResults
	err error
}

func (f failedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, f.err }
func (f failedBatch) Query() (pgx.Rows, error)         { return nil, f.err }
func (f failedBatch) QueryRow() pgx.Row                { return &pipeRow{err: f.err} }
func (f failedBatch) Tx() pgx.Tx                       { return nil }
func (f failedBatch) Close() error {
	_ = f.br.Close()
	return f.err
}

// batchRows are the rows of a one-query batch; closing them closes the
// batch.
type batchRows struct {
	pgx.Rows
	br       pgx.BatchResults
	closed   bool
	closeErr error
}

func (r *batchRows) Close() {
	r.Rows.Close()
	if !r.closed {
		r.closed = true
		r.closeErr = r.br.Close()
	}
}

func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.closeErr
}

// pipeRow is QueryRow over pipeTx.Query.
type pipeRow struct {
	rows pgx.Rows
	err  error
}

func (r *pipeRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// inPipeTx runs f in a pipelined transaction and commits what it returns
// to send last together with COMMIT; f's error rolls it back.
func (s *Store) inPipeTx(ctx context.Context, f func(tx *pipeTx) (*pgx.Batch, error)) error {
	tx, err := s.beginPipelined(ctx)
	if err != nil {
		return err
	}
	defer tx.release(ctx)
	last, err := f(tx)
	if err != nil {
		return err
	}
	if err := tx.commitWith(ctx, last); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
