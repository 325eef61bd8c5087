package clientapi

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Ignored users (the m.ignored_user_list account data): their non-state
// events are left out of /sync timelines (sync_filter.go), /messages,
// /context, /relations and /threads (visibleEvents) and of bundled
// aggregations (relations.go), and their invites are not shown in /sync. State events they send are still shown, as the
// spec requires. The list is read on every request, so a change applies
// to the next one; events missed while a user was ignored are not sent
// when the user is un-ignored (the client does a fresh initial sync to get them).

const ignoredUserListType = "m.ignored_user_list"

// ignoredUserList is the content of m.ignored_user_list.
type ignoredUserList struct {
	IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
}

// ignoredUsers reads the user's ignored users (nil when none).
func ignoredUsers(ctx context.Context, rd store.Reader, userID string) (map[string]bool, error) {
	raw, err := rd.AccountDataEntry(ctx, userID, "", ignoredUserListType)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseIgnoredUsers(raw, userID), nil
}

// parseIgnoredUsers reads an m.ignored_user_list content (nil: none).
func parseIgnoredUsers(raw []byte, userID string) map[string]bool {
	if raw == nil {
		return nil
	}
	var l ignoredUserList
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

// checkIgnoredUserList validates a new m.ignored_user_list: ignored_users
// must be an object of user IDs, and users may not ignore themselves
// (M_INVALID_PARAM, as Synapse answers).
func checkIgnoredUserList(userID string, content []byte) error {
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
