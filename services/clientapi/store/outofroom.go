package store

// Federation outputs of the room-server: backfilled history (placed before
// a room's earliest event) and out-of-room memberships (invites and knocks
// in rooms of other servers, with their stripped state).

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// insertBackfillSQL is insertEventSQL with the position taken from the
// descending sync_backfill_pos sequence.
var insertBackfillSQL = strings.Replace(strings.Replace(insertEventSQL,
	"(event_id, room_id, type,", "(pos, event_id, room_id, type,", 1),
	"SELECT $1, $2, $3,", "SELECT nextval('sync_backfill_pos'), $1, $2, $3,", 1)

// applyBackfill stores a backfilled event before everything stored of its
// room: it changes no state, wakes no one and is not evaluated for push.
func applyBackfill(ctx context.Context, tx querier, in Input) error {
	var st step
	b := &pgx.Batch{}
	vis, err := currentVisibility(ctx, tx, in.Event.RoomID)
	if err != nil {
		return err
	}
	queueInsertSQL(b, insertBackfillSQL, in.Event, vis, &st)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("backfilled event %s: %w", in.Event.EventID, err)
	}
	return nil
}

// saveOutOfRoomState keeps the stripped state of an out-of-room invite or
// knock for /sync.
func saveOutOfRoomState(ctx context.Context, tx querier, in Input) error {
	if in.Event.StateKey == nil {
		return nil
	}
	raw, err := json.Marshal(in.StrippedState)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO out_of_room_state (room_id, user_id, event_id, stripped) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_id, user_id) DO UPDATE SET event_id = EXCLUDED.event_id, stripped = EXCLUDED.stripped`,
		in.Event.RoomID, *in.Event.StateKey, in.Event.EventID, raw)
	return err
}

// OutOfRoomState returns the stripped state stored for a user's
// out-of-room invites or knocks, by room (rooms without any are absent).
func (r Reader) OutOfRoomState(ctx context.Context, userID string, rooms []string) (map[string][]CurrentStateEvent, error) {
	out := map[string][]CurrentStateEvent{}
	if len(rooms) == 0 {
		return out, nil
	}
	rows, err := r.q.Query(ctx, `SELECT room_id, stripped FROM out_of_room_state WHERE user_id = $1 AND room_id = ANY($2)`,
		userID, rooms)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var roomID string
		var raw []byte
		if err := rows.Scan(&roomID, &raw); err != nil {
			return nil, err
		}
		var events []json.RawMessage
		if err := json.Unmarshal(raw, &events); err != nil {
			return nil, err
		}
		list := []CurrentStateEvent{}
		for _, ev := range events {
			var e struct {
				Type     string `json:"type"`
				StateKey string `json:"state_key"`
				Sender   string `json:"sender"`
			}
			if json.Unmarshal(ev, &e) != nil || (e.Type == "m.room.member" && e.StateKey == userID) {
				continue // the user's own membership comes from current_state
			}
			list = append(list, CurrentStateEvent{Type: e.Type, StateKey: e.StateKey, Sender: e.Sender, JSON: ev})
		}
		out[roomID] = list
	}
	return out, rows.Err()
}
