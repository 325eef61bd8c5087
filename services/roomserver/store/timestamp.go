package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// EventNearTimestamp returns the room's event in the graph (not an
// outlier, rejected or soft-failed) whose origin_server_ts is closest to
// ts: at or after it when forward, at or before it otherwise (ties go to
// the lower event NID going forward, the higher going back). ErrNotFound
// when there is none.
//
// There is no index on the timestamp (it lives in event_json, and an
// expression index would cost every insert), so this reads the room's
// events: a federation query that is rare, bounded by the caller's
// deadline.
func (q *Queries) EventNearTimestamp(ctx context.Context, roomNID, ts int64, forward bool) (eventID string, eventTS int64, err error) {
	cmp, order := ">=", "ASC"
	if !forward {
		cmp, order = "<=", "DESC"
	}
	err = q.db.QueryRow(ctx, `
		SELECT event_id, ts FROM (
			SELECT event_id, event_nid, (event_json::jsonb->>'origin_server_ts')::bigint AS ts
			FROM events
			WHERE room_nid = $1 AND NOT outlier AND NOT rejected AND NOT soft_failed
		) e
		WHERE ts `+cmp+` $2
		ORDER BY ts `+order+`, event_nid `+order+`
		LIMIT 1`, roomNID, ts).Scan(&eventID, &eventTS)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, ErrNotFound
	}
	if err != nil {
		return "", 0, fmt.Errorf("event near timestamp: %w", err)
	}
	return eventID, eventTS, nil
}
