// Package store holds the room-server's PostgreSQL schema and queries: rooms,
// events, state snapshots, client transaction IDs, the publish outbox and
// room aliases. It knows nothing about Matrix rules; the service decides.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

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

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

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
//
// The round trip holds three statements: BEGIN, the lock, and one SELECT
// for the room row, the transaction lookup and the NID (every statement
// costs PostgreSQL a portal and an executor start). The lock must be a
// statement of its own: a statement reads with the snapshot it started
// with, so a read in the same statement as the lock could miss what the
// previous holder of the lock committed.
func (s *Store) BeginRoom(ctx context.Context, roomID string, txn *TxnKey) (*Tx, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	t := &Tx{conn: &pipeConn{conn: conn}, roomID: roomID}
	t.Queries = &Queries{db: t.conn}
	var sender, device, txnID *string
	if txn != nil {
		sender, device, txnID = &txn.Sender, &txn.DeviceID, &txn.TxnID
	}
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT pg_advisory_xact_lock(hashtextextended('myelin.roomserver.room.' || $1, 0))`, roomID)
	// A LEFT JOIN from one row: the NID comes back even when the room
	// does not exist (all its columns NULL then).
	b.Queue(`SELECT `+nextNIDExpr+`, r.room_nid, r.room_id, r.room_version, r.state_snapshot_nid,
			r.forward_extremities, r.depth, r.stub,
			(SELECT t.event_id FROM transactions t
				WHERE t.room_nid = r.room_nid AND t.sender = $2 AND t.device_id = $3 AND t.txn_id = $4)
		FROM (VALUES (1)) AS one LEFT JOIN rooms r ON r.room_id = $1`,
		roomID, sender, device, txnID).QueryRow(func(row pgx.Row) error {
		var nid *int64
		var id, version, txnEvent *string
		var snapshot, depth *int64
		var ext []int64
		var stub *bool
		if err := row.Scan(&t.reservedNID, &nid, &id, &version, &snapshot, &ext, &depth, &stub, &txnEvent); err != nil {
			return err
		}
		if nid == nil {
			t.roomErr = ErrNotFound
			return nil
		}
		t.room = Room{NID: *nid, RoomID: *id, Version: *version, SnapshotNID: *snapshot, Extremities: ext, Depth: *depth, Stub: *stub}
		if txnEvent != nil {
			t.TxnEventID = *txnEvent
		}
		return nil
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		t.Rollback(ctx)
		return nil, fmt.Errorf("begin and lock room: %w", err)
	}
	return t, nil
}

// nextNIDExpr reserves an event NID. (Naming the sequence, rather than
// asking pg_get_serial_sequence, resolves it once, when the statement is
// prepared.)
const nextNIDExpr = `nextval('events_event_nid_seq')`

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
func (t *Tx) InsertRoom(ctx context.Context, roomID, version string, stub bool) (int64, error) {
	nid, err := t.Queries.InsertRoom(ctx, roomID, version, stub)
	if err == nil && roomID == t.roomID {
		t.room, t.roomErr = Room{NID: nid, RoomID: roomID, Version: version, Stub: stub}, nil
	}
	return nid, err
}

// QueueClearStub records that the transaction's stub room now has its
// create event (queued).
func (t *Tx) QueueClearStub(nid int64) {
	t.conn.queue("rooms", `UPDATE rooms SET stub = FALSE WHERE room_nid = $1`, nid)
	if nid == t.room.NID {
		t.room.Stub = false
	}
}

// QueueUpdateRoom sets the room's current state, forward extremities and
// depth (queued).
func (t *Tx) QueueUpdateRoom(nid, snapshotNID int64, extremities []int64, depth int64) {
	if extremities == nil {
		extremities = []int64{}
	}
	t.conn.queueSet("rooms", "rooms:"+strconv.FormatInt(nid, 10), `UPDATE rooms SET state_snapshot_nid = $2, forward_extremities = $3, depth = $4 WHERE room_nid = $1`,
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
	t.conn.queueRow("events", `INSERT INTO events (room_nid, event_id, event_type, state_key_nid, sender, depth,
			prev_event_ids, auth_event_nids, event_json, outlier, rejected, soft_failed, rejection_reason,
			state_before_nid, state_after_nid, event_nid)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`, args...)
}

// QueueTransaction records the event a client transaction produced
// (queued).
func (t *Tx) QueueTransaction(roomNID int64, sender, deviceID, txnID, eventID string) {
	t.conn.queue("transactions", `INSERT INTO transactions (room_nid, sender, device_id, txn_id, event_id)
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
		var stripped *string
		if e.StrippedState != "" {
			stripped = &e.StrippedState
		}
		t.conn.queueRow("outbox", `INSERT INTO outbox (room_nid, event_nid, added_state_nids, removed_state_nids, txn_device_id, txn_id,
				kind, stripped_state)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			e.RoomNID, e.EventNID, e.AddedStateNIDs, e.RemovedStateNIDs, dev, txn, e.Kind, stripped)
	}
}

// Commit sends the queued writes and COMMIT in one round trip. If any
// write fails, nothing is committed.
func (t *Tx) Commit(ctx context.Context) error {
	if t.conn.conn == nil {
		return errors.New("commit: transaction already finished")
	}
	var tag pgconn.CommandTag
	b := &pgx.Batch{}
	b.Queue(`COMMIT`).Exec(func(ct pgconn.CommandTag) error {
		tag = ct
		return nil
	})
	if err := t.conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("queued writes: %w", err)
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

// pipeConn is a connection in a transaction with queued writes, sent
// before anything else goes to the server.
//
// Queued writes are combined: a run of writes to different tables goes
// out as one statement, each write a data-modifying CTE (a message send's
// event, room update, client transaction and outbox row are one
// statement), because each statement costs PostgreSQL a portal and an
// executor start and end. The writes of one statement share a snapshot
// and do not see each other's rows, which queued writes never need (their
// results are not read); foreign keys are checked at the end of the
// statement, when every row of it is there. At most one write per table
// goes into a statement, so no statement touches a row twice (two updates
// of one row in one statement would keep only one).
type pipeConn struct {
	conn    *pgxpool.Conn
	pending []queuedWrite
}

// queuedWrite is one write: a single INSERT or UPDATE without RETURNING,
// its parameters numbered from $1.
type queuedWrite struct {
	table string
	sql   string
	args  []any
	// row: sql is an INSERT of one VALUES tuple, which consecutive
	// inserts of the same statement join as further tuples (coalesce).
	row bool
	// key, when set, names the row the write sets absolutely (an UPDATE
	// of fixed values): an earlier queued write with the same key is
	// superseded by a later one and dropped.
	key string
}

func (p *pipeConn) queue(table, sql string, args ...any) {
	p.pending = append(p.pending, queuedWrite{table: table, sql: sql, args: args})
}

// queueRow queues an INSERT of one VALUES tuple (coalesce may join it
// with others of the same statement). sql must end with the tuple (no ON
// CONFLICT or RETURNING after it); otherwise it is queued as it is.
func (p *pipeConn) queueRow(table, sql string, args ...any) {
	tail := sql[strings.LastIndex(sql, "VALUES")+1:]
	row := strings.Contains(sql, "VALUES") && strings.HasSuffix(strings.TrimSpace(sql), ")") &&
		strings.Count(tail, "(") == 1 && strings.Count(tail, ")") == 1
	p.pending = append(p.pending, queuedWrite{table: table, sql: sql, args: args, row: row})
}

// queueSet queues a write that sets the row key names to fixed values
// (a later one of the same key supersedes it).
func (p *pipeConn) queueSet(table, key, sql string, args ...any) {
	p.pending = append(p.pending, queuedWrite{table: table, sql: sql, args: args, key: key})
}

// maxRowParams bounds the parameters of one coalesced INSERT (PostgreSQL
// takes at most 65,535).
const maxRowParams = 32768

// coalesce shortens a queue of writes without changing what it does: a
// write superseded by a later one of the same key is dropped, and
// single-row INSERTs of the same statement with nothing but such
// inserts and superseded writes between them become one multi-row INSERT
// (a run of federation events stores its events and outbox rows in a
// statement each, not one per event). Writes keep their order otherwise.
func coalesce(ws []queuedWrite) []queuedWrite {
	last := map[string]int{}
	for i, w := range ws {
		if w.key != "" {
			last[w.key] = i
		}
	}
	out := make([]queuedWrite, 0, len(ws))
	open := map[string]int{} // statement -> index in out of its open multi-row insert
	// The text of a multi-row insert grows in a builder (appending to the
	// string would copy it once per row: quadratic in a run of 10,000
	// outliers).
	texts := map[int]*strings.Builder{}
	for i, w := range ws {
		if w.key != "" && last[w.key] != i {
			continue
		}
		if !w.row {
			// Another write between inserts keeps them apart.
			clear(open)
			out = append(out, w)
			continue
		}
		j, ok := open[w.sql]
		if ok && len(out[j].args)+len(w.args) <= maxRowParams {
			m := &out[j]
			values := strings.LastIndex(w.sql, "VALUES")
			sb := texts[j]
			if sb == nil {
				sb = &strings.Builder{}
				sb.WriteString(m.sql)
				texts[j] = sb
			}
			sb.WriteByte(',')
			sb.WriteString(renumberParams(w.sql[values+len("VALUES"):], len(m.args)))
			m.args = append(m.args, w.args...)
			continue
		}
		// The merged statement keeps the first insert's text as its key.
		open[w.sql] = len(out)
		w.args = slices.Clone(w.args)
		out = append(out, w)
	}
	for j, sb := range texts {
		out[j].sql = sb.String()
	}
	return out
}

// take returns a batch holding the queued writes, combined, and empties
// the queue.
func (p *pipeConn) take() *pgx.Batch {
	b := &pgx.Batch{}
	p.pending = coalesce(p.pending)
	for start := 0; start < len(p.pending); {
		end := start + 1
		tables := map[string]bool{p.pending[start].table: true}
		for end < len(p.pending) && !tables[p.pending[end].table] {
			tables[p.pending[end].table] = true
			end++
		}
		sql, args := combineWrites(p.pending[start:end])
		b.Queue(sql, args...)
		start = end
	}
	p.pending = nil
	return b
}

// combineWrites makes one statement of writes: all but the last become
// CTEs (w0, w1, ...) of the last, their parameters renumbered after the
// ones before them.
func combineWrites(ws []queuedWrite) (string, []any) {
	if len(ws) == 1 {
		return ws[0].sql, ws[0].args
	}
	var sb strings.Builder
	var args []any
	for i, w := range ws {
		sql := renumberParams(w.sql, len(args))
		switch {
		case i == 0:
			sb.WriteString("WITH ")
		case i < len(ws)-1:
			sb.WriteString(", ")
		}
		if i < len(ws)-1 {
			fmt.Fprintf(&sb, "w%d AS (%s)", i, sql)
		} else {
			sb.WriteString(" ")
			sb.WriteString(sql)
		}
		args = append(args, w.args...)
	}
	return sb.String(), args
}

// paramRef matches a parameter reference ($1, $2, ...). The queued
// statements are this package's constants, with no "$" in literals.
var paramRef = regexp.MustCompile(`\$[0-9]+`)

// renumberParams adds offset to every parameter number in sql.
func renumberParams(sql string, offset int) string {
	if offset == 0 {
		return sql
	}
	return paramRef.ReplaceAllStringFunc(sql, func(ref string) string {
		n, _ := strconv.Atoi(ref[1:])
		return "$" + strconv.Itoa(n+offset)
	})
}

// copyMinRows is the least queued event rows copyEvents writes with COPY.
const copyMinRows = 256

// copyEvents writes a large number of queued event rows (a send_join
// answer's thousands of outliers) with COPY, which PostgreSQL takes much
// faster than multi-row INSERTs of tens of thousands of parameters, and
// drops them from the queue. No other queued write reads or writes
// events, so they may go before the rest of the queue.
func (p *pipeConn) copyEvents(ctx context.Context) error {
	var rows [][]any
	sql := ""
	for _, w := range p.pending {
		if w.table != "events" {
			continue
		}
		if !w.row || (sql != "" && w.sql != sql) {
			return nil
		}
		sql = w.sql
		rows = append(rows, w.args)
	}
	if len(rows) < copyMinRows {
		return nil
	}
	cols, ok := plainInsertColumns(sql, len(rows[0]))
	if !ok {
		return nil
	}
	if _, err := p.conn.CopyFrom(ctx, pgx.Identifier{"events"}, cols, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy %d events: %w", len(rows), err)
	}
	kept := p.pending[:0]
	for _, w := range p.pending {
		if w.table != "events" {
			kept = append(kept, w)
		}
	}
	p.pending = kept
	return nil
}

// plainInsertColumns returns the columns of `INSERT INTO t (c1, ...)
// VALUES ($1, ..., $n)` with n parameters, or false for any other form.
func plainInsertColumns(sql string, n int) ([]string, bool) {
	open, values := strings.Index(sql, "("), strings.LastIndex(sql, "VALUES")
	if open < 0 || values < open {
		return nil, false
	}
	head := sql[open+1 : values]
	end := strings.LastIndex(head, ")")
	if end < 0 {
		return nil, false
	}
	var cols []string
	for _, c := range strings.Split(head[:end], ",") {
		cols = append(cols, strings.TrimSpace(c))
	}
	var want strings.Builder
	want.WriteByte('(')
	for i := 1; i <= n; i++ {
		if i > 1 {
			want.WriteString(", ")
		}
		want.WriteString("$" + strconv.Itoa(i))
	}
	want.WriteByte(')')
	if len(cols) != n || strings.TrimSpace(sql[values+len("VALUES"):]) != want.String() {
		return nil, false
	}
	return cols, true
}

// flush sends the queued writes; the first failure is returned.
func (p *pipeConn) flush(ctx context.Context) error {
	if p.conn == nil {
		return errors.New("transaction already finished")
	}
	if err := p.copyEvents(ctx); err != nil {
		return err
	}
	if len(p.pending) == 0 {
		return nil
	}
	if err := p.conn.SendBatch(ctx, p.take()).Close(); err != nil {
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
		return pgstore.ErrRow{Err: err}
	}
	return p.conn.QueryRow(ctx, sql, args...)
}

// SendBatch sends the queued writes and b in one round trip.
func (p *pipeConn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if p.conn == nil {
		return pgstore.ErrBatch{Err: errors.New("transaction already finished")}
	}
	if err := p.copyEvents(ctx); err != nil {
		return pgstore.ErrBatch{Err: err}
	}
	if len(p.pending) == 0 {
		return p.conn.SendBatch(ctx, b)
	}
	merged := p.take()
	merged.QueuedQueries = append(merged.QueuedQueries, b.QueuedQueries...)
	return p.conn.SendBatch(ctx, merged)
}

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
