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

// SetNetworkPublished adds the room to an application service network's
// directory or takes it out.
func (q *Queries) SetNetworkPublished(ctx context.Context, appserviceID, networkID, roomID string, public bool) error {
	var err error
	if public {
		_, err = q.db.Exec(ctx, `INSERT INTO appservice_room_directory (appservice_id, network_id, room_id) VALUES ($1, $2, $3)
			ON CONFLICT DO NOTHING`, appserviceID, networkID, roomID)
	} else {
		_, err = q.db.Exec(ctx, `DELETE FROM appservice_room_directory WHERE appservice_id = $1 AND network_id = $2 AND room_id = $3`,
			appserviceID, networkID, roomID)
	}
	if err != nil {
		return fmt.Errorf("set network directory visibility: %w", err)
	}
	return nil
}

// NetworkListings lists the (appservice ID, network ID) pairs whose
// directories list the room, in order.
func (q *Queries) NetworkListings(ctx context.Context, roomID string) ([][2]string, error) {
	rows, err := q.db.Query(ctx, `SELECT appservice_id, network_id FROM appservice_room_directory WHERE room_id = $1
		ORDER BY appservice_id, network_id`, roomID)
	if err != nil {
		return nil, fmt.Errorf("list the room's network listings: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) ([2]string, error) {
		var l [2]string
		err := row.Scan(&l[0], &l[1])
		return l, err
	})
}

// NetworkPublishedRooms lists one application service network's directory
// in publication order.
func (q *Queries) NetworkPublishedRooms(ctx context.Context, appserviceID, networkID string) ([]string, error) {
	rows, err := q.db.Query(ctx, `SELECT room_id FROM appservice_room_directory WHERE appservice_id = $1 AND network_id = $2
		ORDER BY published_at, room_id`, appserviceID, networkID)
	if err != nil {
		return nil, fmt.Errorf("list network directory: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// AllPublishedRooms lists the server's directory and every application
// service network's, each room once, in order of first publication.
func (q *Queries) AllPublishedRooms(ctx context.Context) ([]string, error) {
	rows, err := q.db.Query(ctx, `SELECT room_id FROM (
			SELECT room_id, published_at FROM room_directory
			UNION ALL SELECT room_id, published_at FROM appservice_room_directory
		) AS p GROUP BY room_id ORDER BY min(published_at), room_id`)
	if err != nil {
		return nil, fmt.Errorf("list all directories: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
