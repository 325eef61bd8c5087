package fedpeer

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
)

func notFound() (any, int) {
	return map[string]string{"errcode": "M_NOT_FOUND", "error": "unknown"}, http.StatusNotFound
}

func param(req *http.Request, name string) string {
	v, _ := url.PathUnescape(chi.URLParam(req, name))
	return v
}

// walkPrevLocked walks prev_events breadth first from the events of from
// (included when withFrom), skipping seen ones, keeping those that pass
// keep, up to limit.
func (s *Server) walkPrevLocked(from []string, withFrom bool, seen map[string]bool, limit int, keep func(gomatrixserverlib.PDU) bool) []gomatrixserverlib.PDU {
	var out []gomatrixserverlib.PDU
	var queue []string
	for _, id := range from {
		e := s.Events[id]
		switch {
		case e == nil:
		case withFrom:
			queue = append(queue, id)
		default:
			queue = append(queue, e.PDU.PrevEventIDs()...)
		}
	}
	for len(queue) > 0 && len(out) < limit {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		e := s.Events[id]
		if e == nil || !keep(e.PDU) {
			continue
		}
		out = append(out, e.PDU)
		queue = append(queue, e.PDU.PrevEventIDs()...)
	}
	return out
}

// serveMissing walks prev_events back from latest_events, not into
// earliest_events, down to min_depth, up to limit; oldest first.
func (s *Server) serveMissing(req *http.Request) (any, int) {
	var body fclient.MissingEvents
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
		return map[string]string{"errcode": "M_BAD_JSON"}, 400
	}
	s.Mu.Lock()
	defer s.Mu.Unlock()
	seen := map[string]bool{}
	for _, id := range slices.Concat(body.EarliestEvents, body.LatestEvents) {
		seen[id] = true
	}
	out := s.walkPrevLocked(body.LatestEvents, false, seen, body.Limit,
		func(ev gomatrixserverlib.PDU) bool { return ev.Depth() >= int64(body.MinDepth) })
	slices.SortFunc(out, func(a, b gomatrixserverlib.PDU) int { return int(a.Depth() - b.Depth()) })
	return map[string]any{"events": JSONs(out)}, 200
}

// serveBackfill answers /backfill: the events of v and those before them
// (prev_events, breadth first), up to limit.
func (s *Server) serveBackfill(req *http.Request) (any, int) {
	q := req.URL.Query()
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit < 1 || len(q["v"]) == 0 {
		return map[string]string{"errcode": "M_INVALID_PARAM", "error": "v and limit are required"}, 400
	}
	s.Mu.Lock()
	defer s.Mu.Unlock()
	out := s.walkPrevLocked(q["v"], true, map[string]bool{}, limit, func(gomatrixserverlib.PDU) bool { return true })
	return map[string]any{"origin": s.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": JSONs(out)}, 200
}

// JSONs are the events' JSON.
func JSONs(evs []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.JSON())
	}
	return out
}

// IDs are the events' IDs.
func IDs(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.EventID())
	}
	return out
}

// StateAndChain is the state before an event and its auth chain.
func (s *Server) StateAndChain(eventID string) (state, chain []gomatrixserverlib.PDU, ok bool) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	e := s.Events[eventID]
	if e == nil || e.StateBefore == nil {
		return nil, nil, false
	}
	for _, id := range e.StateBefore {
		if st := s.Events[id]; st != nil {
			state = append(state, st.PDU)
		}
	}
	return state, s.authChainLocked(state), true
}

func (s *Server) authChainLocked(of []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	seen := map[string]bool{}
	var out []gomatrixserverlib.PDU
	var queue []string
	for _, ev := range of {
		queue = append(queue, ev.AuthEventIDs()...)
	}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		if e := s.Events[id]; e != nil {
			out = append(out, e.PDU)
			queue = append(queue, e.PDU.AuthEventIDs()...)
		}
	}
	return out
}

func (s *Server) serveStateIDs(req *http.Request) (any, int) {
	state, chain, ok := s.StateAndChain(req.URL.Query().Get("event_id"))
	if !ok {
		return notFound()
	}
	return map[string]any{"pdu_ids": IDs(state), "auth_chain_ids": IDs(chain)}, 200
}

func (s *Server) serveState(req *http.Request) (any, int) {
	state, chain, ok := s.StateAndChain(req.URL.Query().Get("event_id"))
	if !ok {
		return notFound()
	}
	return map[string]any{"pdus": JSONs(state), "auth_chain": JSONs(chain)}, 200
}

func (s *Server) serveEvent(req *http.Request) (any, int) {
	s.Mu.Lock()
	e := s.Events[param(req, "eventId")]
	s.Mu.Unlock()
	if e == nil {
		return notFound()
	}
	return map[string]any{"origin": s.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{e.PDU.JSON()}}, 200
}

func (s *Server) serveEventAuth(req *http.Request) (any, int) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	e := s.Events[param(req, "eventId")]
	if e == nil {
		return notFound()
	}
	return map[string]any{"auth_chain": JSONs(s.authChainLocked([]gomatrixserverlib.PDU{e.PDU}))}, 200
}

// serveUserDevices answers /user/devices from Devices.
func (s *Server) serveUserDevices(req *http.Request) (any, int) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	devs, ok := s.Devices[param(req, "userId")]
	if !ok {
		return notFound()
	}
	return devs, 200
}

// serveInvite answers /invite v2: the invite, signed by the server too.
func (s *Server) serveInvite(req *http.Request) (any, int) {
	var body struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
		return map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()}, 400
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(body.RoomVersion))
	if err != nil {
		return map[string]string{"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": err.Error()}, 400
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(body.Event)
	if err != nil {
		return map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()}, 400
	}
	signed := ev.Sign(string(s.Name), s.KeyID, s.Key)
	return map[string]any{"event": json.RawMessage(signed.JSON())}, 200
}
