package rooms

// GET /rooms/{roomId}/hierarchy: a depth-first walk over m.space.child
// state events. Rooms this server is in are read from the client-API's
// current_state copy, and rooms the user cannot see or join are left out
// (and not descended into). Rooms this server is not in, the root or a
// child, are asked of their servers with federation's /hierarchy
// (remoteWalk), which answers for the requesting server's view.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/roomdir"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

const (
	// hierarchy bounds: default and maximum page size and depth, and the
	// most rooms one walk visits.
	hierarchyDefaultLimit = 50
	hierarchyMaxLimit     = 1000
	hierarchyDefaultDepth = 10
	hierarchyMaxDepth     = 50
	hierarchyMaxRooms     = 1000
)

// hierarchyRoom is one entry of the hierarchy response and spaceChild a
// valid m.space.child event (pkg/roomdir's, shared with the
// federation-receiver's /hierarchy).
type (
	hierarchyRoom = roomdir.HierarchyEntry
	spaceChild    = roomdir.Child
)

// hierarchyToken is "h<offset>_<max_depth>_<suggested_only>": the walk is
// recomputed for each page, so the token holds the position and the
// parameters that must not change.
func hierarchyToken(offset, depth int, suggested bool) string {
	return fmt.Sprintf("h%d_%d_%t", offset, depth, suggested)
}

func (s *Rooms) hierarchy(r *http.Request, dev *httpapi.Device) (any, error) {
	root, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	suggested := false
	if v := q.Get("suggested_only"); v != "" {
		if suggested, err = strconv.ParseBool(v); err != nil {
			return nil, matrixhttp.InvalidParam("suggested_only must be true or false")
		}
	}
	limit, err := httpapi.QueryInt(r, "limit", hierarchyDefaultLimit)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, matrixhttp.InvalidParam("limit must be greater than zero")
	}
	limit = min(limit, hierarchyMaxLimit)
	depth, err := httpapi.QueryInt(r, "max_depth", hierarchyDefaultDepth)
	if err != nil {
		return nil, err
	}
	if depth < 0 {
		return nil, matrixhttp.InvalidParam("max_depth must not be negative")
	}
	depth = min(depth, hierarchyMaxDepth)
	offset := 0
	if from := q.Get("from"); from != "" {
		var d int
		var sug bool
		if _, err := fmt.Sscanf(from, "h%d_%d_%t", &offset, &d, &sug); err != nil || offset < 0 {
			return nil, matrixhttp.InvalidParam("Unknown from token")
		}
		if d != int(depth) || sug != suggested {
			return nil, matrixhttp.InvalidParam("suggested_only and max_depth cannot change on paginated requests")
		}
	}

	rooms, err := s.walkHierarchy(r, dev, root, int(depth), suggested)
	if err != nil {
		return nil, err
	}
	return hierarchyPage(rooms, offset, int(limit), int(depth), suggested)
}

// hierarchyPage is one page of a hierarchy's rooms, from offset.
func hierarchyPage[T any](rooms []T, offset, limit, depth int, suggested bool) (any, error) {
	if offset > len(rooms) {
		return nil, matrixhttp.InvalidParam("Unknown from token")
	}
	end := min(offset+limit, len(rooms))
	resp := map[string]any{"rooms": rooms[offset:end]}
	if end < len(rooms) {
		resp["next_batch"] = hierarchyToken(end, depth, suggested)
	}
	return resp, nil
}

// hierarchyMaxRemoteAsks bounds the federation /hierarchy requests of one
// walk (one per remote space descended into).
const hierarchyMaxRemoteAsks = 50

// walkHierarchy returns the visible rooms below root, depth first. A room
// this server is in is read from the client-API's copy of its state; a
// room it is not in (with federation on) is asked of its servers with
// federation's /hierarchy, through the via servers of the m.space.child
// event that led to it (for the root, the request's via) and the room ID's
// server. That answer also summarises the room's children, so a child
// that is not descended into (a leaf, or at max_depth) costs no request of
// its own.
func (s *Rooms) walkHierarchy(r *http.Request, dev *httpapi.Device, root string, maxDepth int, suggested bool) ([]json.RawMessage, error) {
	type item struct {
		roomID string
		depth  int
		via    []string
	}
	w := &remoteWalk{s: s, r: r, suggested: suggested, summaries: map[string]remoteSummary{}, inaccessible: map[string]bool{}}
	stack := []item{{root, 0, r.URL.Query()["via"]}}
	seen := map[string]bool{}
	var out []json.RawMessage
	for len(stack) > 0 && len(seen) < hierarchyMaxRooms {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[it.roomID] {
			continue
		}
		seen[it.roomID] = true
		entry, children, visible, err := s.hierarchyNode(w, dev, it.roomID, it.via, it.depth < maxDepth, it.roomID == root)
		if err != nil {
			return nil, err
		}
		if !visible {
			if it.roomID == root {
				return nil, matrixhttp.Forbidden("You may not see this room")
			}
			continue
		}
		out = append(out, entry)
		if it.depth >= maxDepth {
			continue
		}
		for i := len(children) - 1; i >= 0; i-- {
			stack = append(stack, item{children[i].RoomID, it.depth + 1, childVia(children[i])})
		}
	}
	return out, nil
}

