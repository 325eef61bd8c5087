package history

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// RoomAccess is what part of a room a user may read.
type RoomAccess struct {
	// Bound is the last stream position the user may see; -1: no bound.
	Bound int64
	// AtEventID, when set, is the user's leave event: state is read as of it.
	AtEventID string
}

// AccessRoom checks that the user is, or was, joined to the room. The
// client-API's own membership copy is asked first; when it says no, the
// room-server (which may be ahead of the copy) decides.
func (s *Service) AccessRoom(r *http.Request, userID, roomID string) (RoomAccess, error) {
	ctx := r.Context()
	m, err := s.store.Reader().Membership(ctx, userID, roomID)
	switch {
	case err == nil && m.Membership == store.MembershipJoin:
		return RoomAccess{Bound: -1}, nil
	case err == nil && (m.Membership == store.MembershipLeave || m.Membership == store.MembershipBan) && m.JoinPos > 0:
		acc := RoomAccess{Bound: m.Pos, AtEventID: m.EventID}
		// Events of a world_readable room are readable by anyone, so the
		// leave does not bound them (the per-event rules still apply).
		if vis, err := s.store.Reader().CurrentVisibility(ctx, roomID); err != nil {
			return RoomAccess{}, err
		} else if vis == store.VisibilityWorldReadable {
			acc.Bound = -1
		}
		return acc, nil
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return RoomAccess{}, err
	}
	resp, err := s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: userID})
	if err != nil {
		return RoomAccess{}, s.fromGRPC(ctx, "QueryMembership", err, nil)
	}
	if resp.GetMembership() == store.MembershipJoin {
		return RoomAccess{Bound: -1}, nil
	}
	// Anyone may read a world_readable room; the per-event rules decide
	// which events (see visibility.go).
	if vis, err := s.store.Reader().CurrentVisibility(ctx, roomID); err != nil {
		return RoomAccess{}, err
	} else if vis == store.VisibilityWorldReadable {
		return RoomAccess{Bound: -1}, nil
	}
	return RoomAccess{}, matrixhttp.Forbidden("You aren't a member of the room")
}

// messagesResponse is the body of GET /rooms/{roomId}/messages.
type messagesResponse struct {
	Start string            `json:"start"`
	End   string            `json:"end,omitempty"`
	Chunk []json.RawMessage `json:"chunk"`
	State []json.RawMessage `json:"state"`
}

// maxMessagesLimit caps /messages' limit.
const maxMessagesLimit = 1000

// messages is GET /rooms/{roomId}/messages: pagination over the
// client-API's event stream, with the same tokens as /sync.
func (s *Service) messages(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	var dir store.Direction
	switch q.Get("dir") {
	case "b":
		dir = store.Backward
	case "f":
		dir = store.Forward
	case "":
		return nil, matrixhttp.MissingParam("dir is required")
	default:
		return nil, matrixhttp.InvalidParam("dir must be b or f")
	}
	limit, err := httpapi.QueryInt(r, "limit", 10)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	limit = min(limit, maxMessagesLimit)
	to := int64(-1)
	if v := q.Get("to"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid to token")
		}
		to = t.Pos
	}
	var from clientevent.StreamToken
	hasFrom := q.Get("from") != ""
	if hasFrom {
		if from, err = clientevent.ParseStreamToken(q.Get("from")); err != nil {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
	}
	evFilter, err := clientevent.ParseRoomEventFilter(q.Get("filter"))
	if err != nil {
		return nil, err
	}
	acc, err := s.AccessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	reader := s.store.Reader()
	if !hasFrom && dir == store.Backward {
		if from.Pos, err = reader.MaxPos(r.Context()); err != nil {
			return nil, err
		}
	}
	page, err := reader.Messages(r.Context(), roomID, dir, from.Pos, to, acc.Bound, int(limit))
	if err != nil {
		return nil, err
	}
	// The start of the copy's history of a room joined over federation:
	// fetch earlier history from the servers in the room, then read the
	// page again.
	if dir == store.Backward && to == -1 && !page.More && s.backfill(r.Context(), roomID, int(limit)) {
		if page, err = reader.Messages(r.Context(), roomID, dir, from.Pos, to, acc.Bound, int(limit)); err != nil {
			return nil, err
		}
		// The page ends at the copy's earliest event, yet other servers
		// may have more before it: the next page asks them.
		if n := len(page.Events); !page.More && n > 0 && page.Events[n-1].Type != "m.room.create" {
			page.More = true
		}
	}
	// Pages are cut before filtering, so tokens stay continuous; a page may
	// hold fewer events than limit (or none) and still have an end token.
	visible, err := s.VisibleEvents(r.Context(), reader, dev.UserID, roomID, page.Events, evFilter)
	if err != nil {
		return nil, err
	}
	resp := messagesResponse{Start: from.String(), State: []json.RawMessage{}}
	if resp.Chunk, err = s.RenderAll(r.Context(), reader, dev, visible, true); err != nil {
		return nil, err
	}
	if evFilter.LazyLoadMembers {
		if resp.State, err = s.lazyMembers(r.Context(), roomID, visible); err != nil {
			return nil, err
		}
	}
	if page.More && len(page.Events) > 0 {
		last := page.Events[len(page.Events)-1].Pos
		if dir == store.Backward {
			last--
		}
		resp.End = clientevent.StreamToken{Pos: last}.String()
	}
	return resp, nil
}

// roomStateFor is the room's state as the user may see it: current while
// joined (or peeking), as of their leave otherwise.
func (s *Service) RoomState(ctx context.Context, roomID string, acc RoomAccess) ([]json.RawMessage, error) {
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: acc.AtEventID, After: acc.AtEventID != ""})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryState", err, nil)
	}
	return clientevent.RenderPDUs(st.GetState(), true)
}
