package fedreceiver

// The read endpoints: /event, /state, /state_ids, /backfill,
// /get_missing_events, /event_auth and /timestamp_to_event. Each checks the
// room's server ACL and, except /event, that the requesting server has a
// joined member in the room now (403 M_FORBIDDEN otherwise, as the spec's
// /state and /state_ids say and Synapse does for all of them); events
// pass the room-server's FilterEventsForServer (history visibility for
// servers: events the server may not see come back redacted).

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// txnResponse is the Transaction shape /event and /backfill answer with.
type txnResponse struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

func (s *Service) txnOf(events []*roomserverv1.Event) txnResponse {
	out := txnResponse{Origin: string(s.server), OriginServerTS: time.Now().UnixMilli(), PDUs: []json.RawMessage{}}
	for _, e := range events {
		out.PDUs = append(out.PDUs, e.GetEventJson())
	}
	return out
}

// serverInRoom reports whether server has a joined member in the room
// now (false for an unknown room).
func (s *Service) serverInRoom(ctx context.Context, roomID string, server spec.ServerName) (bool, error) {
	resp, err := s.rooms.QueryRoomServers(ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID})
	if err != nil {
		return false, err
	}
	return slices.Contains(resp.GetServerNames(), string(server)), nil
}

// roomRead checks a room-scoped read: the room's ACL allows the origin
// and the origin is in the room.
func (s *Service) roomRead(r *http.Request) (string, spec.ServerName, error) {
	ctx := r.Context()
	origin := federation.Origin(ctx)
	roomID, err := pathParam(r, "roomId")
	if err != nil {
		return "", "", err
	}
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return "", "", err
	}
	in, err := s.serverInRoom(ctx, roomID, origin)
	if err != nil {
		return "", "", err
	}
	if !in {
		return "", "", errNotInRoom
	}
	return roomID, origin, nil
}

// eventParam reads a required event ID query parameter.
func eventParam(r *http.Request, name string) (string, error) {
	id, err := queryParam(r, name)
	if err != nil {
		return "", err
	}
	if id == "" {
		return "", matrixhttp.MissingParam(name + " is required")
	}
	if !validEventID(id) {
		return "", matrixhttp.InvalidParam("Invalid " + name)
	}
	return id, nil
}

// serveEvent is GET /event/{eventId}: the event as the server may see
// it. A server that may not see it and is not in the room is refused.
func (s *Service) serveEvent(r *http.Request) (any, error) {
	ctx := r.Context()
	origin := federation.Origin(ctx)
	id, err := pathParam(r, "eventId")
	if err != nil {
		return nil, err
	}
	found, err := s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: []string{id}})
	if err != nil {
		return nil, err
	}
	if len(found.GetEvents()) == 0 || found.GetEvents()[0].GetRejected() {
		return nil, matrixhttp.NotFound("Event not found")
	}
	roomID := found.GetEvents()[0].GetRoomId()
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return nil, err
	}
	filtered, err := s.rooms.FilterEventsForServer(ctx, &roomserverv1.FilterEventsForServerRequest{ServerName: string(origin), EventIds: []string{id}})
	if err != nil {
		return nil, err
	}
	if len(filtered.GetEvents()) == 0 {
		return nil, matrixhttp.NotFound("Event not found")
	}
	ev := filtered.GetEvents()[0]
	if ev.GetRedactedForServer() {
		in, err := s.serverInRoom(ctx, roomID, origin)
		if err != nil {
			return nil, err
		}
		if !in {
			return nil, errNotInRoom
		}
	}
	return s.txnOf([]*roomserverv1.Event{ev}), nil
}

// stateAt answers /state and /state_ids.
func (s *Service) stateAt(r *http.Request, idsOnly bool) (*roomserverv1.QueryStateAndAuthChainResponse, error) {
	roomID, _, err := s.roomRead(r)
	if err != nil {
		return nil, err
	}
	eventID, err := eventParam(r, "event_id")
	if err != nil {
		return nil, err
	}
	if err := s.eventInRoom(r.Context(), roomID, eventID); err != nil {
		return nil, err
	}
	return s.rooms.QueryStateAndAuthChain(r.Context(), &roomserverv1.QueryStateAndAuthChainRequest{RoomId: roomID, EventId: eventID, IdsOnly: idsOnly})
}

// eventInRoom: the event is known, of the room and not rejected (404
// otherwise).
func (s *Service) eventInRoom(ctx context.Context, roomID, eventID string) error {
	found, err := s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: []string{eventID}})
	if err != nil {
		return err
	}
	if len(found.GetEvents()) == 0 || found.GetEvents()[0].GetRoomId() != roomID || found.GetEvents()[0].GetRejected() {
		return matrixhttp.NotFound("Event not found in this room")
	}
	return nil
}

func rawEvents(events []*roomserverv1.Event) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(events))
	for _, e := range events {
		out = append(out, e.GetEventJson())
	}
	return out
}