// hierarchyNode is one room of the walk: its entry, its ordered children
// (when descend) and whether the user may see it.
func (s *Rooms) hierarchyNode(w *remoteWalk, dev *httpapi.Device, roomID string, via []string, descend, isRoot bool) (json.RawMessage, []spaceChild, bool, error) {
	remote, err := s.throughRemote(w.r.Context(), roomID)
	if err != nil {
		return nil, nil, false, err
	}
	if !remote {
		entry, children, visible, err := s.hierarchyEntry(w.r, dev, roomID, w.suggested)
		if err != nil || !visible {
			return nil, nil, visible, err
		}
		raw, err := json.Marshal(entry)
		return raw, children, true, err
	}
	return w.node(roomID, via, descend, isRoot)
}

// remoteSummary is a room's entry as another server summarised it, and its
// children_state.
type remoteSummary struct {
	raw           json.RawMessage
	childrenState []json.RawMessage
}

// remoteWalk is the federation side of one hierarchy walk: the summaries
// learnt so far and the requests made.
type remoteWalk struct {
	s         *Rooms
	r         *http.Request
	suggested bool
	summaries map[string]remoteSummary
	// inaccessible are children an answer named as not visible to this
	// server: not asked again.
	inaccessible map[string]bool
	asks         int
}

// node is a room this server is not in: from a summary already learnt
// when it is not descended into, otherwise from its own /hierarchy. A
// child whose servers do not answer keeps the summary its parent's answer
// gave, without children; the root's failure is the request's.
func (w *remoteWalk) node(roomID string, via []string, descend, isRoot bool) (json.RawMessage, []spaceChild, bool, error) {
	if w.inaccessible[roomID] {
		return nil, nil, false, nil
	}
	sum, known := w.summaries[roomID]
	if !known || (descend && len(sum.childrenState) > 0) {
		if err := w.ask(roomID, via); err != nil {
			if isRoot {
				return nil, nil, false, err
			}
		}
		sum, known = w.summaries[roomID]
	}
	if !known {
		return nil, nil, false, nil
	}
	if !descend {
		return sum.raw, nil, true, nil
	}
	state := make([]roomdir.StateEvent, 0, len(sum.childrenState))
	for _, ev := range sum.childrenState {
		var k struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		}
		if json.Unmarshal(ev, &k) == nil && k.Type == roomdir.SpaceChildType {
			state = append(state, roomdir.StateEvent{Type: k.Type, StateKey: k.StateKey, JSON: ev})
		}
	}
	_, children, err := roomdir.Summarize(roomID, state, w.suggested)
	return sum.raw, children, true, err
}

// ask requests roomID's /hierarchy of its servers and learns the summaries
// of the room and its accessible children.
func (w *remoteWalk) ask(roomID string, via []string) error {
	s := w.s
	servers := s.otherServers(append(slices.Clone(via), serverOf(roomID)))
	if len(servers) == 0 {
		return matrixhttp.NotFound("No known servers to ask for the hierarchy of " + roomID)
	}
	if w.asks >= hierarchyMaxRemoteAsks {
		return httpapi.UnknownError(http.StatusBadGateway, "Too many servers to ask for this hierarchy")
	}
	w.asks++
	resp, err := s.fed.QueryHierarchy(w.r.Context(), &fedsenderv1.QueryHierarchyRequest{RoomId: roomID, ServerNames: servers, SuggestedOnly: w.suggested})
	if err != nil {
		return s.fromRemote(w.r.Context(), "QueryHierarchy", err)
	}
	var h struct {
		Room         json.RawMessage   `json:"room"`
		Children     []json.RawMessage `json:"children"`
		Inaccessible []string          `json:"inaccessible_children"`
	}
	if err := json.Unmarshal(resp.GetResponse(), &h); err != nil {
		return httpapi.UnknownError(http.StatusBadGateway, "The space's servers gave no hierarchy")
	}
	room, ok := parseSummary(h.Room)
	if !ok || room.RoomID != roomID {
		return httpapi.UnknownError(http.StatusBadGateway, "The space's servers gave no hierarchy")
	}
	w.summaries[roomID] = remoteSummary{raw: h.Room, childrenState: room.ChildrenState}
	// Children are learnt only when the room lists them, and never over
	// what their own answer said.
	listed := map[string]bool{}
	for _, ev := range room.ChildrenState {
		var k struct {
			StateKey string `json:"state_key"`
		}
		if json.Unmarshal(ev, &k) == nil {
			listed[k.StateKey] = true
		}
	}
	for _, raw := range h.Children {
		c, ok := parseSummary(raw)
		if _, known := w.summaries[c.RoomID]; ok && listed[c.RoomID] && !known {
			w.summaries[c.RoomID] = remoteSummary{raw: raw, childrenState: c.ChildrenState}
		}
	}
	for _, id := range h.Inaccessible {
		if listed[id] {
			w.inaccessible[id] = true
		}
	}
	return nil
}

