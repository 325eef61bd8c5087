package history

// Erasure: POST /account/deactivate with "erase": true. The spec: users
// who join a room after the erasure are served redacted copies of the
// erased user's events, users who had visibility on them before still see
// them whole, no redactions are sent, and nothing goes over federation.
//
// store.Erase records the erasure with the client-API's room stream
// position at that moment (after the deactivation's leave events) and
// deletes the user's non-event data. Readers then decide per event
// (VisibilityFilter.servedErased): an event of an erased sender is served
// whole when the requester could see it with only their membership changes
// up to the erasure's position (canSee over that part of the log), and as
// a redacted copy otherwise (erasedCopy: the room version's redaction
// algorithm, gomatrixserverlib's, applied to the content). Search leaves
// such events out (their content is gone) and aggregations do not count
// them (their relation is gone).
//
// Covered: every event read from the client-API's own copy through the
// visibility filter, i.e. /sync timelines, /messages, /context, /event,
// /relations, /threads, bundled aggregations and /search. Not covered:
// room state (the /sync state section, /state, /members), which is served
// whole.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// erasureRefresh is how long a replica trusts its copy of the erased
// users. An erasure made through this replica takes effect at once; one
// made through another replica within this long.
const erasureRefresh = 10 * time.Second

// erasureCache is a replica's copy of the erased users table (small: it
// grows by one row per erased account).
type erasureCache struct {
	mu     sync.Mutex
	loaded time.Time
	users  map[string]int64
}

// erasedUsers returns the erased users and their erasure positions; the
// map must not be modified.
// It reads outside any snapshot the caller holds: erasures only get
// added, and one that lands during a request applies from the next.
func (s *Service) ErasedUsers(ctx context.Context) (map[string]int64, error) {
	c := &s.erasures
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users != nil && time.Since(c.loaded) < erasureRefresh {
		return c.users, nil
	}
	users, err := s.store.Reader().ErasedUsers(ctx)
	if err != nil {
		return nil, fmt.Errorf("read erased users: %w", err)
	}
	c.users, c.loaded = users, time.Now()
	return users, nil
}

// forgetErasures makes the next erasedUsers read the table again.
func (s *Service) ForgetErasures() {
	s.erasures.mu.Lock()
	s.erasures.users = nil
	s.erasures.mu.Unlock()
}

// upTo is the part of the timeline up to and including pos.
func (tl memberTimeline) upTo(pos int64) memberTimeline {
	for i, e := range tl {
		if e.Pos > pos {
			return tl[:i]
		}
	}
	return tl
}

// servedErased reports whether e, which the user may see, is to be served
// as a redacted copy: its sender is erased and the user could not have
// seen it before the erasure.
func (f VisibilityFilter) servedErased(e store.StoredEvent) bool {
	pos, ok := f.Erased[e.Sender]
	if !ok {
		return false
	}
	return !canSee(e, f.UserID, memberTimeline(f.Logs[e.RoomID]).upTo(pos))
}

// applyErasure replaces, in events the user may see, those servedErased
// picks by their redacted copies. Room versions are read outside the
// caller's snapshot (they never change), so it works after the snapshot
// ended.
func (s *Service) ApplyErasure(ctx context.Context, f VisibilityFilter, events []store.StoredEvent) error {
	if len(f.Erased) == 0 {
		return nil
	}
	versions := map[string]string{}
	for i, e := range events {
		if !f.servedErased(e) {
			continue
		}
		version, ok := versions[e.RoomID]
		if !ok {
			var err error
			if version, err = roomVersionOf(ctx, s.store.Reader(), e.RoomID); err != nil {
				return err
			}
			versions[e.RoomID] = version
		}
		raw, err := erasedCopy(e.JSON, version)
		if err != nil {
			return fmt.Errorf("erased copy of %s: %w", e.EventID, err)
		}
		events[i].JSON = raw
	}
	return nil
}

// roomVersionOf reads the room version from the room's create event in
// the client-API's state copy.
func roomVersionOf(ctx context.Context, rd store.Reader, roomID string) (string, error) {
	create, err := rd.CurrentStateEvent(ctx, roomID, "m.room.create", "")
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("room %s has no create event in the state copy", roomID)
	}
	if err != nil {
		return "", err
	}
	var ev struct {
		Content struct {
			RoomVersion string `json:"room_version"`
		} `json:"content"`
	}
	if err := json.Unmarshal(create.JSON, &ev); err != nil {
		return "", fmt.Errorf("decode the create event of %s: %w", roomID, err)
	}
	if ev.Content.RoomVersion == "" {
		return "1", nil // the spec's default
	}
	return ev.Content.RoomVersion, nil
}

// erasedCopy returns a stored client event with its content pruned as the
// room version's redaction algorithm prunes it, and without unsigned
// data (which may hold earlier content: prev_content). The other top-level
// keys a client event has all survive redaction.
func erasedCopy(stored []byte, roomVersion string) ([]byte, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, err
	}
	var ce clientevent.ClientEvent
	if err := json.Unmarshal(stored, &ce); err != nil {
		return nil, err
	}
	// The algorithm reads type and content, which a client event has where
	// a PDU has them, and returns the kept keys.
	redacted, err := verImpl.RedactEventJSON(stored)
	if err != nil {
		return nil, err
	}
	var kept struct {
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(redacted, &kept); err != nil {
		return nil, err
	}
	ce.Content, ce.Unsigned = kept.Content, nil
	if len(ce.Content) == 0 || string(ce.Content) == "null" {
		ce.Content = json.RawMessage("{}")
	}
	if ce.Type == "m.room.redaction" && ce.Redacts != "" {
		ce.Content = clientevent.WithContentRedacts(ce.Content, ce.Redacts)
	}
	return ce.Marshal()
}
