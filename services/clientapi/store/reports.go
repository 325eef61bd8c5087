package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Report kinds.
const (
	ReportEvent = "event"
	ReportRoom  = "room"
	ReportUser  = "user"
)

// Report is one content report.
type Report struct {
	ID           int64
	Kind         string
	ReceivedTS   int64
	Reporter     string
	RoomID       string
	EventID      string
	TargetUserID string
	Reason       *string
	Score        *int64
}

// AddReport stores a report and returns its ID.
func (s *Store) AddReport(ctx context.Context, r Report) (int64, error) {
	var id int64
	err := s.db.QueryRow(ctx, `INSERT INTO content_reports (kind, received_ts, reporter, room_id, event_id, target_user_id, reason, score)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
		r.Kind, r.ReceivedTS, r.Reporter, nullable(r.RoomID), nullable(r.EventID), nullable(r.TargetUserID), r.Reason, r.Score).Scan(&id)
	return id, err
}

// ReportFilter selects reports of one kind for the admin API.
type ReportFilter struct {
	Kind string
	// Reporter and RoomID, when set, must be contained in the report's
	// (Synapse's semantics); TargetUserID must match exactly.
	Reporter, RoomID, TargetUserID string
	// Newest first unless Forward.
	Forward bool
	Offset  int64
	Limit   int64
}

const reportCols = `id, kind, received_ts, reporter, COALESCE(room_id, ''), COALESCE(event_id, ''),
	COALESCE(target_user_id, ''), reason, score`

func scanReport(row pgx.Row) (Report, error) {
	var r Report
	err := row.Scan(&r.ID, &r.Kind, &r.ReceivedTS, &r.Reporter, &r.RoomID, &r.EventID, &r.TargetUserID, &r.Reason, &r.Score)
	return r, err
}

// Reports lists reports matching f and the total number matching.
func (s *Store) Reports(ctx context.Context, f ReportFilter) ([]Report, int64, error) {
	const where = `WHERE kind = $1 AND ($2 = '' OR strpos(reporter, $2) > 0) AND ($3 = '' OR strpos(room_id, $3) > 0)
		AND ($4 = '' OR target_user_id = $4)`
	var total int64
	if err := s.db.QueryRow(ctx, `SELECT count(*) FROM content_reports `+where,
		f.Kind, f.Reporter, f.RoomID, f.TargetUserID).Scan(&total); err != nil {
		return nil, 0, err
	}
	order := "id DESC"
	if f.Forward {
		order = "id ASC"
	}
	rows, err := s.db.Query(ctx, `SELECT `+reportCols+` FROM content_reports `+where+` ORDER BY `+order+` OFFSET $5 LIMIT $6`,
		f.Kind, f.Reporter, f.RoomID, f.TargetUserID, f.Offset, f.Limit)
	if err != nil {
		return nil, 0, err
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Report, error) { return scanReport(row) })
	return out, total, err
}

// ReportByID returns one report of a kind, or ErrNotFound.
func (s *Store) ReportByID(ctx context.Context, kind string, id int64) (Report, error) {
	r, err := scanReport(s.db.QueryRow(ctx, `SELECT `+reportCols+` FROM content_reports WHERE kind = $1 AND id = $2`, kind, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Report{}, ErrNotFound
	}
	return r, err
}

// DeleteReport deletes one report of a kind; ErrNotFound when absent.
func (s *Store) DeleteReport(ctx context.Context, kind string, id int64) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM content_reports WHERE kind = $1 AND id = $2`, kind, id)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return err
}

// EventByIDAnyRoom returns a stored event by its ID alone, or ErrNotFound.
func (r Reader) EventByIDAnyRoom(ctx context.Context, eventID string) (StoredEvent, error) {
	return r.oneEvent(ctx, `event_id = $1`, eventID)
}
