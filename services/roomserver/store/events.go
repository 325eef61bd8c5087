package store

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Event is one stored event.
type Event struct {
	NID         int64
	RoomNID     int64
	EventID     string
	Type        string
	StateKeyNID int64 // 0 for non-state events
	Sender      string
	Depth       int64
	PrevIDs     []string
	AuthNIDs    []int64
	JSON        []byte
	Outlier     bool
	Rejected    bool
	SoftFailed  bool
	Reason      string
	// StateBefore and StateAfter are snapshot NIDs; nil for outliers.
	StateBefore *int64
	StateAfter  *int64
	// From the rooms table.
	RoomID      string
	RoomVersion string
}

const eventColumns = `e.event_nid, e.room_nid, e.event_id, e.event_type, COALESCE(e.state_key_nid, 0), e.sender,
	e.depth, e.prev_event_ids, e.auth_event_nids, e.event_json, e.outlier, e.rejected, e.soft_failed,
	e.rejection_reason, e.state_before_nid, e.state_after_nid, r.room_id, r.room_version`

func scanEvents(rows interface {
	Next() bool
	Scan(...any) error
	Err() error
	Close()
}) ([]Event, error) {
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var js string
		if err := rows.Scan(&e.NID, &e.RoomNID, &e.EventID, &e.Type, &e.StateKeyNID, &e.Sender,
			&e.Depth, &e.PrevIDs, &e.AuthNIDs, &js, &e.Outlier, &e.Rejected, &e.SoftFailed,
			&e.Reason, &e.StateBefore, &e.StateAfter, &e.RoomID, &e.RoomVersion); err != nil {
			return nil, err
		}
		e.JSON = []byte(js)
		out = append(out, e)
	}
	return out, rows.Err()
}

// EventsByID returns the stored events among ids, in no particular order.
func (q *Queries) EventsByID(ctx context.Context, ids []string) ([]Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := q.db.Query(ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_nid)
		WHERE e.event_id = ANY($1)`, customPlan, ids)
	if err != nil {
		return nil, fmt.Errorf("events by id: %w", err)
	}
	return scanEvents(rows)
}

// EventsByNID returns the stored events among nids, in no particular order.
func (q *Queries) EventsByNID(ctx context.Context, nids []int64) ([]Event, error) {
	if len(nids) == 0 {
		return nil, nil
	}
	rows, err := q.db.Query(ctx, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_nid)
		WHERE e.event_nid = ANY($1)`, customPlan, nids)
	if err != nil {
		return nil, fmt.Errorf("events by nid: %w", err)
	}
	return scanEvents(rows)
}

// eventArgs are the 16 columns of an events row, in the order the
// INSERT statements list them.
func eventArgs(e Event) []any {
	var stateKeyNID *int64
	if e.StateKeyNID != 0 {
		stateKeyNID = &e.StateKeyNID
	}
	if e.PrevIDs == nil {
		e.PrevIDs = []string{}
	}
	if e.AuthNIDs == nil {
		e.AuthNIDs = []int64{}
	}
	return []any{e.RoomNID, e.EventID, e.Type, stateKeyNID, e.Sender, e.Depth, e.PrevIDs, e.AuthNIDs, string(e.JSON),
		e.Outlier, e.Rejected, e.SoftFailed, e.Reason, e.StateBefore, e.StateAfter, e.NID}
}

// InsertEvent stores an event under e.NID (from LookupInput) and returns
// the NID. An existing outlier with the same ID is replaced in place (an
// outlier that arrives again as a timeline event gets state and flags);
// any other existing event makes it fail.
func (q *Queries) InsertEvent(ctx context.Context, e Event) (int64, error) {
	var nid int64
	err := q.db.QueryRow(ctx, `INSERT INTO events (room_nid, event_id, event_type, state_key_nid, sender, depth,
			prev_event_ids, auth_event_nids, event_json, outlier, rejected, soft_failed, rejection_reason,
			state_before_nid, state_after_nid, event_nid)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
		ON CONFLICT (event_id) DO UPDATE SET outlier = EXCLUDED.outlier, rejected = EXCLUDED.rejected,
			soft_failed = EXCLUDED.soft_failed, rejection_reason = EXCLUDED.rejection_reason,
			state_before_nid = EXCLUDED.state_before_nid, state_after_nid = EXCLUDED.state_after_nid
			WHERE events.outlier
		RETURNING event_nid`, eventArgs(e)...).Scan(&nid)
	if err != nil {
		return 0, fmt.Errorf("insert event %s: %w", e.EventID, notFound(err))
	}
	return nid, nil
}

