// Package store holds the appservice service's PostgreSQL schema and
// queries: the room copy (joined members, aliases), each appservice's
// queue and delivery state, and the stream consumers' positions.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the appservice service owns.
const Schema = "appservice"

// Store is the appservice service's storage.
type Store struct {
	db    *pgxpool.Pool
	token string
}

// Open connects and migrates.
func Open(ctx context.Context, url string, maxConns int32) (*Store, error) {
	db, err := pgstore.Open(ctx, url, Schema, maxConns, migrations, "migrations")
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

// Close closes the pool.
func (s *Store) Close() { s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// Pool is the connection pool (the leader lock holds one connection).
func (s *Store) Pool() *pgxpool.Pool { return s.db }

// Tx is one consumer transaction: what a batch of stream messages
// changes commits with the consumer's position.
type Tx struct{ tx pgx.Tx }

// Apply runs fn(i) for each message of a batch of consumer (stream
// sequences seqs, ascending) in one transaction and records the last as
// the position; a message at or below the recorded position was applied
// already and fn does not run for it.
//
// The commit does not wait for the WAL flush (synchronous_commit off):
// nothing leaves the service on its strength alone. A pusher sends queue
// rows only after NextTxn's (synchronous) commit, whose flush carries the
// earlier WAL, this commit included; and a batch lost in a crash was never
// sent and is applied again from the older position, which was lost with
// it. The flush is thus paid once, by the pusher, in the path from commit
// to the appservice.
func (s *Store) Apply(ctx context.Context, consumer string, seqs []uint64, fn func(tx *Tx, i int) error) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return err
		}
		var last int64
		err := tx.QueryRow(ctx, `SELECT stream_seq FROM consumer_positions WHERE consumer = $1 FOR UPDATE`, consumer).Scan(&last)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		applied := false
		for i, seq := range seqs {
			if int64(seq) <= last {
				continue
			}
			if err := fn(&Tx{tx: tx}, i); err != nil {
				return err
			}
			applied = true
		}
		if !applied {
			return nil
		}
		_, err = tx.Exec(ctx, `INSERT INTO consumer_positions (consumer, stream_seq) VALUES ($1, $2)
			ON CONFLICT (consumer) DO UPDATE SET stream_seq = EXCLUDED.stream_seq`, consumer, int64(seqs[len(seqs)-1]))
		return err
	})
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

// RoomKnown reports whether the room copy has the room.
func (s *Store) RoomKnown(ctx context.Context, roomID string) (bool, error) {
	return roomKnown(ctx, s.db, roomID)
}