// summaryKeys are what the walk reads of a room summary.
type summaryKeys struct {
	RoomID        string            `json:"room_id"`
	ChildrenState []json.RawMessage `json:"children_state"`
}

func parseSummary(raw json.RawMessage) (summaryKeys, bool) {
	var sum summaryKeys
	if len(raw) == 0 || json.Unmarshal(raw, &sum) != nil || sum.RoomID == "" {
		return summaryKeys{}, false
	}
	return sum, true
}

// childVia is the via list of an m.space.child event (its stripped form).
func childVia(c spaceChild) []string {
	var ev struct {
		Content struct {
			Via []string `json:"via"`
		} `json:"content"`
	}
	_ = json.Unmarshal(c.Stripped, &ev)
	return ev.Content.Via
}

// hierarchyEntry builds one room's entry and its ordered children, and
// says whether the user may see the room.
func (s *Rooms) hierarchyEntry(r *http.Request, dev *httpapi.Device, roomID string, suggested bool) (hierarchyRoom, []spaceChild, bool, error) {
	ctx := r.Context()
	reader := s.store.Reader()
	state, err := reader.CurrentState(ctx, roomID, roomdir.HierarchyStateTypes)
	if err != nil || len(state) == 0 {
		return hierarchyRoom{}, nil, false, err
	}
	entry, children, err := roomdir.Summarize(roomID, roomdirState(state), suggested)
	if err != nil {
		return hierarchyRoom{}, nil, false, err
	}
	membership := ""
	for _, e := range state {
		if e.Type == spec.MRoomMember && e.StateKey == dev.UserID {
			membership = e.Membership
		}
	}
	visible, err := s.mayPeekOrJoin(r, dev, entry, membership)
	return entry, children, visible, err
}

// mayPeekOrJoin is the hierarchy's visibility rule: joined or invited,
// world-readable, public or knockable, or restricted with the user joined
// to an allowed room.
func (s *Rooms) mayPeekOrJoin(r *http.Request, dev *httpapi.Device, entry hierarchyRoom, membership string) (bool, error) {
	switch {
	case membership == store.MembershipJoin, membership == store.MembershipInvite:
		return true, nil
	case membership == store.MembershipBan:
		return false, nil
	case entry.WorldReadable:
		return true, nil
	}
	switch entry.JoinRule {
	case "public", "knock", "knock_restricted":
		return true, nil
	case "restricted":
		for _, allowed := range entry.AllowedRoomIDs {
			m, err := s.store.Reader().Membership(r.Context(), dev.UserID, allowed)
			if err == nil && m.Membership == store.MembershipJoin {
				return true, nil
			}
		}
	}
	return false, nil
}

// roomSummary is GET /v1/room_summary/{roomIdOrAlias}: one room's entry as
// the hierarchy shows it, under the same visibility rule, plus the
// requester's membership. Authentication is optional: without it only
// rooms that are public, knockable or world-readable are shown. Rooms this
// server has no state for are not found (no federation).
func (s *Rooms) roomSummary(r *http.Request, dev *httpapi.Device) (any, error) {
	if dev == nil {
		dev = &httpapi.Device{} // the route's authentication is optional
	}
	target, err := httpapi.PathParam(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	roomID, err := s.resolveRoomIDOrAlias(r, target)
	if err != nil {
		return nil, err
	}
	entry, _, visible, err := s.hierarchyEntry(r, dev, roomID, false)
	if err != nil {
		return nil, err
	}
	if !visible {
		return nil, matrixhttp.NotFound("Room not found")
	}
	out := struct {
		publicRoom
		RoomVersion    string   `json:"room_version,omitempty"`
		Encryption     string   `json:"encryption,omitempty"`
		AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
		Membership     string   `json:"membership,omitempty"`
	}{publicRoom: entry.Entry, RoomVersion: entry.RoomVersion, Encryption: entry.Encryption, AllowedRoomIDs: entry.AllowedRoomIDs}
	if dev.UserID != "" {
		m, err := s.store.Reader().Membership(r.Context(), dev.UserID, roomID)
		if err == nil {
			out.Membership = m.Membership
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	return out, nil
}
