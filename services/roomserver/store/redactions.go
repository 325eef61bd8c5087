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

// RedactionLinks returns, for the given event NIDs, the applied
// redactions that involve them: redactions[nid] is the redaction event NID
// that redacted nid; targets[nid] is the target NID that redaction nid
// redacted (when the target is stored).
func (q *Queries) RedactionLinks(ctx context.Context, nids []int64) (redactedBy, targets map[int64]int64, err error) {
	redactedBy, targets = map[int64]int64{}, map[int64]int64{}
	if len(nids) == 0 {
		return redactedBy, targets, nil
	}
	rows, err := q.db.Query(ctx, `SELECT r.redaction_nid, e.event_nid FROM redactions r
		JOIN events e ON e.event_id = r.target_event_id AND e.room_nid = r.room_nid
		WHERE r.applied AND (r.redaction_nid = ANY($1) OR e.event_nid = ANY($1))`, nids)
	if err != nil {
		return nil, nil, fmt.Errorf("redaction links: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var red, target int64
		if err := rows.Scan(&red, &target); err != nil {
			return nil, nil, err
		}
		if _, ok := redactedBy[target]; !ok {
			redactedBy[target] = red
		}
		targets[red] = target
	}
	return redactedBy, targets, rows.Err()
}
