package roomserver

// Queries for the federation endpoints: auth chains (/event_auth), state
// and its auth chain at an event (/state, /state_ids, send_join), the
// prev_events walks (/get_missing_events, /backfill), what a server may see
// (history visibility for servers) and which servers are in a room. They
// read committed data on the pool.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/memberview"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// fedQuery holds the federation queries (a view of the Service).
type fedQuery struct{ *Service }

// Limits of the walks: get_missing_events' default (the spec's) and the
// most either walk returns in one call.
const (
	defaultMissingLimit = 10
	maxWalkLimit        = 100
)

// roomEvents loads events by ID that belong to room; unknown or foreign
// ones are ErrEventNotFound.
func (s fedQuery) roomEvents(ctx context.Context, room store.Room, ids []string) ([]*eventEntry, error) {
	found, err := s.eventsByID(ctx, s.store.Queries, ids)
	if err != nil {
		return nil, err
	}
	out := make([]*eventEntry, 0, len(ids))
	for _, id := range ids {
		e, ok := found[id]
		if !ok || e.RoomNID != room.NID {
			return nil, fmt.Errorf("%w: %s in %s", ErrEventNotFound, id, room.RoomID)
		}
		out = append(out, e)
	}
	return out, nil
}

// authChainOf returns the auth chain of events (their auth_events,
// recursively), oldest first.
func (s fedQuery) authChainOf(ctx context.Context, events []*eventEntry) ([]*eventEntry, error) {
	var authNIDs []int64
	for _, e := range events {
		authNIDs = append(authNIDs, e.AuthNIDs...)
	}
	chain, err := s.store.AuthChain(ctx, authNIDs)
	if err != nil {
		return nil, err
	}
	entries, err := s.loadEvents(ctx, s.store.Queries, chain)
	if err != nil {
		return nil, err
	}
	out := make([]*eventEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, e)
	}
	sortByDepth(out)
	return out, nil
}

// sortByDepth orders events by depth, then event ID.
func sortByDepth(es []*eventEntry) {
	slices.SortFunc(es, func(a, b *eventEntry) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(a.EventID, b.EventID))
	})
}

func protos(es []*eventEntry) []*roomserverv1.Event {
	out := make([]*roomserverv1.Event, len(es))
	for i, e := range es {
		out[i] = e.proto()
	}
	return out
}

func eventIDs(es []*eventEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.EventID
	}
	return out
}

func (s fedQuery) queryAuthChain(ctx context.Context, req *roomserverv1.QueryAuthChainRequest) (*roomserverv1.QueryAuthChainResponse, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrRoomNotFound, req.GetRoomId())
	} else if err != nil {
		return nil, err
	}
	events, err := s.roomEvents(ctx, room, req.GetEventIds())
	if err != nil {
		return nil, err
	}
	chain, err := s.authChainOf(ctx, events)
	if err != nil {
		return nil, err
	}
	if req.GetIdsOnly() {
		return &roomserverv1.QueryAuthChainResponse{AuthChainIds: eventIDs(chain)}, nil
	}
	return &roomserverv1.QueryAuthChainResponse{AuthChain: protos(chain)}, nil
}

// queryStateAndAuthChain answers /state and /state_ids: the spec's state
// "at" an event is "prior to considering any state changes induced by the
// requested event", the state before it.
func (s fedQuery) queryStateAndAuthChain(ctx context.Context, req *roomserverv1.QueryStateAndAuthChainRequest) (*roomserverv1.QueryStateAndAuthChainResponse, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrRoomNotFound, req.GetRoomId())
	} else if err != nil {
		return nil, err
	}
	var st stateMap
	if req.GetEventId() == "" {
		sn, err := s.loadState(ctx, s.store.Queries, room.SnapshotNID)
		if err != nil {
			return nil, err
		}
		st = sn.state
	} else {
		e, at, err := s.stateAt(ctx, req.GetEventId(), false)
		if err != nil {
			return nil, err
		}
		if e.RoomNID != room.NID {
			return nil, fmt.Errorf("%w: %s is not in %s", ErrEventNotFound, req.GetEventId(), room.RoomID)
		}
		st = at
	}
	state, err := s.stateEntries(ctx, st, nil)
	if err != nil {
		return nil, err
	}
	sortByDepth(state)
	chain, err := s.authChainOf(ctx, state)
	if err != nil {
		return nil, err
	}
	resp := &roomserverv1.QueryStateAndAuthChainResponse{RoomVersion: room.Version}
	if req.GetIdsOnly() {
		resp.StateIds, resp.AuthChainIds = eventIDs(state), eventIDs(chain)
	} else {
		resp.State, resp.AuthChain = protos(state), protos(chain)
	}
	return resp, nil
}

// walkLimit clamps a requested limit.
func walkLimit(asked int32, def int) int {
	if asked <= 0 {
		return def
	}
	return min(int(asked), maxWalkLimit)
}