// RoomKnown is Store.RoomKnown in the transaction.
func (t *Tx) RoomKnown(ctx context.Context, roomID string) (bool, error) {
	return roomKnown(ctx, t.tx, roomID)
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func roomKnown(ctx context.Context, q querier, roomID string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rooms WHERE room_id = $1)`, roomID).Scan(&ok)
	return ok, err
}

// AddRoom records a room with its joined members and aliases (from the
// room-server's state when the stream shows a room the copy lacks).
func (t *Tx) AddRoom(ctx context.Context, roomID string, joined, aliases []string) error {
	if _, err := t.tx.Exec(ctx, `INSERT INTO rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING`, roomID); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, `INSERT INTO joined_members (room_id, user_id) SELECT $1, u FROM unnest($2::text[]) AS u
		ON CONFLICT DO NOTHING`, roomID, joined); err != nil {
		return err
	}
	return t.SetAliases(ctx, roomID, aliases)
}

// SetMemberships records many users' memberships of a room in two
// statements: joined are added, left (every other membership) removed.
// A user must not be in both.
func (t *Tx) SetMemberships(ctx context.Context, roomID string, joined, left []string) error {
	if len(left) > 0 {
		if _, err := t.tx.Exec(ctx, `DELETE FROM joined_members WHERE room_id = $1 AND user_id = ANY($2)`, roomID, left); err != nil {
			return err
		}
	}
	if len(joined) > 0 {
		if _, err := t.tx.Exec(ctx, `INSERT INTO joined_members (room_id, user_id) SELECT $1, u FROM unnest($2::text[]) AS u
			ON CONFLICT DO NOTHING`, roomID, joined); err != nil {
			return err
		}
	}
	return nil
}

// SetAliases replaces the room's aliases.
func (t *Tx) SetAliases(ctx context.Context, roomID string, aliases []string) error {
	if _, err := t.tx.Exec(ctx, `DELETE FROM room_aliases WHERE room_id = $1`, roomID); err != nil {
		return err
	}
	_, err := t.tx.Exec(ctx, `INSERT INTO room_aliases (room_id, alias) SELECT $1, a FROM unnest($2::text[]) AS a
		ON CONFLICT DO NOTHING`, roomID, aliases)
	return err
}

// SetDirectoryAlias records where a directory alias points ("": it is
// gone) and returns the rooms whose aliases this changed: the room it
// pointed to before, if any, and the new one.
func (t *Tx) SetDirectoryAlias(ctx context.Context, alias, roomID string) ([]string, error) {
	var rooms []string
	var err error
	if roomID == "" {
		err = t.tx.QueryRow(ctx, `WITH d AS (DELETE FROM directory_aliases WHERE alias = $1 RETURNING room_id)
			SELECT COALESCE(array_agg(room_id), '{}') FROM d`, alias).Scan(&rooms)
	} else {
		err = t.tx.QueryRow(ctx, `WITH old AS (SELECT room_id FROM directory_aliases WHERE alias = $1),
			up AS (INSERT INTO directory_aliases (alias, room_id) VALUES ($1, $2)
				ON CONFLICT (alias) DO UPDATE SET room_id = excluded.room_id)
			SELECT array_append(COALESCE((SELECT array_agg(room_id) FROM old), '{}'), $2::text)`, alias, roomID).Scan(&rooms)
	}
	return rooms, err
}

// AddDirectoryAliases records directory aliases of a room loaded from the
// room-server, leaving any the alias stream already recorded.
func (t *Tx) AddDirectoryAliases(ctx context.Context, roomID string, aliases []string) error {
	_, err := t.tx.Exec(ctx, `INSERT INTO directory_aliases (alias, room_id) SELECT a, $1 FROM unnest($2::text[]) AS a
		ON CONFLICT DO NOTHING`, roomID, aliases)
	return err
}

// Room is what the copy knows of a room.
type Room struct {
	Joined []string
	// Aliases are those of its m.room.canonical_alias and of the room
	// directory.
	Aliases []string
}

// Room reads the room's joined members and aliases.
func (t *Tx) Room(ctx context.Context, roomID string) (Room, error) {
	var r Room
	err := t.tx.QueryRow(ctx, `SELECT
		coalesce((SELECT array_agg(user_id) FROM joined_members WHERE room_id = $1), '{}'),
		coalesce((SELECT array_agg(alias) FROM (SELECT alias FROM room_aliases WHERE room_id = $1
			UNION SELECT alias FROM directory_aliases WHERE room_id = $1) AS a), '{}')`, roomID).Scan(&r.Joined, &r.Aliases)
	return r, err
}

// RoomsOf lists the rooms a user is joined to.
func (t *Tx) RoomsOf(ctx context.Context, userID string) ([]string, error) {
	rows, err := t.tx.Query(ctx, `SELECT room_id FROM joined_members WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// QueueChannel is the PostgreSQL notification channel on which Enqueue's
// transactions announce (at commit) the appservices whose queues grew; the
// payload is the appservice ID.
const QueueChannel = "myelin_appservice_queue"

// Connect opens a connection of its own (not from the pool), for holding
// an advisory lock and listening.
func (s *Store) Connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, s.db.Config().ConnConfig.Copy())
}

// Item kinds of the queue.
const (
	KindEvent     = "event"
	KindEphemeral = "ephemeral"
	// KindToDevice is a to-device message for one device of a user the
	// appservice is interested in (MSC2409), with to_user_id and
	// to_device_id.
	KindToDevice = "to_device"
)

// Enqueue appends an item for each appservice.
func (t *Tx) Enqueue(ctx context.Context, appservices []string, kind string, body []byte) error {
	if len(appservices) == 0 {
		return nil
	}
	_, err := t.tx.Exec(ctx, `WITH added AS (
			INSERT INTO queue (appservice_id, kind, body) SELECT a, $2, $3 FROM unnest($1::text[]) AS a)
		SELECT pg_notify('`+QueueChannel+`', a) FROM unnest($1::text[]) AS a`, appservices, kind, body)
	return err
}

// Txn is one transaction for an appservice: its ID and items in order.
type Txn struct {
	ID        string
	Events    [][]byte
	Ephemeral [][]byte
	ToDevice  [][]byte
}

// Empty reports whether the transaction has nothing.
func (t *Txn) Empty() bool { return len(t.Events)+len(t.Ephemeral)+len(t.ToDevice) == 0 }

