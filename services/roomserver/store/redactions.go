package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Redaction is one row of the redactions table.
type Redaction struct {
	RedactionNID  int64
	RoomNID       int64
	TargetEventID string
	Applied       bool
}

// InsertRedaction records an accepted redaction event (idempotent).
func (q *Queries) InsertRedaction(ctx context.Context, r Redaction) error {
	_, err := q.db.Exec(ctx, `INSERT INTO redactions (redaction_nid, room_nid, target_event_id, applied)
		VALUES ($1, $2, $3, $4) ON CONFLICT (redaction_nid) DO UPDATE SET applied = redactions.applied OR EXCLUDED.applied`,
		r.RedactionNID, r.RoomNID, r.TargetEventID, r.Applied)
	if err != nil {
		return fmt.Errorf("insert redaction: %w", err)
	}
	return nil
}

// scanRedactions reads redactions rows.
func scanRedactions(rows pgx.Rows) ([]Redaction, error) {
	defer rows.Close()
	var out []Redaction
	for rows.Next() {
		var r Redaction
		if err := rows.Scan(&r.RedactionNID, &r.RoomNID, &r.TargetEventID, &r.Applied); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// MarkRedactionApplied records that a redaction's target has been redacted.
func (q *Queries) MarkRedactionApplied(ctx context.Context, redactionNID int64) error {
	_, err := q.db.Exec(ctx, `UPDATE redactions SET applied = TRUE WHERE redaction_nid = $1`, redactionNID)
	return err
}

// ReplaceEventJSON overwrites a stored event's JSON: used only to replace
// an event by its redacted form, which has the same event ID and hashes.
func (q *Queries) ReplaceEventJSON(ctx context.Context, nid int64, eventJSON []byte) error {
	tag, err := q.db.Exec(ctx, `UPDATE events SET event_json = $2 WHERE event_nid = $1`, nid, string(eventJSON))
	if err != nil {
		return fmt.Errorf("replace event json: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("replace event json of nid %d: %w", nid, ErrNotFound)
	}
	return nil
}
