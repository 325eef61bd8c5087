package clientevent

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"

	"maunium.net/go/mautrix/id"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// RoomEventFilter is the spec's RoomEventFilter. /messages and /context
// (the filter parameter) apply types, not_types, senders, not_senders,
// contains_url and lazy_load_members (the senders' member events in the
// response's state; members are always sent again there). /sync
// (internal/syncapi/filter.go) also applies limit, rooms, not_rooms and
// include_redundant_members.
type RoomEventFilter struct {
	Limit                   *int      `json:"limit"`
	Rooms                   *[]string `json:"rooms"`
	NotRooms                []string  `json:"not_rooms"`
	Types                   *[]string `json:"types"`
	NotTypes                []string  `json:"not_types"`
	Senders                 *[]string `json:"senders"`
	NotSenders              []string  `json:"not_senders"`
	ContainsURL             *bool     `json:"contains_url"`
	LazyLoadMembers         bool      `json:"lazy_load_members"`
	IncludeRedundantMembers bool      `json:"include_redundant_members"`
	// UnreadThreadNotifications asks /sync for per-thread unread counts.
	UnreadThreadNotifications bool `json:"unread_thread_notifications"`
}

// ParseRoomEventFilter parses the filter query parameter ("" = none).
func ParseRoomEventFilter(v string) (RoomEventFilter, error) {
	var f RoomEventFilter
	if v == "" {
		return f, nil
	}
	if !pkgce.IsObject([]byte(v)) {
		return f, matrixhttp.BadJSON("filter must be a JSON object")
	}
	if err := httpapi.DecodeObject([]byte(v), &f); err != nil {
		return f, err
	}
	return f, f.checkIDs()
}

// checkIDs refuses room and user ID lists holding something that is not
// a room or user ID (M_BAD_JSON): such a filter could never match.
func (f *RoomEventFilter) checkIDs() error {
	if f == nil {
		return nil
	}
	return checkFilterIDs(f.Rooms, f.NotRooms, f.Senders, f.NotSenders)
}

// checkFilterIDs checks the rooms, not_rooms, senders and not_senders
// lists of a filter.
func checkFilterIDs(rooms *[]string, notRooms []string, senders *[]string, notSenders []string) error {
	for _, list := range [][]string{deref(rooms), notRooms} {
		for _, r := range list {
			// Room IDs are opaque after the sigil ("!" + localpart and,
			// before room version 12, ":" + server name).
			if len(r) < 2 || r[0] != '!' {
				return matrixhttp.BadJSON("Filter: " + strconv.Quote(r) + " is not a room ID")
			}
		}
	}
	for _, list := range [][]string{deref(senders), notSenders} {
		for _, u := range list {
			if _, _, err := id.UserID(u).Parse(); err != nil {
				return matrixhttp.BadJSON("Filter: " + strconv.Quote(u) + " is not a user ID")
			}
		}
	}
	return nil
}

func deref(l *[]string) []string {
	if l == nil {
		return nil
	}
	return *l
}

// TypeMatches matches an event type against a filter pattern, where '*'
// stands for any run of characters.
func TypeMatches(pattern, typ string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == typ
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(typ, parts[0]) {
		return false
	}
	rest := typ[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(rest, p)
		}
		j := strings.Index(rest, p)
		if j < 0 {
			return false
		}
		rest = rest[j+len(p):]
	}
	return true
}

func (f RoomEventFilter) AllowsType(typ string) bool {
	if slices.ContainsFunc(f.NotTypes, func(p string) bool { return TypeMatches(p, typ) }) {
		return false
	}
	return f.Types == nil || slices.ContainsFunc(*f.Types, func(p string) bool { return TypeMatches(p, typ) })
}

// allows applies the filter to one stored event.
func (f RoomEventFilter) Allows(e store.StoredEvent) bool {
	if !f.AllowsType(e.Type) || slices.Contains(f.NotSenders, e.Sender) {
		return false
	}
	if f.Senders != nil && !slices.Contains(*f.Senders, e.Sender) {
		return false
	}
	if f.ContainsURL != nil {
		var ev struct {
			Content struct {
				URL json.RawMessage `json:"url"`
			} `json:"content"`
		}
		_ = json.Unmarshal(e.JSON, &ev)
		if (len(ev.Content.URL) > 0) != *f.ContainsURL {
			return false
		}
	}
	return true
}