// NextTxn returns the appservice's transaction in flight, or makes a new
// one of the oldest waiting items (at most max events, max ephemeral
// items and max to-device messages) and records it as in flight. A transaction's ID and content never
// change: retries send the same. nil when nothing waits.
func (s *Store) NextTxn(ctx context.Context, appserviceID string, max int) (*Txn, error) {
	var out *Txn
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO delivery (appservice_id) VALUES ($1) ON CONFLICT DO NOTHING`, appserviceID); err != nil {
			return err
		}
		var inFlight *string
		if err := tx.QueryRow(ctx, `SELECT txn_id FROM delivery WHERE appservice_id = $1 FOR UPDATE`, appserviceID).Scan(&inFlight); err != nil {
			return err
		}
		txnID := ""
		if inFlight != nil {
			txnID = *inFlight
		} else {
			var seq int64
			if err := tx.QueryRow(ctx, `SELECT nextval('txn_seq')`).Scan(&seq); err != nil {
				return err
			}
			txnID = s.token + "." + strconv.FormatInt(seq, 10)
			tag, err := tx.Exec(ctx, `UPDATE queue SET txn_id = $2 WHERE id IN (
				(SELECT id FROM queue WHERE appservice_id = $1 AND txn_id IS NULL AND kind = 'event' ORDER BY id LIMIT $3)
				UNION ALL
				(SELECT id FROM queue WHERE appservice_id = $1 AND txn_id IS NULL AND kind = 'ephemeral' ORDER BY id LIMIT $3)
				UNION ALL
				(SELECT id FROM queue WHERE appservice_id = $1 AND txn_id IS NULL AND kind = 'to_device' ORDER BY id LIMIT $3))`,
				appserviceID, txnID, max)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return nil
			}
			if _, err := tx.Exec(ctx, `UPDATE delivery SET txn_id = $2 WHERE appservice_id = $1`, appserviceID, txnID); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT kind, body FROM queue WHERE appservice_id = $1 AND txn_id = $2 ORDER BY id`, appserviceID, txnID)
		if err != nil {
			return err
		}
		t := &Txn{ID: txnID}
		var kind string
		var body []byte
		_, err = pgx.ForEachRow(rows, []any{&kind, &body}, func() error {
			switch kind {
			case KindEphemeral:
				t.Ephemeral = append(t.Ephemeral, body)
			case KindToDevice:
				t.ToDevice = append(t.ToDevice, body)
			default:
				t.Events = append(t.Events, body)
			}
			return nil
		})
		if err != nil {
			return err
		}
		out = t
		return nil
	})
	return out, err
}

// Acked removes a transaction the appservice answered 200 and resets the
// retry state.
func (s *Store) Acked(ctx context.Context, appserviceID, txnID string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM queue WHERE appservice_id = $1 AND txn_id = $2`, appserviceID, txnID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE delivery SET txn_id = NULL, failures = 0, last_error = '', next_attempt = NULL,
			last_acked_txn = $2, acked_total = acked_total + 1 WHERE appservice_id = $1 AND txn_id = $2`, appserviceID, txnID)
		return err
	})
}

// Failed records a failed attempt of the transaction in flight; delay
// turns the consecutive failures so far into the wait before the next
// attempt, which is recorded and returned.
func (s *Store) Failed(ctx context.Context, appserviceID, errText string, delay func(failures int) time.Duration) (int, time.Duration, error) {
	var n int
	var d time.Duration
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `UPDATE delivery SET failures = failures + 1, failures_total = failures_total + 1,
			last_error = $2 WHERE appservice_id = $1 RETURNING failures`, appserviceID, errText).Scan(&n); err != nil {
			return err
		}
		d = delay(n)
		_, err := tx.Exec(ctx, `UPDATE delivery SET next_attempt = now() + $2 * interval '1 millisecond' WHERE appservice_id = $1`,
			appserviceID, d.Milliseconds())
		return err
	})
	return n, d, err
}

// State is an appservice's queue and delivery state.
type State struct {
	QueueDepth    int64
	OldestPending time.Time // zero when nothing waits
	Failures      int
	FailuresTotal int64
	LastError     string
	NextAttempt   time.Time // zero when not backing off
	LastAckedTxn  string
	AckedTotal    int64
}

// States reads every appservice's state that has a queue or delivery row.
func (s *Store) States(ctx context.Context) (map[string]State, error) {
	out := map[string]State{}
	rows, err := s.db.Query(ctx, `SELECT appservice_id, count(*), min(enqueued_at) FROM queue GROUP BY appservice_id`)
	if err != nil {
		return nil, err
	}
	var id string
	var depth int64
	var oldest time.Time
	if _, err := pgx.ForEachRow(rows, []any{&id, &depth, &oldest}, func() error {
		st := out[id]
		st.QueueDepth, st.OldestPending = depth, oldest
		out[id] = st
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = s.db.Query(ctx, `SELECT appservice_id, failures, failures_total, last_error, next_attempt, last_acked_txn, acked_total
		FROM delivery`)
	if err != nil {
		return nil, err
	}
	var d State
	var next *time.Time
	_, err = pgx.ForEachRow(rows, []any{&id, &d.Failures, &d.FailuresTotal, &d.LastError, &next, &d.LastAckedTxn, &d.AckedTotal}, func() error {
		st := out[id]
		st.Failures, st.FailuresTotal, st.LastError, st.LastAckedTxn, st.AckedTotal = d.Failures, d.FailuresTotal, d.LastError, d.LastAckedTxn, d.AckedTotal
		st.NextAttempt = time.Time{}
		if next != nil {
			st.NextAttempt = *next
		}
		out[id] = st
		return nil
	})
	return out, err
}

// Pending lists the appservices with waiting items.
func (s *Store) Pending(ctx context.Context) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT appservice_id FROM queue`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
