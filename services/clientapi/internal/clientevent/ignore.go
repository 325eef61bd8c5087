package clientevent

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Ignored users (the m.ignored_user_list account data): their non-state
// events are left out of /sync timelines (internal/syncapi), /messages,
// /context, /relations and /threads (visibleEvents) and of bundled
// aggregations (internal/history), and their invites are not shown in /sync. State events they send are still shown, as the
// spec requires. The list is read on every request, so a change applies
// to the next one; events missed while a user was ignored are not sent
// when the user is un-ignored (the client does a fresh initial sync to get them).

const IgnoredUserListType = "m.ignored_user_list"

// IgnoredUserList is the content of m.ignored_user_list.
type IgnoredUserList struct {
	IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
}

// IgnoredUsers reads the user's ignored users (nil when none).
func IgnoredUsers(ctx context.Context, rd store.Reader, userID string) (map[string]bool, error) {
	raw, err := rd.AccountDataEntry(ctx, userID, "", IgnoredUserListType)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseIgnoredUsers(raw, userID), nil
}

// ParseIgnoredUsers reads an m.ignored_user_list content (nil: none).
func ParseIgnoredUsers(raw []byte, userID string) map[string]bool {
	if raw == nil {
		return nil
	}
	var l IgnoredUserList
	if json.Unmarshal(raw, &l) != nil || len(l.IgnoredUsers) == 0 {
		return nil
	}
	out := make(map[string]bool, len(l.IgnoredUsers))
	for u := range l.IgnoredUsers {
		if u != userID { // one's own events are never hidden
			out[u] = true
		}
	}
	return out
}

// CheckIgnoredUserList validates a new m.ignored_user_list: ignored_users
// must be an object of user IDs, and users may not ignore themselves
// (M_INVALID_PARAM, as Synapse answers).
func CheckIgnoredUserList(userID string, content []byte) error {
	var l struct {
		IgnoredUsers *map[string]json.RawMessage `json:"ignored_users"`
	}
	if err := httpapi.DecodeObject(content, &l); err != nil {
		return err
	}
	if l.IgnoredUsers == nil {
		return matrixhttp.BadJSON("ignored_users is required")
	}
	if _, ok := (*l.IgnoredUsers)[userID]; ok {
		return matrixhttp.InvalidParam("You cannot ignore yourself")
	}
	return nil
}
