package store

import (
	"context"
	"math"

	"github.com/jackc/pgx/v5"
)

// RelationQuery selects the events that relate to a parent.
type RelationQuery struct {
	RoomID   string
	ParentID string
	// RelType and EventType filter the returned events ("" = any).
	RelType   string
	EventType string
	// Recurse follows relations of relations, up to MaxRelationDepth.
	Recurse bool
	Dir     Direction
	// From and To are stream positions as for Messages (To < 0: unbounded).
	From, To int64
	Limit    int
}

// MaxRelationDepth is how deep a recursive relations query follows.
const MaxRelationDepth = 3

// Relations pages through the events relating to a parent, like Messages.
func (r Reader) Relations(ctx context.Context, q RelationQuery) (Page, error) {
	tree := `SELECT event_id, rel_type FROM event_relations WHERE relates_to = $1 AND room_id = $2 AND $8::int > 0`
	if q.Recurse {
		tree = `WITH RECURSIVE tree(event_id, rel_type, depth) AS (
				SELECT event_id, rel_type, 1 FROM event_relations WHERE relates_to = $1 AND room_id = $2
				UNION
				SELECT r.event_id, r.rel_type, t.depth + 1 FROM event_relations r JOIN tree t ON r.relates_to = t.event_id
				WHERE t.depth < $8 AND r.room_id = $2
			) SELECT event_id, rel_type FROM tree`
	}
	lo, hi := int64(0), int64(math.MaxInt64)
	order := "DESC"
	if q.Dir == Backward {
		hi = q.From
		if q.To >= 0 {
			lo = q.To
		}
	} else {
		lo = q.From
		if q.To >= 0 {
			hi = q.To
		}
		order = "ASC"
	}
	rows, err := r.q.Query(ctx, `SELECT `+eventCols+` FROM sync_events WHERE room_id = $2
		AND event_id IN (SELECT event_id FROM (`+tree+`) t WHERE $3 = '' OR t.rel_type = $3)
		AND ($4 = '' OR type = $4) AND pos > $5 AND pos <= $6
		ORDER BY pos `+order+` LIMIT $7`,
		q.ParentID, q.RoomID, q.RelType, q.EventType, lo, hi, q.Limit+1, MaxRelationDepth)
	if err != nil {
		return Page{}, err
	}
	events, err := scanEvents(rows)
	if err != nil {
		return Page{}, err
	}
	p := Page{Events: events}
	if len(events) > q.Limit {
		p.Events, p.More = events[:q.Limit], true
	}
	return p, nil
}

// Child is an event relating to a parent, for bundled aggregations.
type Child struct {
	ParentID string
	RelType  string
	Event    StoredEvent
}

// Children returns the events of the given relation types that relate
// to any of the parents (in the parent's room), oldest first.
func (r Reader) Children(ctx context.Context, parents, relTypes []string) ([]Child, error) {
	var out []Child
	b := &Batch{}
	b.Children(parents, relTypes, &out)
	return out, r.Send(ctx, b)
}

// Children queues Reader.Children into out.
func (b *Batch) Children(parents, relTypes []string, out *[]Child) {
	if len(parents) == 0 {
		return
	}
	b.b.Queue(`SELECT r.relates_to, r.rel_type, `+qualifiedEventCols+`
		FROM event_relations r JOIN sync_events e ON e.event_id = r.event_id
		JOIN sync_events p ON p.event_id = r.relates_to AND p.room_id = r.room_id
		WHERE r.relates_to = ANY($1) AND r.rel_type = ANY($2)
		ORDER BY e.pos`, parents, relTypes).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var c Child
			e := &c.Event
			if err := rows.Scan(&c.ParentID, &c.RelType, &e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender,
				&e.JSON, &e.TxnDeviceID, &e.TxnID, &e.VisBefore, &e.VisAfter); err != nil {
				return err
			}
			*out = append(*out, c)
		}
		return rows.Err()
	})
}

const qualifiedEventCols = `e.pos, e.event_id, e.room_id, e.type, e.state_key, e.sender, e.event,
	COALESCE(e.txn_device_id, ''), COALESCE(e.txn_id, ''),
	COALESCE(e.visibility_before, 'shared'), COALESCE(e.visibility_after, 'shared')`

// ThreadRoot is a thread's root event and the position of its latest reply.
type ThreadRoot struct {
	Event     StoredEvent
	LatestPos int64
}

// ThreadRoots returns a room's thread roots, most recently active first,
// whose latest reply is at or before `before`. With participant set, only
// threads the user started or replied to.
func (r Reader) ThreadRoots(ctx context.Context, roomID, participant string, before int64, limit int) ([]ThreadRoot, bool, error) {
	rows, err := r.q.Query(ctx, `SELECT t.latest, `+qualifiedEventCols+` FROM (
			SELECT r.relates_to, MAX(r.pos) AS latest, bool_or(c.sender = $3) AS replied
			FROM event_relations r JOIN sync_events c ON c.event_id = r.event_id
			WHERE r.room_id = $1 AND r.rel_type = 'm.thread'
			GROUP BY r.relates_to
		) t JOIN sync_events e ON e.event_id = t.relates_to AND e.room_id = $1
		WHERE t.latest <= $2 AND ($3 = '' OR t.replied OR e.sender = $3)
		ORDER BY t.latest DESC LIMIT $4`, roomID, before, participant, limit+1)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var out []ThreadRoot
	for rows.Next() {
		var tr ThreadRoot
		e := &tr.Event
		if err := rows.Scan(&tr.LatestPos, &e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender,
			&e.JSON, &e.TxnDeviceID, &e.TxnID, &e.VisBefore, &e.VisAfter); err != nil {
			return nil, false, err
		}
		out = append(out, tr)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	more := len(out) > limit
	if more {
		out = out[:limit]
	}
	return out, more, nil
}