// InputLookup is what the input pipeline reads about an incoming event
// before deciding on it.
type InputLookup struct {
	// Events are the stored events among the asked IDs.
	Events []Event
	// Redactions are the redactions waiting for (or applied to) the event.
	Redactions []Redaction
	// NextNID is a fresh event NID, for the event if it gets stored.
	NextNID int64
}

// customPlan, as a query's first argument, runs it as an unnamed
// statement, which PostgreSQL plans for its parameters every time (see
// queueCustomPlan): for the reads of events by a list of IDs.
const customPlan = pgx.QueryExecModeExec

// queueCustomPlan queues sql planned for its parameters at every run
// (plan_cache_mode force_custom_plan for it alone, inside the room
// transaction). A prepared statement otherwise gets PostgreSQL's generic
// plan after five runs, costed with the table statistics of that moment
// and kept until the table is analyzed again: a server whose events table
// was nearly empty then (a fresh server, before autovacuum's first
// ANALYZE of it) kept a sequential scan of every event for each lookup,
// measured at 15-35 ms per call once the table held 2,000-20,000 events,
// against 0.2-0.6 ms by the index. Planning a lookup costs a few tens of
// microseconds. Only for statements inside a transaction (SET LOCAL).
func queueCustomPlan(b *pgx.Batch, sql string, args ...any) *pgx.QueuedQuery {
	b.Queue(`SET LOCAL plan_cache_mode = force_custom_plan`)
	q := b.Queue(sql, args...)
	b.Queue(`SET LOCAL plan_cache_mode TO DEFAULT`)
	return q
}

