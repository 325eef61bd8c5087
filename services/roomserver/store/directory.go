package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// AliasesOf lists the aliases that point to a room, sorted.
func (q *Queries) AliasesOf(ctx context.Context, roomID string) ([]string, error) {
	rows, err := q.db.Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, fmt.Errorf("list aliases: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// SetPublished adds the room to the directory or takes it out.
func (q *Queries) SetPublished(ctx context.Context, roomID string, public bool) error {
	var err error
	if public {
		_, err = q.db.Exec(ctx, `INSERT INTO room_directory (room_id) VALUES ($1) ON CONFLICT (room_id) DO NOTHING`, roomID)
	} else {
		_, err = q.db.Exec(ctx, `DELETE FROM room_directory WHERE room_id = $1`, roomID)
	}
	if err != nil {
		return fmt.Errorf("set directory visibility: %w", err)
	}
	return nil
}

// Published reports whether the room is in the directory.
func (q *Queries) Published(ctx context.Context, roomID string) (bool, error) {
	var ok bool
	err := q.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM room_directory WHERE room_id = $1)`, roomID).Scan(&ok)
	return ok, err
}

// PublishedRooms lists the directory's rooms in publication order.
func (q *Queries) PublishedRooms(ctx context.Context) ([]string, error) {
	rows, err := q.db.Query(ctx, `SELECT room_id FROM room_directory ORDER BY published_at, room_id`)
	if err != nil {
		return nil, fmt.Errorf("list directory: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
