// Package store holds the room-server's PostgreSQL schema and queries: rooms,
// events, state snapshots, client transaction IDs, the publish outbox and
// room aliases. It knows nothing about Matrix rules; the service decides.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"slices"

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

// dbtx is what both a pool and a transaction offer.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
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
//
// Round trips are what a send costs most, so Tx pipelines: BeginRoom sends
// BEGIN, the lock and the room row (and a client transaction lookup) in
// one round trip; writes whose results are not needed (Queue*) wait in a
// batch that goes out with the next read through the Tx or with COMMIT.
// Any read through the Tx first flushes the queued writes, so a Tx always
// reads its own writes.
type Tx struct {
	*Queries
	conn   *pipeConn
	roomID string
	room   Room
	// roomErr is ErrNotFound when the room did not exist at BeginRoom.
	roomErr error
	// TxnEventID is the event an earlier send of BeginRoom's client
	// transaction produced ("" when none, or when no transaction was asked).
	TxnEventID string
	// reservedNID is an event NID BeginRoom reserved (0 once taken).
	reservedNID int64
}

// TxnKey names a client transaction (SendEvent's idempotency key).
type TxnKey struct {
	Sender, DeviceID, TxnID string
}

// BeginRoom starts a write transaction, takes the room's advisory lock,
// reads the room row and reserves an event NID (ReservedNID), in one round
// trip; with txn it also looks up the event of that client transaction
// (Tx.TxnEventID). The room need not exist yet: the lock is on the room ID.
func (s *Store) BeginRoom(ctx context.Context, roomID string, txn *TxnKey) (*Tx, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	t := &Tx{conn: &pipeConn{conn: conn}, roomID: roomID}
	t.Queries = &Queries{db: t.conn}
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT pg_advisory_xact_lock(hashtextextended('myelin.roomserver.room.' || $1, 0))`, roomID)
	b.Queue(`SELECT `+roomColumns+` FROM rooms WHERE room_id = $1`, roomID).QueryRow(func(row pgx.Row) error {
		t.room, t.roomErr = scanRoom(row)
		if errors.Is(t.roomErr, ErrNotFound) {
			return nil
		}
		return t.roomErr
	})
	if txn != nil {
		b.Queue(`SELECT t.event_id FROM transactions t JOIN rooms r USING (room_nid)
			WHERE r.room_id = $1 AND t.sender = $2 AND t.device_id = $3 AND t.txn_id = $4`,
			roomID, txn.Sender, txn.DeviceID, txn.TxnID).QueryRow(func(row pgx.Row) error {
			return ignoreNotFound(row.Scan(&t.TxnEventID))
		})
	}
	b.Queue(nextNIDQuery).QueryRow(func(row pgx.Row) error {
		return row.Scan(&t.reservedNID)
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		t.Rollback(ctx)
		return nil, fmt.Errorf("begin and lock room: %w", err)
	}
	return t, nil
}

// nextNIDQuery reserves an event NID.
const nextNIDQuery = `SELECT nextval(pg_get_serial_sequence('events', 'event_nid'))`

// ReservedNID returns the event NID BeginRoom reserved, once; later calls
// return false. (An unused reservation is a gap: NIDs have gaps anyway.)
func (t *Tx) ReservedNID() (int64, bool) {
	nid := t.reservedNID
	t.reservedNID = 0
	return nid, nid != 0
}

// Room returns the transaction's room as of BeginRoom and the Tx's own
// writes (InsertRoom, QueueUpdateRoom); other rooms are read.
func (t *Tx) Room(ctx context.Context, roomID string) (Room, error) {
	if roomID != t.roomID {
		return t.Queries.Room(ctx, roomID)
	}
	return t.room, t.roomErr
}

// InsertRoom adds the transaction's room.
func (t *Tx) InsertRoom(ctx context.Context, roomID, version string) (int64, error) {
	nid, err := t.Queries.InsertRoom(ctx, roomID, version)
	if err == nil && roomID == t.roomID {
		t.room, t.roomErr = Room{NID: nid, RoomID: roomID, Version: version}, nil
	}
	return nid, err
}

// QueueUpdateRoom sets the room's current state, forward extremities and
// depth (queued).
func (t *Tx) QueueUpdateRoom(nid, snapshotNID int64, extremities []int64, depth int64) {
	if extremities == nil {
		extremities = []int64{}
	}
	t.conn.queue(`UPDATE rooms SET state_snapshot_nid = $2, forward_extremities = $3, depth = $4 WHERE room_nid = $1`,
		nid, snapshotNID, extremities, depth)
	if nid == t.room.NID {
		t.room.SnapshotNID, t.room.Extremities, t.room.Depth = snapshotNID, slices.Clone(extremities), depth
	}
}

// QueueNewEvent stores an event that is not stored yet under e.NID (from
// LookupInput; queued). If the event ID exists after all, the commit
// fails.
func (t *Tx) QueueNewEvent(e Event) {
	args := eventArgs(e)
	t.conn.queue(`INSERT INTO events (room_nid, event_id, event_type, state_key_nid, sender, depth,
			prev_event_ids, auth_event_nids, event_json, outlier, rejected, soft_failed, rejection_reason,
			state_before_nid, state_after_nid, event_nid)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`, args...)
}

// QueueTransaction records the event a client transaction produced
// (queued).
func (t *Tx) QueueTransaction(roomNID int64, sender, deviceID, txnID, eventID string) {
	t.conn.queue(`INSERT INTO transactions (room_nid, sender, device_id, txn_id, event_id)
		VALUES ($1, $2, $3, $4, $5)`, roomNID, sender, deviceID, txnID, eventID)
}

// QueueOutbox appends outbox entries (queued). Their positions come from
// a sequence, so across rooms they need not be in commit order: the
// publisher finds new rows by transaction visibility (PendingOutbox). Per
// room they are, as the room lock is held until COMMIT.
func (t *Tx) QueueOutbox(entries []OutboxEntry) {
	for _, e := range entries {
		var dev, txn *string
		if e.HasTxn {
			dev, txn = &e.TxnDeviceID, &e.TxnID
		}
		if e.AddedStateNIDs == nil {
			e.AddedStateNIDs = []int64{}
		}
		if e.RemovedStateNIDs == nil {
			e.RemovedStateNIDs = []int64{}
		}
		t.conn.queue(`INSERT INTO outbox (room_nid, event_nid, added_state_nids, removed_state_nids, txn_device_id, txn_id)
			VALUES ($1, $2, $3, $4, $5, $6)`,
			e.RoomNID, e.EventNID, e.AddedStateNIDs, e.RemovedStateNIDs, dev, txn)
	}
}

// Commit sends the queued writes and COMMIT in one round trip. If any
// write fails, nothing is committed.
func (t *Tx) Commit(ctx context.Context) error {
	if t.conn.conn == nil {
		return errors.New("commit: transaction already finished")
	}
	var tag pgconn.CommandTag
	t.conn.batch().Queue(`COMMIT`).Exec(func(ct pgconn.CommandTag) error {
		tag = ct
		return nil
	})
	if err := t.conn.flush(ctx); err != nil {
		return err
	}
	if tag.String() != "COMMIT" {
		return fmt.Errorf("commit: transaction was rolled back (%q)", tag.String())
	}
	t.conn.release()
	return nil
}

// Rollback aborts the transaction and drops queued writes; it is a no-op
// after Commit.
func (t *Tx) Rollback(ctx context.Context) {
	if t.conn.conn == nil {
		return
	}
	t.conn.pending = nil
	// A failed ROLLBACK leaves the connection inside a transaction, and
	// the pool then closes it rather than reuse it.
	_, _ = t.conn.conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`)
	t.conn.release()
}

