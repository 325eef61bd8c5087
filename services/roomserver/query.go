package roomserver

// Read-only queries. They read committed data on the pool; snapshots and
// parsed events come from the caches when they can.

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

func (e *eventEntry) proto() *roomserverv1.Event {
	return &roomserverv1.Event{
		EventId: e.EventID, RoomId: e.RoomID, RoomVersion: e.RoomVersion,
		EventJson: e.pdu.JSON(), Rejected: e.Rejected, SoftFailed: e.SoftFailed, Outlier: e.Outlier,
	}
}

func (s *Service) queryEvents(ctx context.Context, ids []string) ([]*roomserverv1.Event, error) {
	found, err := s.eventsByID(ctx, s.store.Queries, ids)
	if err != nil {
		return nil, err
	}
	out := make([]*roomserverv1.Event, 0, len(found))
	for _, e := range found {
		out = append(out, e.proto())
	}
	return out, nil
}

// stateEvents returns the events of st, all of them or those at filter.
func (s *Service) stateEvents(ctx context.Context, st stateMap, filter []*roomserverv1.StateKeyTuple) ([]*roomserverv1.Event, error) {
	entries, err := s.stateEntries(ctx, st, filter)
	if err != nil {
		return nil, err
	}
	out := make([]*roomserverv1.Event, len(entries))
	for i, e := range entries {
		out[i] = e.proto()
	}
	return out, nil
}

func (s *Service) stateEntries(ctx context.Context, st stateMap, filter []*roomserverv1.StateKeyTuple) ([]*eventEntry, error) {
	var nids []int64
	if len(filter) == 0 {
		nids = make([]int64, 0, len(st))
		for _, ev := range st {
			nids = append(nids, ev)
		}
	} else {
		keys := make([]store.StateKey, len(filter))
		for i, f := range filter {
			keys[i] = store.StateKey{Type: f.GetType(), StateKey: f.GetStateKey()}
		}
		found, err := s.stateKeyNIDs(ctx, s.store.Queries, keys)
		if err != nil {
			return nil, err
		}
		seen := map[int64]bool{}
		for _, k := range keys {
			if skNID, ok := found[k]; ok && !seen[skNID] {
				seen[skNID] = true
				if ev, ok := st[skNID]; ok {
					nids = append(nids, ev)
				}
			}
		}
	}
	entries, err := s.loadEvents(ctx, s.store.Queries, nids)
	if err != nil {
		return nil, err
	}
	out := make([]*eventEntry, 0, len(nids))
	for _, nid := range nids {
		out = append(out, entries[nid])
	}
	return out, nil
}

// stateAt returns the state before (or after) an event.
func (s *Service) stateAt(ctx context.Context, eventID string, after bool) (*eventEntry, stateMap, error) {
	found, err := s.eventsByID(ctx, s.store.Queries, []string{eventID})
	if err != nil {
		return nil, nil, err
	}
	e, ok := found[eventID]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s", ErrEventNotFound, eventID)
	}
	nid := e.StateBefore
	if after {
		nid = e.StateAfter
	}
	if nid == nil {
		return nil, nil, fmt.Errorf("%w: %s is an outlier", ErrNoState, eventID)
	}
	sn, err := s.loadState(ctx, s.store.Queries, *nid)
	if err != nil {
		return nil, nil, err
	}
	return e, sn.state, nil
}

func (s *Service) queryState(ctx context.Context, req *roomserverv1.QueryStateRequest) (*roomserverv1.QueryStateResponse, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return &roomserverv1.QueryStateResponse{}, nil
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
		e, at, err := s.stateAt(ctx, req.GetEventId(), req.GetAfter())
		if err != nil {
			return nil, err
		}
		if e.RoomNID != room.NID {
			return nil, fmt.Errorf("%w: %s is not in %s", ErrEventNotFound, req.GetEventId(), room.RoomID)
		}
		st = at
	}
	events, err := s.stateEvents(ctx, st, req.GetFilter())
	if err != nil {
		return nil, err
	}
	return &roomserverv1.QueryStateResponse{RoomExists: true, RoomVersion: room.Version, State: events}, nil
}

// queryStateBatch returns the state before each known event; unknown
// events and outliers are left out of the answer.
func (s *Service) queryStateBatch(ctx context.Context, req *roomserverv1.QueryStateBatchRequest) (*roomserverv1.QueryStateBatchResponse, error) {
	resp := &roomserverv1.QueryStateBatchResponse{}
	for _, id := range req.GetEventIds() {
		_, st, err := s.stateAt(ctx, id, false)
		if errors.Is(err, ErrEventNotFound) || errors.Is(err, ErrNoState) {
			continue
		} else if err != nil {
			return nil, err
		}
		events, err := s.stateEvents(ctx, st, req.GetFilter())
		if err != nil {
			return nil, err
		}
		resp.States = append(resp.States, &roomserverv1.StateAtEvent{EventId: id, State: events})
	}
	return resp, nil
}

func (s *Service) queryMembership(ctx context.Context, req *roomserverv1.QueryMembershipRequest) (*roomserverv1.QueryMembershipResponse, error) {
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return &roomserverv1.QueryMembershipResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	resp := &roomserverv1.QueryMembershipResponse{RoomExists: true, RoomVersion: room.Version}
	sn, err := s.loadState(ctx, s.store.Queries, room.SnapshotNID)
	if err != nil {
		return nil, err
	}
	entries, err := s.stateEntries(ctx, sn.state, []*roomserverv1.StateKeyTuple{{Type: spec.MRoomMember, StateKey: req.GetUserId()}})
	if err != nil {
		return nil, err
	}
	if len(entries) == 1 {
		resp.Membership, _ = entries[0].pdu.Membership()
		resp.Event = entries[0].proto()
	}
	return resp, nil
}

func (s *Service) queryRoomInfo(ctx context.Context, roomID string) (*roomserverv1.QueryRoomInfoResponse, error) {
	room, err := s.room(ctx, roomID)
	if errors.Is(err, store.ErrNotFound) {
		return &roomserverv1.QueryRoomInfoResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	ext, err := s.loadEvents(ctx, s.store.Queries, room.Extremities)
	if err != nil {
		return nil, err
	}
	resp := &roomserverv1.QueryRoomInfoResponse{RoomExists: true, RoomVersion: room.Version, Depth: room.Depth}
	for _, nid := range room.Extremities {
		resp.ForwardExtremities = append(resp.ForwardExtremities, ext[nid].EventID)
	}
	return resp, nil
}