// getMissingEvents is the spec's /get_missing_events: a breadth-first walk
// of the prev_events of latest_events, skipping earliest_events (and not
// walking past them), up to limit events. Events below min_depth are
// neither returned nor walked past; rejected events are walked through but
// not returned. The latest events themselves are not returned.
func (s fedQuery) getMissingEvents(ctx context.Context, req *roomserverv1.GetMissingEventsRequest) ([]*roomserverv1.Event, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrRoomNotFound, req.GetRoomId())
	} else if err != nil {
		return nil, err
	}
	limit := walkLimit(req.GetLimit(), defaultMissingLimit)
	seen := map[string]bool{}
	for _, id := range slices.Concat(req.GetEarliestEvents(), req.GetLatestEvents()) {
		seen[id] = true
	}
	latest, err := s.eventsByID(ctx, s.store.Queries, req.GetLatestEvents())
	if err != nil {
		return nil, err
	}
	var frontier []string
	for _, id := range req.GetLatestEvents() {
		if e, ok := latest[id]; ok && e.RoomNID == room.NID {
			frontier = append(frontier, e.PrevIDs...)
		}
	}
	var out []*eventEntry
	for len(frontier) > 0 && len(out) < limit {
		var ids []string
		for _, id := range frontier {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
		found, err := s.eventsByID(ctx, s.store.Queries, ids)
		if err != nil {
			return nil, err
		}
		frontier = nil
		for _, id := range ids {
			e, ok := found[id]
			if !ok || e.RoomNID != room.NID || e.Depth < req.GetMinDepth() {
				continue
			}
			if !e.Rejected && len(out) < limit {
				out = append(out, e)
			}
			frontier = append(frontier, e.PrevIDs...)
		}
	}
	sortByDepth(out)
	return s.filterForServer(ctx, room, req.GetServerName(), out)
}

// backfill is the spec's /backfill: the given events and the events before
// them, up to limit, taken highest depth first (a breadth-first walk of
// prev_events ordered by depth). Rejected events are walked through but
// not returned.
func (s fedQuery) backfill(ctx context.Context, req *roomserverv1.BackfillRequest) ([]*roomserverv1.Event, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrRoomNotFound, req.GetRoomId())
	} else if err != nil {
		return nil, err
	}
	limit := walkLimit(req.GetLimit(), maxWalkLimit)
	seen := map[string]bool{}
	var queue []*eventEntry // kept sorted: highest depth last
	push := func(ids []string) error {
		var fresh []string
		for _, id := range ids {
			if !seen[id] {
				seen[id] = true
				fresh = append(fresh, id)
			}
		}
		found, err := s.eventsByID(ctx, s.store.Queries, fresh)
		if err != nil {
			return err
		}
		for _, id := range fresh {
			if e, ok := found[id]; ok && e.RoomNID == room.NID {
				queue = append(queue, e)
			}
		}
		sortByDepth(queue)
		return nil
	}
	if err := push(req.GetEventIds()); err != nil {
		return nil, err
	}
	var out []*eventEntry
	for len(queue) > 0 && len(out) < limit {
		e := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if !e.Rejected {
			out = append(out, e)
		}
		if err := push(e.PrevIDs); err != nil {
			return nil, err
		}
	}
	return s.filterForServer(ctx, room, req.GetServerName(), out)
}

// filterForServer turns events into what server may see (no filter when
// server is empty).
func (s fedQuery) filterForServer(ctx context.Context, room store.Room, server string, events []*eventEntry) ([]*roomserverv1.Event, error) {
	out := protos(events)
	if server == "" {
		return out, nil
	}
	v := &serverView{s: s, server: spec.ServerName(server), room: room}
	for i, e := range events {
		ok, err := v.maySee(ctx, e)
		if err != nil {
			return nil, err
		}
		if ok {
			continue
		}
		raw, err := redactedJSON(e.pdu)
		if err != nil {
			return nil, err
		}
		out[i].EventJson, out[i].RedactedForServer = raw, true
	}
	return out, nil
}