// pipeConn is a connection in a transaction with a batch of queued
// writes, flushed before anything else goes to the server.
type pipeConn struct {
	conn    *pgxpool.Conn
	pending *pgx.Batch
}

func (p *pipeConn) batch() *pgx.Batch {
	if p.pending == nil {
		p.pending = &pgx.Batch{}
	}
	return p.pending
}

func (p *pipeConn) queue(sql string, args ...any) { p.batch().Queue(sql, args...) }

// flush sends the queued statements; the first failure is returned.
func (p *pipeConn) flush(ctx context.Context) error {
	if p.conn == nil {
		return errors.New("transaction already finished")
	}
	if p.pending == nil || p.pending.Len() == 0 {
		return nil
	}
	b := p.pending
	p.pending = nil
	if err := p.conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("queued writes: %w", err)
	}
	return nil
}

func (p *pipeConn) release() {
	if p.conn != nil {
		p.conn.Release()
		p.conn = nil
	}
	p.pending = nil
}

func (p *pipeConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := p.flush(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return p.conn.Exec(ctx, sql, args...)
}

func (p *pipeConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := p.flush(ctx); err != nil {
		return nil, err
	}
	return p.conn.Query(ctx, sql, args...)
}

func (p *pipeConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := p.flush(ctx); err != nil {
		return errRow{err}
	}
	return p.conn.QueryRow(ctx, sql, args...)
}

// SendBatch sends the queued writes and b in one round trip.
func (p *pipeConn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if p.conn == nil {
		return errBatch{errors.New("transaction already finished")}
	}
	if p.pending == nil || p.pending.Len() == 0 {
		return p.conn.SendBatch(ctx, b)
	}
	merged := p.pending
	p.pending = nil
	merged.QueuedQueries = append(merged.QueuedQueries, b.QueuedQueries...)
	return p.conn.SendBatch(ctx, merged)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow{b.err} }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }

func ignoreNotFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	return err
}

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