// LookupInput reads, in one round trip, the stored events among ids (the
// event itself, its prev and auth events), the redactions that target
// eventID, and reserves an event NID (unused when the event is not
// stored: NIDs have gaps anyway).
func (q *Queries) LookupInput(ctx context.Context, eventID string, ids []string) (InputLookup, error) {
	var out InputLookup
	b := &pgx.Batch{}
	queueCustomPlan(b, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_nid)
		WHERE e.event_id = ANY($1)`, ids).Query(func(rows pgx.Rows) error {
		var err error
		out.Events, err = scanEvents(rows)
		return err
	})
	b.Queue(`SELECT redaction_nid, room_nid, target_event_id, applied FROM redactions
		WHERE target_event_id = $1 ORDER BY redaction_nid`, eventID).Query(func(rows pgx.Rows) error {
		var err error
		out.Redactions, err = scanRedactions(rows)
		return err
	})
	b.Queue(`SELECT ` + nextNIDExpr).QueryRow(func(row pgx.Row) error {
		return row.Scan(&out.NextNID)
	})
	if err := q.db.SendBatch(ctx, b).Close(); err != nil {
		return out, fmt.Errorf("look up input event %s: %w", eventID, err)
	}
	return out, nil
}

// LookupInputs is LookupInput for a run of events stored in one
// transaction, in one round trip: the stored events among ids (the run's
// events and every event they refer to), the redactions that target any of
// eventIDs, and one fresh NID per event of the run, in order.
func (q *Queries) LookupInputs(ctx context.Context, eventIDs, ids []string) (events []Event, redactions []Redaction, nids []int64, err error) {
	b := &pgx.Batch{}
	queueCustomPlan(b, `SELECT `+eventColumns+` FROM events e JOIN rooms r USING (room_nid)
		WHERE e.event_id = ANY($1)`, ids).Query(func(rows pgx.Rows) error {
		var err error
		events, err = scanEvents(rows)
		return err
	})
	b.Queue(`SELECT redaction_nid, room_nid, target_event_id, applied FROM redactions
		WHERE target_event_id = ANY($1) ORDER BY redaction_nid`, eventIDs).Query(func(rows pgx.Rows) error {
		var err error
		redactions, err = scanRedactions(rows)
		return err
	})
	b.Queue(`SELECT `+nextNIDExpr+` FROM generate_series(1, $1::int)`, len(eventIDs)).Query(func(rows pgx.Rows) error {
		var err error
		nids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		return err
	})
	if err := q.db.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, nil, fmt.Errorf("look up %d input events: %w", len(eventIDs), err)
	}
	return events, redactions, nids, nil
}

// AuthChain returns the NIDs of every event reachable from nids through
// auth_events (nids included).
func (q *Queries) AuthChain(ctx context.Context, nids []int64) ([]int64, error) {
	if len(nids) == 0 {
		return nil, nil
	}
	rows, err := q.db.Query(ctx, `WITH RECURSIVE chain(nid) AS (
			SELECT unnest($1::BIGINT[])
			UNION
			SELECT unnest(e.auth_event_nids) FROM events e JOIN chain c ON e.event_nid = c.nid
		) SELECT nid FROM chain`, nids)
	if err != nil {
		return nil, fmt.Errorf("auth chain: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// StateKey is a (type, state_key) tuple.
type StateKey struct {
	Type     string
	StateKey string
}

// StateKeyNIDs returns the numeric IDs of the tuples that exist.
func (q *Queries) StateKeyNIDs(ctx context.Context, keys []StateKey) (map[StateKey]int64, error) {
	out := make(map[StateKey]int64, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	types := make([]string, len(keys))
	skeys := make([]string, len(keys))
	for i, k := range keys {
		types[i], skeys[i] = k.Type, k.StateKey
	}
	rows, err := q.db.Query(ctx, `SELECT s.state_key_nid, s.event_type, s.state_key
		FROM unnest($1::TEXT[], $2::TEXT[]) AS k(t, sk)
		JOIN event_state_keys s ON s.event_type = k.t AND s.state_key = k.sk`, types, skeys)
	if err != nil {
		return nil, fmt.Errorf("state key nids: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var nid int64
		var k StateKey
		if err := rows.Scan(&nid, &k.Type, &k.StateKey); err != nil {
			return nil, err
		}
		out[k] = nid
	}
	return out, rows.Err()
}

// EnsureStateKeyNIDs returns the numeric IDs of tuples, creating the
// missing ones, in one round trip. Rows are inserted in a fixed order, so
// concurrent callers with overlapping keys wait for each other rather
// than deadlock.
func (q *Queries) EnsureStateKeyNIDs(ctx context.Context, keys []StateKey) (map[StateKey]int64, error) {
	keys = slices.Clone(keys)
	slices.SortFunc(keys, func(a, b StateKey) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.StateKey, b.StateKey))
	})
	keys = slices.Compact(keys)
	types := make([]string, len(keys))
	skeys := make([]string, len(keys))
	for i, k := range keys {
		types[i], skeys[i] = k.Type, k.StateKey
	}
	out := make(map[StateKey]int64, len(keys))
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO event_state_keys (event_type, state_key)
		SELECT t, sk FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS k(t, sk, n) ORDER BY n
		ON CONFLICT (event_type, state_key) DO NOTHING`, types, skeys)
	b.Queue(`SELECT s.state_key_nid, s.event_type, s.state_key
		FROM unnest($1::TEXT[], $2::TEXT[]) AS k(t, sk)
		JOIN event_state_keys s ON s.event_type = k.t AND s.state_key = k.sk`, types, skeys).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var nid int64
			var k StateKey
			if err := rows.Scan(&nid, &k.Type, &k.StateKey); err != nil {
				return err
			}
			out[k] = nid
		}
		return rows.Err()
	})
	if err := q.db.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("ensure %d state keys: %w", len(keys), err)
	}
	return out, nil
}

// EnsureStateKeyNID returns the numeric ID of a tuple, creating it. Call it
// on the pool, outside a room transaction: the dictionary row is harmless
// if the event is never stored, and other writers never wait on it.
func (q *Queries) EnsureStateKeyNID(ctx context.Context, k StateKey) (int64, error) {
	var nid int64
	err := q.db.QueryRow(ctx, `SELECT state_key_nid FROM event_state_keys WHERE event_type = $1 AND state_key = $2`,
		k.Type, k.StateKey).Scan(&nid)
	if err == nil {
		return nid, nil
	}
	if err = notFound(err); err != ErrNotFound {
		return 0, err
	}
	_, err = q.db.Exec(ctx, `INSERT INTO event_state_keys (event_type, state_key) VALUES ($1, $2)
		ON CONFLICT (event_type, state_key) DO NOTHING`, k.Type, k.StateKey)
	if err != nil {
		return 0, fmt.Errorf("insert state key: %w", err)
	}
	err = q.db.QueryRow(ctx, `SELECT state_key_nid FROM event_state_keys WHERE event_type = $1 AND state_key = $2`,
		k.Type, k.StateKey).Scan(&nid)
	return nid, err
}
