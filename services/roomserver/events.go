package roomserver

import (
	"context"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// eventEntry is a stored event with its parsed PDU. Entries are cached by
// event NID and shared: never change one.
type eventEntry struct {
	store.Event // JSON is cleared; use pdu.JSON()
	pdu         gomatrixserverlib.PDU
}

// loadEvents returns the events with the given NIDs, from the cache or the
// database. Every NID must exist.
func (s *Service) loadEvents(ctx context.Context, q *store.Queries, nids []int64) (map[int64]*eventEntry, error) {
	out := make(map[int64]*eventEntry, len(nids))
	var miss []int64
	for _, nid := range nids {
		if e, ok := s.events.Get(nid); ok {
			out[nid] = e
		} else if _, dup := out[nid]; !dup {
			miss = append(miss, nid)
		}
	}
	if len(miss) == 0 {
		return out, nil
	}
	// A stored event's JSON changes when it is redacted (or an outlier is
	// stored again as a timeline event); such a change drops the cached
	// entry at its commit and counts in eventRewrites. Rows read while one
	// committed may be the old form and are not cached.
	rewrites := s.eventRewrites.Load()
	rows, err := q.EventsByNID(ctx, miss)
	if err != nil {
		return nil, err
	}
	cache := s.eventRewrites.Load() == rewrites
	for _, row := range rows {
		e, err := newEventEntry(row)
		if err != nil {
			return nil, err
		}
		out[row.NID] = e
		if cache {
			s.events.Put(row.NID, e)
		}
	}
	for _, nid := range miss {
		if _, ok := out[nid]; !ok {
			return nil, fmt.Errorf("event nid %d: %w", nid, store.ErrNotFound)
		}
	}
	return out, nil
}

// forgetEvent drops an event whose stored JSON changed from the cache, and
// keeps loads that read it before the change from caching the old form.
func (s *Service) forgetEvent(nid int64) {
	s.eventRewrites.Add(1)
	s.events.Remove(nid)
}

// eventsByID loads events by ID (not cached by ID; the NID cache is used
// for the parsed form).
func (s *Service) eventsByID(ctx context.Context, q *store.Queries, ids []string) (map[string]*eventEntry, error) {
	rows, err := q.EventsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	return s.eventEntries(rows)
}

// eventEntries parses stored rows by event ID, reusing cached parses.
func (s *Service) eventEntries(rows []store.Event) (map[string]*eventEntry, error) {
	out := make(map[string]*eventEntry, len(rows))
	for _, row := range rows {
		if e, ok := s.events.Get(row.NID); ok && e.Outlier == row.Outlier {
			out[row.EventID] = e
			continue
		}
		e, err := newEventEntry(row)
		if err != nil {
			return nil, err
		}
		out[row.EventID] = e
	}
	return out, nil
}

// newEventEntry parses a stored event. Stored events were checked on the
// way in, so they are parsed as trusted.
func newEventEntry(row store.Event) (*eventEntry, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(row.RoomVersion))
	if err != nil {
		return nil, err
	}
	pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(row.EventID, row.JSON, false)
	if err != nil {
		return nil, fmt.Errorf("parse stored event %s: %w", row.EventID, err)
	}
	row.JSON = nil
	return &eventEntry{Event: row, pdu: pdu}, nil
}

// room reads a room on the pool; a stub room (known only from out-of-room
// memberships, without a create event) is store.ErrNotFound: to clients
// and queries it does not exist yet.
func (s *Service) room(ctx context.Context, roomID string) (store.Room, error) {
	room, err := s.store.Room(ctx, roomID)
	if err == nil && room.Stub {
		return store.Room{}, store.ErrNotFound
	}
	return room, err
}
