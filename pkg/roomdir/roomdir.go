// Package roomdir builds the room directory's and the space hierarchy's
// entries from a room's current state, and pages the public room list.
// The client-API (from its copy of the current state) and the
// federation-receiver (from the room-server's) both call it, so
// /publicRooms and /hierarchy show the same entries to clients and to
// other servers.
package roomdir

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// SpaceChildType is the state event type of a space's child.
const SpaceChildType = "m.space.child"

// StateTypes are the state types an entry is made of (Summarize also
// reads SpaceChildType and m.room.encryption for hierarchy entries).
var StateTypes = []string{
	spec.MRoomCreate, spec.MRoomName, "m.room.topic", "m.room.avatar", spec.MRoomCanonicalAlias,
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess, spec.MRoomMember,
}

// HierarchyStateTypes are StateTypes plus what hierarchy entries need.
var HierarchyStateTypes = append(slices.Clone(StateTypes), SpaceChildType, "m.room.encryption")

// StateEvent is one current state event of a room.
type StateEvent struct {
	Type, StateKey string
	// JSON is the event (at least its content, sender and
	// origin_server_ts).
	JSON []byte
	// Membership of an m.room.member event.
	Membership string
}

// Entry is one room of the public room list (the spec's
// PublishedRoomsChunk).
type Entry struct {
	RoomID           string  `json:"room_id"`
	NumJoinedMembers int     `json:"num_joined_members"`
	WorldReadable    bool    `json:"world_readable"`
	GuestCanJoin     bool    `json:"guest_can_join"`
	Name             string  `json:"name,omitempty"`
	Topic            string  `json:"topic,omitempty"`
	AvatarURL        string  `json:"avatar_url,omitempty"`
	CanonicalAlias   string  `json:"canonical_alias,omitempty"`
	JoinRule         string  `json:"join_rule,omitempty"`
	RoomType         *string `json:"room_type,omitempty"`
}

// HierarchyEntry is one room of the space hierarchy: its entry plus its
// m.space.child events (stripped) and what summaries add.
type HierarchyEntry struct {
	Entry
	ChildrenState  []json.RawMessage `json:"children_state"`
	RoomVersion    string            `json:"room_version,omitempty"`
	Encryption     string            `json:"encryption,omitempty"`
	AllowedRoomIDs []string          `json:"allowed_room_ids,omitempty"`
}

// Child is a valid m.space.child of a room.
type Child struct {
	RoomID    string
	Order     string
	TS        int64
	Suggested bool
	// Stripped is the event as children_state shows it.
	Stripped json.RawMessage
}

// EntryOf builds a room's directory entry from its current state.
func EntryOf(roomID string, state []StateEvent) Entry {
	pr := Entry{RoomID: roomID}
	for _, e := range state {
		if e.Type == spec.MRoomMember {
			if e.Membership == spec.Join {
				pr.NumJoinedMembers++
			}
			continue
		}
		var ev struct {
			Content struct {
				Name              string  `json:"name"`
				Topic             string  `json:"topic"`
				URL               string  `json:"url"`
				Alias             string  `json:"alias"`
				JoinRule          string  `json:"join_rule"`
				HistoryVisibility string  `json:"history_visibility"`
				GuestAccess       string  `json:"guest_access"`
				Type              *string `json:"type"`
			} `json:"content"`
		}
		if json.Unmarshal(e.JSON, &ev) != nil || e.StateKey != "" {
			continue
		}
		c := ev.Content
		switch e.Type {
		case spec.MRoomCreate:
			pr.RoomType = c.Type
		case spec.MRoomName:
			pr.Name = c.Name
		case "m.room.topic":
			pr.Topic = c.Topic
		case "m.room.avatar":
			pr.AvatarURL = c.URL
		case spec.MRoomCanonicalAlias:
			pr.CanonicalAlias = c.Alias
		case spec.MRoomJoinRules:
			pr.JoinRule = c.JoinRule
		case spec.MRoomHistoryVisibility:
			pr.WorldReadable = c.HistoryVisibility == "world_readable"
		case spec.MRoomGuestAccess:
			pr.GuestCanJoin = c.GuestAccess == "can_join"
		}
	}
	if pr.JoinRule == "" {
		pr.JoinRule = "invite"
	}
	return pr
}