// serveState is GET /state/{roomId}?event_id=.
func (s *Service) serveState(r *http.Request) (any, error) {
	resp, err := s.stateAt(r, false)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdus": rawEvents(resp.GetState()), "auth_chain": rawEvents(resp.GetAuthChain())}, nil
}

// serveStateIDs is GET /state_ids/{roomId}?event_id=.
func (s *Service) serveStateIDs(r *http.Request) (any, error) {
	resp, err := s.stateAt(r, true)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdu_ids": nonNilStrings(resp.GetStateIds()), "auth_chain_ids": nonNilStrings(resp.GetAuthChainIds())}, nil
}

// maxWalk caps /backfill and /get_missing_events.
const maxWalk = 100

// serveBackfill is GET /backfill/{roomId}?v=...&limit=.
func (s *Service) serveBackfill(r *http.Request) (any, error) {
	roomID, origin, err := s.roomRead(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return nil, matrixhttp.MissingParam("v is required")
	}
	if len(from) > maxWalk {
		return nil, matrixhttp.InvalidParam("Too many v")
	}
	for _, id := range from {
		if !validEventID(id) {
			return nil, matrixhttp.InvalidParam("Invalid v")
		}
	}
	limitStr := q.Get("limit")
	if limitStr == "" {
		return nil, matrixhttp.MissingParam("limit is required")
	}
	limit, err := strconv.Atoi(limitStr)
	if err != nil || limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must be a non-negative integer")
	}
	limit = min(limit, maxWalk)
	resp, err := s.rooms.Backfill(r.Context(), &roomserverv1.BackfillRequest{RoomId: roomID, EventIds: from, Limit: int32(limit), ServerName: string(origin)})
	if err != nil {
		return nil, err
	}
	return s.txnOf(resp.GetEvents()), nil
}

// serveGetMissingEvents is POST /get_missing_events/{roomId}.
func (s *Service) serveGetMissingEvents(r *http.Request) (any, error) {
	roomID, origin, err := s.roomRead(r)
	if err != nil {
		return nil, err
	}
	var body struct {
		Limit          *int     `json:"limit"`
		MinDepth       int64    `json:"min_depth"`
		EarliestEvents []string `json:"earliest_events"`
		LatestEvents   []string `json:"latest_events"`
	}
	if _, err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.LatestEvents == nil || body.EarliestEvents == nil {
		return nil, matrixhttp.MissingParam("earliest_events and latest_events are required")
	}
	if len(body.LatestEvents) > maxWalk || len(body.EarliestEvents) > maxWalk*10 {
		return nil, matrixhttp.InvalidParam("Too many events named")
	}
	for _, id := range slices.Concat(body.LatestEvents, body.EarliestEvents) {
		if !validEventID(id) {
			return nil, matrixhttp.InvalidParam("Invalid event ID")
		}
	}
	limit := 10
	if body.Limit != nil {
		if *body.Limit < 0 {
			return nil, matrixhttp.InvalidParam("limit must not be negative")
		}
		limit = min(*body.Limit, maxWalk)
	}
	resp, err := s.rooms.GetMissingEvents(r.Context(), &roomserverv1.GetMissingEventsRequest{RoomId: roomID,
		EarliestEvents: body.EarliestEvents, LatestEvents: body.LatestEvents, Limit: int32(limit), MinDepth: body.MinDepth,
		ServerName: string(origin)})
	if err != nil {
		return nil, err
	}
	return map[string]any{"events": rawEvents(resp.GetEvents())}, nil
}

// serveEventAuth is GET /event_auth/{roomId}/{eventId}.
func (s *Service) serveEventAuth(r *http.Request) (any, error) {
	roomID, _, err := s.roomRead(r)
	if err != nil {
		return nil, err
	}
	eventID, err := pathParam(r, "eventId")
	if err != nil {
		return nil, err
	}
	if err := s.eventInRoom(r.Context(), roomID, eventID); err != nil {
		return nil, err
	}
	resp, err := s.rooms.QueryAuthChain(r.Context(), &roomserverv1.QueryAuthChainRequest{RoomId: roomID, EventIds: []string{eventID}})
	if err != nil {
		return nil, err
	}
	return map[string]any{"auth_chain": rawEvents(resp.GetAuthChain())}, nil
}

// serveTimestampToEvent is GET /timestamp_to_event/{roomId}?ts=&dir=.
func (s *Service) serveTimestampToEvent(r *http.Request) (any, error) {
	roomID, _, err := s.roomRead(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return nil, matrixhttp.InvalidParam("ts must be an integer")
	}
	dir := q.Get("dir")
	if dir != "f" && dir != "b" {
		return nil, matrixhttp.InvalidParam("dir must be f or b")
	}
	resp, err := s.rooms.QueryEventByTimestamp(r.Context(), &roomserverv1.QueryEventByTimestampRequest{RoomId: roomID, Ts: ts, Direction: dir})
	if err != nil {
		return nil, err
	}
	if !resp.GetFound() {
		return nil, matrixhttp.NotFound("No event found")
	}
	return map[string]any{"event_id": resp.GetEventId(), "origin_server_ts": resp.GetOriginServerTs()}, nil
}
