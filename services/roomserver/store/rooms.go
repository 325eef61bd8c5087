package store

import (
	"context"
	"fmt"
)

// Room is one row of rooms.
type Room struct {
	NID         int64
	RoomID      string
	Version     string
	SnapshotNID int64
	Extremities []int64
	Depth       int64
	// Stub: known only from out-of-room membership events; no create event
	// and no state yet.
	Stub bool
}

const roomColumns = `room_nid, room_id, room_version, state_snapshot_nid, forward_extremities, depth, stub`

func scanRoom(row interface{ Scan(...any) error }) (Room, error) {
	var r Room
	err := row.Scan(&r.NID, &r.RoomID, &r.Version, &r.SnapshotNID, &r.Extremities, &r.Depth, &r.Stub)
	return r, notFound(err)
}

// Room looks a room up by ID; ErrNotFound if unknown.
func (q *Queries) Room(ctx context.Context, roomID string) (Room, error) {
	return scanRoom(q.db.QueryRow(ctx, `SELECT `+roomColumns+` FROM rooms WHERE room_id = $1`, roomID))
}

// InsertRoom adds a room with empty state and returns its numeric ID; a
// stub room has no create event yet.
func (q *Queries) InsertRoom(ctx context.Context, roomID, version string, stub bool) (int64, error) {
	var nid int64
	err := q.db.QueryRow(ctx, `INSERT INTO rooms (room_id, room_version, stub) VALUES ($1, $2, $3) RETURNING room_nid`,
		roomID, version, stub).Scan(&nid)
	if err != nil {
		return 0, fmt.Errorf("insert room: %w", err)
	}
	return nid, nil
}

// SetAlias creates alias -> roomID; false if the alias already existed.
func (q *Queries) SetAlias(ctx context.Context, alias, roomID, creator string) (bool, error) {
	tag, err := q.db.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)
		ON CONFLICT (alias) DO NOTHING`, alias, roomID, creator)
	if err != nil {
		return false, fmt.Errorf("set alias: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// Alias returns the room an alias points to and the alias's creator, or
// ErrNotFound.
func (q *Queries) Alias(ctx context.Context, alias string) (roomID, creator string, err error) {
	err = q.db.QueryRow(ctx, `SELECT room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID, &creator)
	return roomID, creator, notFound(err)
}

// RemoveAlias deletes an alias; false if it did not exist.
func (q *Queries) RemoveAlias(ctx context.Context, alias string) (bool, error) {
	tag, err := q.db.Exec(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias)
	if err != nil {
		return false, fmt.Errorf("remove alias: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}