// Summarize builds a room's hierarchy entry and its children from its
// current state (HierarchyStateTypes), children in the spec's order:
// those with a valid order first, by order; then by origin_server_ts;
// then by room ID. With suggestedOnly, only suggested children are
// returned (children_state still lists them all).
func Summarize(roomID string, state []StateEvent, suggestedOnly bool) (HierarchyEntry, []Child, error) {
	entry := HierarchyEntry{Entry: EntryOf(roomID, state), ChildrenState: []json.RawMessage{}, RoomVersion: "1"}
	var children []Child
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
		case SpaceChildType:
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
				return HierarchyEntry{}, nil, err
			}
			entry.ChildrenState = append(entry.ChildrenState, stripped)
			if suggestedOnly && !c.Suggested {
				continue
			}
			order, _ := c.Order.(string)
			if !ValidChildOrder(order) {
				order = ""
			}
			children = append(children, Child{RoomID: e.StateKey, Order: order, TS: ev.OriginServerTS, Suggested: c.Suggested, Stripped: stripped})
		}
	}
	slices.SortFunc(children, func(a, b Child) int {
		switch {
		case a.Order != "" && b.Order == "":
			return -1
		case a.Order == "" && b.Order != "":
			return 1
		case a.Order != b.Order:
			return strings.Compare(a.Order, b.Order)
		case a.TS != b.TS:
			if a.TS < b.TS {
				return -1
			}
			return 1
		}
		return strings.Compare(a.RoomID, b.RoomID)
	})
	return entry, children, nil
}

// ValidChildOrder: m.space.child "order" is at most 50 printable ASCII
// characters (0x20–0x7E).
func ValidChildOrder(o string) bool {
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

// ErrInvalidToken is a since token Page did not make.
var ErrInvalidToken = errors.New("invalid since token")

// Request is what /publicRooms asks (POST's body; GET has limit and since
// only).
type Request struct {
	Limit  *int64 `json:"limit"`
	Since  string `json:"since"`
	Filter struct {
		GenericSearchTerm string    `json:"generic_search_term"`
		RoomTypes         []*string `json:"room_types"`
	} `json:"filter"`
	IncludeAllNetworks   bool   `json:"include_all_networks"`
	ThirdPartyInstanceID string `json:"third_party_instance_id"`
}

// MaxLimit caps a page.
const MaxLimit = 1000

// Page filters the entries by the request's search term and room types,
// orders them by joined members (most first), then room ID, and returns
// the requested page as the /publicRooms response. since tokens are
// offsets into that order ("n<i>" next, "p<i>" previous, both meaning
// "start at i").
func Page(entries []Entry, req Request) (map[string]any, error) {
	offset := 0
	if req.Since != "" {
		n, err := ParseToken(req.Since)
		if err != nil {
			return nil, err
		}
		offset = n
	}
	limit := 0
	if req.Limit != nil && *req.Limit > 0 {
		limit = int(min(*req.Limit, MaxLimit))
	}
	term := strings.ToLower(strings.TrimSpace(req.Filter.GenericSearchTerm))
	rooms := make([]Entry, 0, len(entries))
	for _, pr := range entries {
		if term != "" && !strings.Contains(strings.ToLower(pr.Name+"\n"+pr.Topic+"\n"+pr.CanonicalAlias), term) {
			continue
		}
		if req.Filter.RoomTypes != nil && !slices.ContainsFunc(req.Filter.RoomTypes, func(t *string) bool {
			return (t == nil && pr.RoomType == nil) || (t != nil && pr.RoomType != nil && *t == *pr.RoomType)
		}) {
			continue
		}
		rooms = append(rooms, pr)
	}
	slices.SortStableFunc(rooms, func(a, b Entry) int {
		if a.NumJoinedMembers != b.NumJoinedMembers {
			return b.NumJoinedMembers - a.NumJoinedMembers
		}
		return strings.Compare(a.RoomID, b.RoomID)
	})
	resp := map[string]any{"total_room_count_estimate": len(rooms)}
	offset = min(offset, len(rooms))
	end := len(rooms)
	if limit > 0 {
		end = min(offset+limit, len(rooms))
		if offset > 0 {
			resp["prev_batch"] = "p" + strconv.Itoa(max(offset-limit, 0))
		}
	}
	if end < len(rooms) {
		resp["next_batch"] = "n" + strconv.Itoa(end)
	}
	resp["chunk"] = rooms[offset:end]
	return resp, nil
}

// ParseToken reads a since token of Page.
func ParseToken(tok string) (int, error) {
	if len(tok) < 2 || (tok[0] != 'n' && tok[0] != 'p') {
		return 0, ErrInvalidToken
	}
	n, err := strconv.Atoi(tok[1:])
	if err != nil || n < 0 {
		return 0, ErrInvalidToken
	}
	return n, nil
}
