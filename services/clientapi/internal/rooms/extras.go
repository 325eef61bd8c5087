package rooms

// Smaller client-server endpoints: GET /v1/rooms/{roomId}/timestamp_to_event,
// GET /v1/mutual_rooms, GET /v3/voip/turnServer, and GET
// /v1/room_summary/{roomIdOrAlias} (hierarchy.go).

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// timestampWindow is how many events on each side of the binary search's
// boundary are checked: origin_server_ts follows stream order only
// roughly (clocks and concurrent builds), so the closest event is looked
// for among the neighbours, and among the visible ones.
const timestampWindow = 50

// timestampToEvent is GET /v1/rooms/{roomId}/timestamp_to_event: the
// visible event closest to ts in the direction dir, from the client-API's
// copy of the room (no federation). Events are found by a binary search
// over the room's stream positions on their timestamps, then the
// neighbours of the boundary are compared.
func (s *Rooms) timestampToEvent(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return nil, matrixhttp.InvalidParam("ts must be a timestamp in milliseconds")
	}
	forward := false
	switch q.Get("dir") {
	case "f":
		forward = true
	case "b":
	default:
		return nil, matrixhttp.InvalidParam("dir must be f or b")
	}
	ctx := r.Context()
	rd := s.store.Reader()
	first, _, found, err := rd.FirstEventFrom(ctx, roomID, 0)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, matrixhttp.NotFound("No event found")
	}
	last, err := rd.MaxPos(ctx)
	if err != nil {
		return nil, err
	}
	// The first position whose next event is past ts (forward: at or past).
	lo, hi := first, last+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		at, ets, found, err := rd.FirstEventFrom(ctx, roomID, mid)
		if err != nil {
			return nil, err
		}
		if !found || ets > ts || (forward && ets == ts) {
			hi = mid
		} else {
			lo = at + 1
		}
	}
	before, err := rd.EventsAround(ctx, roomID, lo-1, false, timestampWindow)
	if err != nil {
		return nil, err
	}
	after, err := rd.EventsAround(ctx, roomID, lo, true, timestampWindow)
	if err != nil {
		return nil, err
	}
	visible, err := s.history.VisibleEvents(ctx, rd, dev.UserID, roomID, append(before, after...), clientevent.RoomEventFilter{})
	if err != nil {
		return nil, err
	}
	var best store.StoredEvent
	var bestTS int64
	for _, e := range visible {
		ets := eventTS(e.JSON)
		ok := ets <= ts
		if forward {
			ok = ets >= ts
		}
		if !ok {
			continue
		}
		better := best.EventID == "" || (!forward && (ets > bestTS || (ets == bestTS && e.Pos > best.Pos))) ||
			(forward && (ets < bestTS || (ets == bestTS && e.Pos < best.Pos)))
		if better {
			best, bestTS = e, ets
		}
	}
	if best.EventID == "" {
		return nil, matrixhttp.NotFound("No event found")
	}
	return map[string]any{"event_id": best.EventID, "origin_server_ts": bestTS}, nil
}

// eventTS is a stored event's origin_server_ts.
func eventTS(stored []byte) int64 {
	var ev struct {
		TS int64 `json:"origin_server_ts"`
	}
	_ = json.Unmarshal(stored, &ev)
	return ev.TS
}

// mutualRooms is GET /v1/mutual_rooms: the rooms the requester and another
// user are both joined to, in one batch.
func (s *Rooms) mutualRooms(r *http.Request, dev *httpapi.Device) (any, error) {
	other := r.URL.Query().Get("user_id")
	if other == "" {
		return nil, matrixhttp.MissingParam("user_id is required")
	}
	if other == dev.UserID {
		return nil, matrixhttp.InvalidParam("user_id is your own")
	}
	if clientevent.ServerOf(other) == "" {
		return nil, matrixhttp.InvalidParam("user_id is not a user ID")
	}
	if from := r.URL.Query().Get("from"); from != "" {
		return nil, matrixhttp.InvalidParam("Unknown from token: every result comes in one batch")
	}
	rooms, err := s.store.Reader().MutualRooms(r.Context(), dev.UserID, other)
	if err != nil {
		return nil, err
	}
	if rooms == nil {
		rooms = []string{}
	}
	return map[string]any{"joined": rooms, "count": len(rooms)}, nil
}
