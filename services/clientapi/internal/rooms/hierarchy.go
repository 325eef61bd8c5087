package rooms

// GET /rooms/{roomId}/hierarchy for rooms on this server: a depth-first
// walk over m.space.child state events, read from the client-API's
// current_state copy. Rooms the user cannot see or join are left out (and
// not descended into); rooms this server does not know are skipped until
// federation can fill them in.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

const (
	spaceChildType = "m.space.child"
	// hierarchy bounds: default and maximum page size and depth, and the
	// most rooms one walk visits.
	hierarchyDefaultLimit = 50
	hierarchyMaxLimit     = 1000
	hierarchyDefaultDepth = 10
	hierarchyMaxDepth     = 50
	hierarchyMaxRooms     = 1000
)

// hierarchyRoom is one entry of the hierarchy response.
type hierarchyRoom struct {
	publicRoom
	ChildrenState  []json.RawMessage `json:"children_state"`
	RoomVersion    string            `json:"room_version,omitempty"`
	Encryption     string            `json:"encryption,omitempty"`
	AllowedRoomIDs []string          `json:"allowed_room_ids,omitempty"`
}

// spaceChild is a valid m.space.child event.
type spaceChild struct {
	roomID string
	order  string
	ts     int64
	// stripped is the event as children_state shows it.
	stripped json.RawMessage
}

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
	if offset > len(rooms) {
		return nil, matrixhttp.InvalidParam("Unknown from token")
	}
	end := min(offset+int(limit), len(rooms))
	resp := map[string]any{"rooms": rooms[offset:end]}
	if end < len(rooms) {
		resp["next_batch"] = hierarchyToken(end, int(depth), suggested)
	}
	return resp, nil
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
			stack = append(stack, item{children[i].roomID, it.depth + 1})
		}
	}
	return out, nil
}

// hierarchyEntry builds one room's entry and its ordered children, and
// says whether the user may see the room.
func (s *Rooms) hierarchyEntry(r *http.Request, dev *httpapi.Device, roomID string, suggested bool) (hierarchyRoom, []spaceChild, bool, error) {
	ctx := r.Context()
	reader := s.store.Reader()
	state, err := reader.CurrentState(ctx, roomID, append(slices.Clone(directoryStateTypes), spaceChildType, "m.room.encryption"))
	if err != nil || len(state) == 0 {
		return hierarchyRoom{}, nil, false, err
	}
	entry := hierarchyRoom{publicRoom: directoryEntry(roomID, state), ChildrenState: []json.RawMessage{}, RoomVersion: "1"}
	var children []spaceChild
	membership := ""
	for _, e := range state {
		var ev struct {
			Content        json.RawMessage `json:"content"`
			OriginServerTS int64           `json:"origin_server_ts"`
			Sender         string          `json:"sender"`
		}
		if err := json.Unmarshal(e.JSON, &ev); err != nil {
			continue
		}
		switch e.Type {
		case spec.MRoomMember:
			if e.StateKey == dev.UserID {
				membership = e.Membership
			}
		case spec.MRoomCreate:
			var c struct {
				RoomVersion string `json:"room_version"`
			}
			if json.Unmarshal(ev.Content, &c) == nil && c.RoomVersion != "" {
				entry.RoomVersion = c.RoomVersion
			}
		case "m.room.encryption":
			var c struct {
				Algorithm string `json:"algorithm"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			entry.Encryption = c.Algorithm
		case spec.MRoomJoinRules:
			var c struct {
				Allow []struct {
					Type   string `json:"type"`
					RoomID string `json:"room_id"`
				} `json:"allow"`
			}
			_ = json.Unmarshal(ev.Content, &c)
			for _, a := range c.Allow {
				if a.Type == spec.MRoomMembership && a.RoomID != "" {
					entry.AllowedRoomIDs = append(entry.AllowedRoomIDs, a.RoomID)
				}
			}
		case spaceChildType:
			var c struct {
				Via       []string `json:"via"`
				Order     any      `json:"order"`
				Suggested bool     `json:"suggested"`
			}
			if json.Unmarshal(ev.Content, &c) != nil || len(c.Via) == 0 {
				continue // no via: not a child
			}
			if _, err := spec.NewRoomID(e.StateKey); err != nil {
				continue
			}
			stripped, err := json.Marshal(map[string]any{
				"type": e.Type, "state_key": e.StateKey, "content": ev.Content,
				"sender": ev.Sender, "origin_server_ts": ev.OriginServerTS,
			})
			if err != nil {
				return hierarchyRoom{}, nil, false, err
			}
			entry.ChildrenState = append(entry.ChildrenState, stripped)
			if suggested && !c.Suggested {
				continue
			}
			order, _ := c.Order.(string)
			if !validChildOrder(order) {
				order = ""
			}
			children = append(children, spaceChild{roomID: e.StateKey, order: order, ts: ev.OriginServerTS, stripped: stripped})
		}
	}
	// The spec's ordering: children with a valid order first, by order;
	// then by origin_server_ts; then by room ID.
	slices.SortFunc(children, func(a, b spaceChild) int {
		switch {
		case a.order != "" && b.order == "":
			return -1
		case a.order == "" && b.order != "":
			return 1
		case a.order != b.order:
			return strings.Compare(a.order, b.order)
		case a.ts != b.ts:
			return int(a.ts - b.ts)
		}
		return strings.Compare(a.roomID, b.roomID)
	})
	visible, err := s.mayPeekOrJoin(r, dev, entry, membership)
	return entry, children, visible, err
}

// validChildOrder: m.space.child "order" is at most 50 printable ASCII
// characters (0x20–0x7E).
func validChildOrder(o string) bool {
	if o == "" || len(o) > 50 {
		return false
	}
	for i := 0; i < len(o); i++ {
		if o[i] < 0x20 || o[i] > 0x7e {
			return false
		}
	}
	return true
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
	}{publicRoom: entry.publicRoom, RoomVersion: entry.RoomVersion, Encryption: entry.Encryption, AllowedRoomIDs: entry.AllowedRoomIDs}
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
