package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// syncFilter is a filter (POST /user/{userId}/filter) as /sync applies
// it: every field of the spec's Filter (sync_filter.go applies them).
type syncFilter struct {
	EventFields []string     `json:"event_fields"`
	EventFormat string       `json:"event_format"`
	Presence    *eventFilter `json:"presence"`
	AccountData *eventFilter `json:"account_data"`
	Room        *roomFilter  `json:"room"`
}

// eventFilter is the spec's EventFilter (presence and global account data).
type eventFilter struct {
	Limit      *int      `json:"limit"`
	Types      *[]string `json:"types"`
	NotTypes   []string  `json:"not_types"`
	Senders    *[]string `json:"senders"`
	NotSenders []string  `json:"not_senders"`
}

// roomFilter is the spec's RoomFilter.
type roomFilter struct {
	Rooms        *[]string        `json:"rooms"`
	NotRooms     []string         `json:"not_rooms"`
	IncludeLeave bool             `json:"include_leave"`
	Timeline     *roomEventFilter `json:"timeline"`
	State        *roomEventFilter `json:"state"`
	Ephemeral    *roomEventFilter `json:"ephemeral"`
	AccountData  *roomEventFilter `json:"account_data"`
}

// parseFilter decodes and checks a filter JSON object.
func parseFilter(raw []byte) (syncFilter, error) {
	var f syncFilter
	if !isObject(raw) {
		return f, matrixhttp.BadJSON("Filter must be a JSON object")
	}
	if err := decodeObject(raw, &f); err != nil {
		return f, err
	}
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return f, matrixhttp.BadJSON("event_format must be client or federation")
	}
	limits := []*int{}
	for _, ef := range []*eventFilter{f.Presence, f.AccountData} {
		if ef != nil {
			limits = append(limits, ef.Limit)
		}
	}
	if f.Room != nil {
		for _, rf := range []*roomEventFilter{f.Room.Timeline, f.Room.State, f.Room.Ephemeral, f.Room.AccountData} {
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
	for _, ef := range []*eventFilter{f.Presence, f.AccountData} {
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
		for _, rf := range []*roomEventFilter{f.Room.Timeline, f.Room.State, f.Room.Ephemeral, f.Room.AccountData} {
			if err := rf.checkIDs(); err != nil {
				return f, err
			}
		}
	}
	return f, nil
}

func (f syncFilter) timelineLimit() *int {
	if f.Room == nil || f.Room.Timeline == nil {
		return nil
	}
	return f.Room.Timeline.Limit
}

// allowsRoom applies room.rooms and room.not_rooms.
func (f syncFilter) allowsRoom(roomID string) bool {
	if f.Room == nil {
		return true
	}
	if slices.Contains(f.Room.NotRooms, roomID) {
		return false
	}
	return f.Room.Rooms == nil || slices.Contains(*f.Room.Rooms, roomID)
}

// unreadThreadNotifications: per-thread unread counts in /sync.
func (f syncFilter) unreadThreadNotifications() bool {
	return f.Room != nil && f.Room.Timeline != nil && f.Room.Timeline.UnreadThreadNotifications
}

func (f syncFilter) includeLeave() bool { return f.Room != nil && f.Room.IncludeLeave }

// filterUser checks the {userId} of the filter endpoints is the caller.
func filterUser(r *http.Request, dev *device) error {
	userID, err := pathParam(r, "userId")
	if err != nil {
		return err
	}
	if userID != dev.UserID {
		return matrixhttp.Forbidden("Cannot use filters of other users")
	}
	return nil
}

// createFilter is POST /user/{userId}/filter.
func (s *Service) createFilter(r *http.Request, dev *device) (any, error) {
	if err := filterUser(r, dev); err != nil {
		return nil, err
	}
	body, err := readObject(r, bodyRequired)
	if err != nil {
		return nil, err
	}
	if _, err := parseFilter(body); err != nil {
		return nil, err
	}
	id, err := s.store.CreateFilter(r.Context(), dev.UserID, body)
	if err != nil {
		return nil, err
	}
	return map[string]string{"filter_id": strconv.FormatInt(id, 10)}, nil
}

// getFilter is GET /user/{userId}/filter/{filterId}.
func (s *Service) getFilter(r *http.Request, dev *device) (any, error) {
	if err := filterUser(r, dev); err != nil {
		return nil, err
	}
	idStr, err := pathParam(r, "filterId")
	if err != nil {
		return nil, err
	}
	id, err := strconv.ParseInt(idStr, 10, 64)
	if err != nil {
		return nil, matrixhttp.NotFound("No such filter")
	}
	raw, err := s.store.Filter(r.Context(), dev.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such filter")
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(raw), nil
}

// syncFilterParam resolves /sync's filter parameter: inline JSON when it
// starts with '{', otherwise a filter ID of the caller.
func (s *Service) syncFilterParam(r *http.Request, dev *device) (syncFilter, error) {
	v := r.URL.Query().Get("filter")
	if v == "" {
		return syncFilter{}, nil
	}
	if strings.HasPrefix(strings.TrimSpace(v), "{") {
		if !json.Valid([]byte(v)) {
			return syncFilter{}, matrixhttp.NotJSON("Filter is not valid JSON")
		}
		return parseFilter([]byte(v))
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return syncFilter{}, matrixhttp.InvalidParam("Unknown filter")
	}
	raw, err := s.store.Filter(r.Context(), dev.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return syncFilter{}, matrixhttp.InvalidParam("Unknown filter")
	}
	if err != nil {
		return syncFilter{}, err
	}
	return parseFilter(raw)
}