func (s fedQuery) filterEventsForServer(ctx context.Context, req *roomserverv1.FilterEventsForServerRequest) ([]*roomserverv1.Event, error) {
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(req.GetServerName())); !ok {
		return nil, fmt.Errorf("%w: invalid server name %q", ErrBadRequest, req.GetServerName())
	}
	found, err := s.eventsByID(ctx, s.store.Queries, req.GetEventIds())
	if err != nil {
		return nil, err
	}
	var out []*roomserverv1.Event
	for _, id := range req.GetEventIds() {
		e, ok := found[id]
		if !ok {
			continue
		}
		room, err := s.store.Room(ctx, e.RoomID)
		if err != nil {
			return nil, err
		}
		evs, err := s.filterForServer(ctx, room, req.GetServerName(), []*eventEntry{e})
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

// viewSource gives the member views (memberview) the room-server's
// snapshots and events.
type viewSource struct{ s *Service }

func (v viewSource) Delta(ctx context.Context, nid int64) (int64, []int64, []int64, error) {
	if sn, ok := v.s.snapshots.Get(nid); ok {
		if sn.parent == 0 {
			keys, vals := stateMap{}.diff(sn.state)
			return 0, keys, vals, nil
		}
		return sn.parent, sn.keys, sn.vals, nil
	}
	row, err := v.s.store.SnapshotRow(ctx, nid)
	return row.Parent, row.StateKeyNIDs, row.EventNIDs, err
}

func (v viewSource) State(ctx context.Context, nid int64) (map[int64]int64, error) {
	sn, err := v.s.loadState(ctx, v.s.store.Queries, nid)
	return sn.state, err
}

func (v viewSource) Events(ctx context.Context, nids []int64) (map[int64]gomatrixserverlib.PDU, error) {
	entries, err := v.s.loadEvents(ctx, v.s.store.Queries, nids)
	if err != nil {
		return nil, err
	}
	out := make(map[int64]gomatrixserverlib.PDU, len(entries))
	for nid, e := range entries {
		out[nid] = e.pdu
	}
	return out, nil
}

// snapshotMembers returns the member view of a snapshot: each member's
// membership by server, and the history visibility.
func (s fedQuery) snapshotMembers(ctx context.Context, nid int64) (*memberview.View, error) {
	return s.memberViews.Get(ctx, nid)
}

// serverView decides what one server may see of one room. The spec gives
// history visibility rules for users; a server sees an event when one of
// its users would: at the event, world_readable lets anyone see it,
// membership join always does, "invited" also lets invited users, and
// "shared" lets users who joined at any point after the event (taken here
// as: a user of the server is joined now). For m.room.history_visibility
// events the visibility before or after the event counts, and for the
// server's own users' m.room.member events the membership before or after.
// Events without state (outliers) are seen when they are state events (a
// server in the room gets them with /state anyway), redacted otherwise.
type serverView struct {
	s      fedQuery
	server spec.ServerName
	room   store.Room
	// joinedNow: nil until the current state was read.
	joinedNow *bool
}

func (v *serverView) maySee(ctx context.Context, e *eventEntry) (bool, error) {
	if e.StateBefore == nil {
		return e.pdu.StateKey() != nil, nil
	}
	before, err := v.s.snapshotMembers(ctx, *e.StateBefore)
	if err != nil {
		return false, err
	}
	ok, err := v.allows(ctx, before.Visibility(), before.ServerMembership(v.server))
	if ok || err != nil {
		return ok, err
	}
	own := false
	if e.pdu.Type() == spec.MRoomMember && e.pdu.StateKey() != nil {
		if u, err := spec.NewUserID(*e.pdu.StateKey(), true); err == nil && u.Domain() == v.server {
			own = true
		}
	}
	if (e.pdu.Type() == spec.MRoomHistoryVisibility && e.pdu.StateKeyEquals("")) || own {
		after, err := v.s.snapshotMembers(ctx, *e.StateAfter)
		if err != nil {
			return false, err
		}
		return v.allows(ctx, after.Visibility(), after.ServerMembership(v.server))
	}
	return false, nil
}

// allows applies the rules to a visibility and the server's membership.
func (v *serverView) allows(ctx context.Context, visibility, membership string) (bool, error) {
	switch {
	case visibility == "world_readable", membership == spec.Join:
		return true, nil
	case visibility == "invited" && membership == spec.Invite:
		return true, nil
	case visibility == "shared":
		if v.joinedNow == nil {
			current, err := v.s.snapshotMembers(ctx, v.room.SnapshotNID)
			if err != nil {
				return false, err
			}
			joined := current.ServerMembership(v.server) == spec.Join
			v.joinedNow = &joined
		}
		return *v.joinedNow, nil
	}
	return false, nil
}

// queryRoomServers returns the servers with joined members: in the current
// state, or before or after an event.
func (s fedQuery) queryRoomServers(ctx context.Context, req *roomserverv1.QueryRoomServersRequest) (*roomserverv1.QueryRoomServersResponse, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return &roomserverv1.QueryRoomServersResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	nids := []int64{room.SnapshotNID}
	if req.GetEventId() != "" {
		events, err := s.roomEvents(ctx, room, []string{req.GetEventId()})
		if err != nil {
			return nil, err
		}
		e := events[0]
		if e.StateBefore == nil {
			return nil, fmt.Errorf("%w: %s is an outlier", ErrNoState, e.EventID)
		}
		nids = []int64{*e.StateBefore, *e.StateAfter}
	}
	var servers []string
	for _, nid := range nids {
		v, err := s.snapshotMembers(ctx, nid)
		if err != nil {
			return nil, err
		}
		for _, srv := range v.Servers() {
			if !slices.Contains(servers, srv) {
				servers = append(servers, srv)
			}
		}
	}
	slices.Sort(servers)
	return &roomserverv1.QueryRoomServersResponse{RoomExists: true, ServerNames: servers}, nil
}
