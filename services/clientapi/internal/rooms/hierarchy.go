package rooms

// GET /rooms/{roomId}/hierarchy for rooms on this server: a depth-first
// walk over m.space.child state events, read from the client-API's
// current_state copy. Rooms the user cannot see or join are left out (and
// not descended into); children this server does not know are skipped. A
// space this server is not in is asked of its servers (remoteHierarchy).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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

	remote, err := s.throughRemote(r.Context(), root)
	if err != nil {
		return nil, err
	}
	if remote {
		rooms, err := s.remoteHierarchy(r, root, int(depth), suggested)
		if err != nil {
			return nil, err
		}
		return hierarchyPage(rooms, offset, int(limit), int(depth), suggested)
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

// remoteHierarchy is the hierarchy of a space this server is not in, as
// the servers in it answer federation's /hierarchy (asked through the via
// servers and the room ID's, in turn): the space and, below max_depth 0,
// its children (one level: the answer's depth).
func (s *Rooms) remoteHierarchy(r *http.Request, root string, depth int, suggested bool) ([]json.RawMessage, error) {
	servers := s.otherServers(append(r.URL.Query()["via"], serverOf(root)))
	if len(servers) == 0 {
		return nil, matrixhttp.NotFound("No known servers to ask for the hierarchy of " + root)
	}
	resp, err := s.fed.QueryHierarchy(r.Context(), &fedsenderv1.QueryHierarchyRequest{RoomId: root, ServerNames: servers, SuggestedOnly: suggested})
	if err != nil {
		return nil, s.fromRemote(r.Context(), "QueryHierarchy", err)
	}
	var h struct {
		Room     json.RawMessage   `json:"room"`
		Children []json.RawMessage `json:"children"`
	}
	if err := json.Unmarshal(resp.GetResponse(), &h); err != nil || len(h.Room) == 0 {
		return nil, httpapi.UnknownError(http.StatusBadGateway, "The space's servers gave no hierarchy")
	}
	rooms := []json.RawMessage{h.Room}
	if depth > 0 {
		rooms = append(rooms, h.Children...)
	}
	return rooms, nil
}

// walkHierarchy returns the visible rooms below root, depth first.
func (s *Rooms) walkHierarchy(r *http.Request, dev *httpapi.Device, root string, maxDepth int, suggested bool) ([]hierarchyRoom, error) {
	type item struct {
		roomID string
		depth  int
	}
	stack := []item{{root, 0}}
	seen := map[string]bool{}
	var out []hierarchyRoom
	for len(stack) > 0 && len(seen) < hierarchyMaxRooms {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[it.roomID] {
			continue
		}
		seen[it.roomID] = true
		entry, children, visible, err := s.hierarchyEntry(r, dev, it.roomID, suggested)
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
			stack = append(stack, item{children[i].RoomID, it.depth + 1})
		}
	}
	return out, nil
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
