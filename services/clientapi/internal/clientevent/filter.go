package clientevent

import (
	"encoding/json"
	"slices"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Filter is a filter (POST /user/{userId}/filter) as /sync applies
// it: every field of the spec's Filter (internal/syncapi/filter.go applies them).
type Filter struct {
	EventFields []string     `json:"event_fields"`
	EventFormat string       `json:"event_format"`
	Presence    *EventFilter `json:"presence"`
	AccountData *EventFilter `json:"account_data"`
	Room        *RoomFilter  `json:"room"`
}

// EventFilter is the spec's EventFilter (presence and global account data).
type EventFilter struct {
	Limit      *int      `json:"limit"`
	Types      *[]string `json:"types"`
	NotTypes   []string  `json:"not_types"`
	Senders    *[]string `json:"senders"`
	NotSenders []string  `json:"not_senders"`
}

// RoomFilter is the spec's RoomFilter.
type RoomFilter struct {
	Rooms        *[]string        `json:"rooms"`
	NotRooms     []string         `json:"not_rooms"`
	IncludeLeave bool             `json:"include_leave"`
	Timeline     *RoomEventFilter `json:"timeline"`
	State        *RoomEventFilter `json:"state"`
	Ephemeral    *RoomEventFilter `json:"ephemeral"`
	AccountData  *RoomEventFilter `json:"account_data"`
}

// ParseFilter decodes and checks a filter JSON object.
func ParseFilter(raw []byte) (Filter, error) {
	var f Filter
	if !pkgce.IsObject(raw) {
		return f, matrixhttp.BadJSON("Filter must be a JSON object")
	}
	if err := httpapi.DecodeObject(raw, &f); err != nil {
		return f, err
	}
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return f, matrixhttp.BadJSON("event_format must be client or federation")
	}
	limits := []*int{}
	for _, ef := range []*EventFilter{f.Presence, f.AccountData} {
		if ef != nil {
			limits = append(limits, ef.Limit)
		}
	}
	if f.Room != nil {
		for _, rf := range []*RoomEventFilter{f.Room.Timeline, f.Room.State, f.Room.Ephemeral, f.Room.AccountData} {
			if rf != nil {
				limits = append(limits, rf.Limit)
			}
		}
	}
	for _, l := range limits {
		if l != nil && *l < 0 {
			return f, matrixhttp.BadJSON("limit must not be negative")
		}
	}
	for _, ef := range []*EventFilter{f.Presence, f.AccountData} {
		if ef != nil {
			if err := checkFilterIDs(nil, nil, ef.Senders, ef.NotSenders); err != nil {
				return f, err
			}
		}
	}
	if f.Room != nil {
		if err := checkFilterIDs(f.Room.Rooms, f.Room.NotRooms, nil, nil); err != nil {
			return f, err
		}
		for _, rf := range []*RoomEventFilter{f.Room.Timeline, f.Room.State, f.Room.Ephemeral, f.Room.AccountData} {
			if err := rf.checkIDs(); err != nil {
				return f, err
			}
		}
	}
	return f, nil
}

func (f Filter) TimelineLimit() *int {
	if f.Room == nil || f.Room.Timeline == nil {
		return nil
	}
	return f.Room.Timeline.Limit
}

// allowsRoom applies room.rooms and room.not_rooms.
func (f Filter) AllowsRoom(roomID string) bool {
	if f.Room == nil {
		return true
	}
	if slices.Contains(f.Room.NotRooms, roomID) {
		return false
	}
	return f.Room.Rooms == nil || slices.Contains(*f.Room.Rooms, roomID)
}

// unreadThreadNotifications: per-thread unread counts in /sync.
func (f Filter) UnreadThreadNotifications() bool {
	return f.Room != nil && f.Room.Timeline != nil && f.Room.Timeline.UnreadThreadNotifications
}

func (f Filter) IncludeLeave() bool { return f.Room != nil && f.Room.IncludeLeave }

// allowsRoomID applies a RoomEventFilter's rooms and not_rooms.
func (f *RoomEventFilter) AllowsRoomID(roomID string) bool {
	if f == nil {
		return true
	}
	if slices.Contains(f.NotRooms, roomID) {
		return false
	}
	return f.Rooms == nil || slices.Contains(*f.Rooms, roomID)
}

// restricts reports whether the filter can drop any event of a room.
func (f *RoomEventFilter) Restricts() bool {
	return f != nil && (f.Rooms != nil || len(f.NotRooms) > 0 || f.Types != nil || len(f.NotTypes) > 0 ||
		f.Senders != nil || len(f.NotSenders) > 0 || f.ContainsURL != nil)
}

// RawEvent is what the filters read of a rendered event.
type RawEvent struct {
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	Content struct {
		URL json.RawMessage `json:"url"`
	} `json:"content"`
}

// allowsRaw applies types, senders and contains_url to a rendered event.
func (f *RoomEventFilter) AllowsRaw(raw json.RawMessage) bool {
	if f == nil {
		return true
	}
	var e RawEvent
	_ = json.Unmarshal(raw, &e)
	return f.Allows(store.StoredEvent{Type: e.Type, Sender: e.Sender, JSON: raw})
}

// filterList keeps the events of a list the room event filter allows, up
// to its limit.
func (f *RoomEventFilter) FilterList(roomID string, list *EventList) {
	if f == nil {
		return
	}
	if !f.AllowsRoomID(roomID) {
		list.Events = []json.RawMessage{}
		return
	}
	if f.Restricts() {
		list.Events = slices.DeleteFunc(list.Events, func(raw json.RawMessage) bool { return !f.AllowsRaw(raw) })
	}
	if f.Limit != nil && len(list.Events) > *f.Limit {
		list.Events = list.Events[:*f.Limit]
	}
}

// filterList applies an EventFilter (types, senders, limit) to a list.
func (f *EventFilter) FilterList(list *EventList) {
	if f == nil {
		return
	}
	ref := RoomEventFilter{Types: f.Types, NotTypes: f.NotTypes, Senders: f.Senders, NotSenders: f.NotSenders, Limit: f.Limit}
	ref.FilterList("", list)
}

// lazyFilter returns the state filter when it asks for lazy loading.
func (f Filter) LazyFilter() *RoomEventFilter {
	if f.Room == nil || f.Room.State == nil || !f.Room.State.LazyLoadMembers {
		return nil
	}
	return f.Room.State
}
