package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

// A snapshot is a read-only REPEATABLE READ transaction on one pooled
// connection. Its BEGIN is not sent on its own: it travels with the
// snapshot's first statement or batch. A reader may also end it with its
// last batch (Reader.SendLast), so a snapshot read in pipelined batches
// costs no round trips beyond the batches. Under load every round trip
// waits for both processes to be scheduled, so /sync, which runs a
// snapshot per response, pays for each one in latency.

const (
	beginSnapshot = `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`
)

// errSnapshotDone is returned for reads after a snapshot was ended.
var errSnapshotDone = errors.New("store: read after the snapshot ended")

type snapshotTx struct {
	conn  *pgxpool.Conn
	begun bool // BEGIN was sent
	ended bool // COMMIT was sent (SendLast)
}

// Snapshot runs fn with a Reader whose every query sees the same
// committed data (a read-only REPEATABLE READ transaction).
func (s *Store) Snapshot(ctx context.Context, fn func(Reader) error) error {
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	tx := &snapshotTx{conn: conn}
	err = fn(Reader{q: tx})
	if !tx.begun || tx.ended {
		return err
	}
	// A read-only transaction: COMMIT and ROLLBACK are alike.
	if _, cerr := conn.Exec(ctx, "COMMIT"); cerr != nil {
		// The connection's state is unknown: do not return it to the pool.
		conn.Conn().PgConn().Close(context.Background())
		if err == nil {
			err = cerr
		}
	}
	return err
}

// begin sends BEGIN on its own, for reads that are not batches.
func (t *snapshotTx) begin(ctx context.Context) error {
	if t.ended {
		return errSnapshotDone
	}
	if t.begun {
		return nil
	}
	if _, err := t.conn.Exec(ctx, beginSnapshot); err != nil {
		return err
	}
	t.begun = true
	return nil
}

func (t *snapshotTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.begin(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t *snapshotTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.conn.Query(ctx, sql, args...)
}

func (t *snapshotTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.begin(ctx); err != nil {
		return pgstore.ErrRow{Err: err}
	}
	return t.conn.QueryRow(ctx, sql, args...)
}

func (t *snapshotTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.send(ctx, b, false)
}

// send sends b with BEGIN in front when the snapshot has not begun, and
// COMMIT behind when last. The caller reads b's results as usual.
func (t *snapshotTx) send(ctx context.Context, b *pgx.Batch, last bool) pgx.BatchResults {
	if t.ended {
		return pgstore.ErrBatch{Err: errSnapshotDone}
	}
	prefixed := t.begun
	if !t.begun || last {
		full := &pgx.Batch{}
		if !t.begun {
			full.Queue(beginSnapshot)
		}
		full.QueuedQueries = append(full.QueuedQueries, b.QueuedQueries...)
		if last {
			full.Queue("COMMIT")
		}
		b = full
	}
	br := t.conn.SendBatch(ctx, b)
	t.begun, t.ended = true, last
	if !prefixed {
		// Read BEGIN's result, so the caller sees only its own.
		if _, err := br.Exec(); err != nil {
			br.Close()
			return pgstore.ErrBatch{Err: err}
		}
	}
	return br
}

// Batch holds reads to be sent in one round trip (Reader.Send). Each
// read fills the result it was given when the batch is sent without
// error; a read that finds nothing leaves its result as it was.
type Batch struct{ b pgx.Batch }

// SendLast sends b in one round trip. In a snapshot it also ends the
// transaction, so the Reader must not be used afterwards; outside one it
// is Send.
func (r Reader) SendLast(ctx context.Context, b *Batch) error {
	if t, ok := r.q.(*snapshotTx); ok {
		err := t.send(ctx, &b.b, true).Close()
		if err != nil && !errors.Is(err, errSnapshotDone) {
			t.ended = false // COMMIT did not run: Snapshot ends the transaction
		}
		return err
	}
	return r.Send(ctx, b)
}

// Send sends b in one round trip.
func (r Reader) Send(ctx context.Context, b *Batch) error {
	if len(b.b.QueuedQueries) == 0 {
		return nil
	}
	return r.q.SendBatch(ctx, &b.b).Close()
}
