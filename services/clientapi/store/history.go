package store

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/jackc/pgx/v5"
)

// History visibility values (m.room.history_visibility).
const (
	VisibilityWorldReadable = "world_readable"
	VisibilityShared        = "shared"
	VisibilityInvited       = "invited"
	VisibilityJoined        = "joined"
)

const typeHistoryVisibility = "m.room.history_visibility"

// VisibilityOf reads content.history_visibility of a client-format
// m.room.history_visibility event; unknown or missing values are
// "shared", as the spec says.
func VisibilityOf(eventJSON []byte) string {
	var ev struct {
		Content struct {
			HistoryVisibility string `json:"history_visibility"`
		} `json:"content"`
	}
	_ = json.Unmarshal(eventJSON, &ev)
	switch v := ev.Content.HistoryVisibility; v {
	case VisibilityWorldReadable, VisibilityInvited, VisibilityJoined:
		return v
	}
	return VisibilityShared
}

// currentVisibility is the room's history visibility in the current state.
func currentVisibility(ctx context.Context, q querier, roomID string) (string, error) {
	vis, err := visibilities(ctx, q, []string{roomID})
	return vis[roomID], err
}

// visibilities is the history visibility of each of rooms in its current
// state (shared when unset), in one query.
func visibilities(ctx context.Context, q querier, rooms []string) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT room_id, event FROM current_state WHERE room_id = ANY($1) AND type = $2 AND state_key = ''`,
		rooms, typeHistoryVisibility)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(rooms))
	for _, r := range rooms {
		out[r] = VisibilityShared
	}
	var room string
	var raw []byte
	_, err = pgx.ForEachRow(rows, []any{&room, &raw}, func() error {
		out[room] = VisibilityOf(raw)
		return nil
	})
	return out, err
}

// CurrentVisibility is the room's history visibility in its current state.
func (r Reader) CurrentVisibility(ctx context.Context, roomID string) (string, error) {
	return currentVisibility(ctx, r.q, roomID)
}

// applyRedaction replaces the stored copies of a redacted event.
func applyRedaction(ctx context.Context, tx querier, roomID string, red RedactedEvent) error {
	// Its content is gone, so it is no longer found by search.
	if _, err := tx.Exec(ctx, `UPDATE sync_events SET event = $3, search_key = NULL, search_vec = NULL
		WHERE event_id = $1 AND room_id = $2`,
		red.EventID, roomID, red.JSON); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE current_state SET event = $3 WHERE event_id = $1 AND room_id = $2`,
		red.EventID, roomID, red.JSON); err != nil {
		return err
	}
	// Its content, and so its relation, is gone.
	_, err := tx.Exec(ctx, `DELETE FROM event_relations WHERE event_id = $1`, red.EventID)
	return err
}

// MembershipEntry is one change of a user's membership of a room.
type MembershipEntry struct {
	Pos        int64
	Membership string
}

// MembershipLog returns the user's membership changes in each of the
// rooms, oldest first.
func (r Reader) MembershipLog(ctx context.Context, userID string, rooms []string) (map[string][]MembershipEntry, error) {
	out := make(map[string][]MembershipEntry, len(rooms))
	b := &Batch{}
	b.MembershipLog(userID, rooms, out)
	return out, r.Send(ctx, b)
}

// MembershipLog queues Reader.MembershipLog into out.
func (b *Batch) MembershipLog(userID string, rooms []string, out map[string][]MembershipEntry) {
	if len(rooms) == 0 {
		return
	}
	b.b.Queue(`SELECT room_id, pos, membership FROM membership_log
		WHERE user_id = $1 AND room_id = ANY($2) ORDER BY room_id, pos`, userID, rooms).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var room string
			var e MembershipEntry
			if err := rows.Scan(&room, &e.Pos, &e.Membership); err != nil {
				return err
			}
			out[room] = append(out[room], e)
		}
		return rows.Err()
	})
}

// EventByID returns one stored event of a room, or ErrNotFound.
func (r Reader) EventByID(ctx context.Context, roomID, eventID string) (StoredEvent, error) {
	return r.oneEvent(ctx, `event_id = $1 AND room_id = $2`, eventID, roomID)
}

// oneEvent returns the stored event matching where, or ErrNotFound.
func (r Reader) oneEvent(ctx context.Context, where string, args ...any) (StoredEvent, error) {
	rows, err := r.q.Query(ctx, `SELECT `+eventCols+` FROM sync_events WHERE `+where, args...)
	if err != nil {
		return StoredEvent{}, err
	}
	events, err := scanEvents(rows)
	if err != nil {
		return StoredEvent{}, err
	}
	if len(events) == 0 {
		return StoredEvent{}, ErrNotFound
	}
	return events[0], nil
}

// FirstEventFrom returns the position and origin_server_ts of the room's
// first event at or after pos (found false when there is none).
func (r Reader) FirstEventFrom(ctx context.Context, roomID string, pos int64) (at, ts int64, found bool, err error) {
	err = r.q.QueryRow(ctx, `SELECT pos, COALESCE((convert_from(event, 'UTF8')::jsonb ->> 'origin_server_ts')::bigint, 0)
		FROM sync_events WHERE room_id = $1 AND pos >= $2 ORDER BY pos LIMIT 1`, roomID, pos).Scan(&at, &ts)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, false, nil
	}
	return at, ts, err == nil, err
}

// EventsAround returns up to limit of the room's events from pos on
// (forward) or up to pos (backward), nearest first.
func (r Reader) EventsAround(ctx context.Context, roomID string, pos int64, forward bool, limit int) ([]StoredEvent, error) {
	q := `SELECT ` + eventCols + ` FROM sync_events WHERE room_id = $1 AND pos >= $2 ORDER BY pos LIMIT $3`
	if !forward {
		q = `SELECT ` + eventCols + ` FROM sync_events WHERE room_id = $1 AND pos <= $2 ORDER BY pos DESC LIMIT $3`
	}
	rows, err := r.q.Query(ctx, q, roomID, pos, limit)
	if err != nil {
		return nil, err
	}
	return scanEvents(rows)
}

// MutualRooms returns the rooms both users are joined to, in room ID
// order.
func (r Reader) MutualRooms(ctx context.Context, a, b string) ([]string, error) {
	rows, err := r.q.Query(ctx, `SELECT x.room_id FROM memberships x JOIN memberships y ON y.room_id = x.room_id
		WHERE x.user_id = $1 AND y.user_id = $2 AND x.membership = 'join' AND y.membership = 'join' ORDER BY x.room_id`, a, b)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
