package syncapi

// The legacy (pre-r0) sync endpoints the spec still defines, all
// deprecated except peeking: GET /initialSync, GET /rooms/{roomId}/initialSync,
// GET /events (the event stream, and its peeking form with room_id) and
// GET /events/{eventId}. They are built on /sync's machinery: the same
// snapshot reads (readSync, buildSync), ephemeral and account data, stream
// tokens (an /initialSync's end is a valid /sync since and /events from),
// visibility rules and notifier.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// withRoomID adds room_id to a rendered event (sync timelines omit it).
func withRoomID(raw json.RawMessage, roomID string) (json.RawMessage, error) {
	var ev map[string]json.RawMessage
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, err
	}
	id, err := json.Marshal(roomID)
	if err != nil {
		return nil, err
	}
	ev["room_id"] = id
	return json.Marshal(ev)
}

func withRoomIDs(list []json.RawMessage, roomID string) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(list))
	for _, raw := range list {
		r, err := withRoomID(raw, roomID)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// paginationChunk is a room's "messages" in the legacy responses.
type paginationChunk struct {
	Start string            `json:"start,omitempty"`
	End   string            `json:"end"`
	Chunk []json.RawMessage `json:"chunk"`
}

// roomInfo is one room of /initialSync, and the body of /rooms/{id}/initialSync.
type roomInfo struct {
	RoomID      string            `json:"room_id"`
	Membership  string            `json:"membership,omitempty"`
	Invite      json.RawMessage   `json:"invite,omitempty"`
	Messages    *paginationChunk  `json:"messages,omitempty"`
	State       []json.RawMessage `json:"state,omitzero"`
	Visibility  string            `json:"visibility,omitempty"`
	AccountData []json.RawMessage `json:"account_data,omitzero"`
}

// roomVisibility is the room's directory visibility (public or private).
func (s *Service) roomVisibility(ctx context.Context, roomID string) (string, error) {
	resp, err := s.rooms.GetRoomVisibility(ctx, &roomserverv1.GetRoomVisibilityRequest{RoomId: roomID})
	if err != nil {
		return "", s.fromGRPC(ctx, "GetRoomVisibility", err, nil)
	}
	if resp.GetVisibility() == "" {
		return "private", nil
	}
	return resp.GetVisibility(), nil
}

// initialSync is GET /initialSync (deprecated): an initial /sync, reshaped.
func (s *Service) initialSync(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := refuseAppserviceSender(dev); err != nil {
		return nil, err
	}
	ctx := r.Context()
	limit, err := httpapi.QueryInt(r, "limit", int64(s.cfg.DefaultTimelineLimit))
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	opts := syncOptions{limit: int(min(limit, int64(s.cfg.MaxTimelineLimit)))}
	switch r.URL.Query().Get("archived") {
	case "", "false":
	case "true":
		opts.filter, _ = clientevent.ParseFilter([]byte(`{"room":{"include_leave":true}}`))
	default:
		return nil, matrixhttp.InvalidParam("archived must be true or false")
	}
	resp, d, err := s.buildSync(ctx, dev, opts)
	if err != nil {
		return nil, err
	}
	pos := d.pos
	epos, err := s.addEphemeral(ctx, dev, opts, resp, pos, d.memberships)
	if err != nil {
		return nil, err
	}
	apos, err := s.syncAccountData(ctx, dev.UserID, 0, true, opts.filter, resp, nil)
	if err != nil {
		return nil, err
	}
	rd := s.store.Reader()
	memberships, err := rd.Memberships(ctx, dev.UserID)
	if err != nil {
		return nil, err
	}
	end := clientevent.StreamToken{Pos: pos, EPos: epos, APos: apos}.String()
	rooms := []roomInfo{}
	for _, m := range memberships {
		info := roomInfo{RoomID: m.RoomID, Membership: m.Membership}
		var tl timelineBatch
		var accountData []json.RawMessage
		switch {
		case resp.Rooms.Join[m.RoomID] != nil && m.Membership == store.MembershipJoin:
			jr := resp.Rooms.Join[m.RoomID]
			tl, accountData = jr.Timeline, jr.AccountData.Events
		case resp.Rooms.Leave[m.RoomID] != nil:
			lr := resp.Rooms.Leave[m.RoomID]
			tl, accountData = lr.Timeline, lr.AccountData.Events
		case resp.Rooms.Invite[m.RoomID] != nil && m.Membership == store.MembershipInvite:
			own, err := rd.CurrentStateEvent(ctx, m.RoomID, "m.room.member", dev.UserID)
			if err != nil {
				return nil, err
			}
			if info.Invite, err = clientevent.Render(own.JSON, m.RoomID, ""); err != nil {
				return nil, err
			}
			rooms = append(rooms, info)
			continue
		default:
			continue // knocks, filtered rooms
		}
		acc := history.RoomAccess{Bound: -1}
		if m.Membership != store.MembershipJoin {
			acc = history.RoomAccess{Bound: m.Pos, AtEventID: m.EventID}
		}
		chunk, err := withRoomIDs(tl.Events, m.RoomID)
		if err != nil {
			return nil, err
		}
		info.Messages = &paginationChunk{Start: tl.PrevBatch, End: end, Chunk: chunk}
		if info.State, err = s.history.RoomState(ctx, m.RoomID, acc); err != nil {
			return nil, err
		}
		if info.Visibility, err = s.roomVisibility(ctx, m.RoomID); err != nil {
			return nil, err
		}
		info.AccountData = nonNil(accountData)
		rooms = append(rooms, info)
	}
	return map[string]any{
		"end":          end,
		"rooms":        rooms,
		"presence":     nonNil(resp.Presence.Events),
		"account_data": nonNil(resp.AccountData.Events),
	}, nil
}

func nonNil(l []json.RawMessage) []json.RawMessage {
	if l == nil {
		return []json.RawMessage{}
	}
	return l
}

// roomInitialSync is GET /rooms/{roomId}/initialSync: the room's latest
// visible messages, state and the user's room account data, for members,
// former members (as of their leave) and peekers of world_readable rooms.
func (s *Service) roomInitialSync(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	limit, err := httpapi.QueryInt(r, "limit", int64(s.cfg.DefaultTimelineLimit))
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	limit = min(limit, int64(s.cfg.MaxTimelineLimit))
	ctx := r.Context()
	acc, err := s.history.AccessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	info := roomInfo{RoomID: roomID}
	rd := s.store.Reader()
	if m, err := rd.Membership(ctx, dev.UserID, roomID); err == nil {
		info.Membership = m.Membership
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	var chunk paginationChunk
	err = s.store.Snapshot(ctx, func(rd store.Reader) error {
		from, err := rd.MaxPos(ctx)
		if err != nil {
			return err
		}
		if acc.Bound >= 0 {
			from = min(from, acc.Bound)
		}
		page, err := rd.Messages(ctx, roomID, store.Backward, from, -1, acc.Bound, int(limit))
		if err != nil {
			return err
		}
		visible, err := s.history.VisibleEvents(ctx, rd, dev.UserID, roomID, page.Events, clientevent.RoomEventFilter{})
		if err != nil {
			return err
		}
		slices.Reverse(visible)
		chunk.End = clientevent.StreamToken{Pos: from}.String()
		if page.More && len(page.Events) > 0 {
			chunk.Start = clientevent.StreamToken{Pos: page.Events[len(page.Events)-1].Pos - 1}.String()
		}
		chunk.Chunk, err = s.history.RenderAll(ctx, rd, dev, visible, true)
		return err
	})
	if err != nil {
		return nil, err
	}
	info.Messages = &chunk
	if info.State, err = s.history.RoomState(ctx, roomID, acc); err != nil {
		return nil, err
	}
	if info.Visibility, err = s.roomVisibility(ctx, roomID); err != nil {
		return nil, err
	}
	entries, _, err := rd.AccountDataSince(ctx, dev.UserID, 0)
	if err != nil {
		return nil, err
	}
	info.AccountData = []json.RawMessage{}
	for _, e := range entries {
		if e.RoomID != roomID {
			continue
		}
		ev, err := json.Marshal(map[string]any{"type": e.Type, "content": json.RawMessage(e.Content)})
		if err != nil {
			return nil, err
		}
		info.AccountData = append(info.AccountData, ev)
	}
	return info, nil
}

// eventsResponse is the body of GET /events.
type eventsResponse struct {
	Start string            `json:"start"`
	End   string            `json:"end"`
	Chunk []json.RawMessage `json:"chunk"`
}

// events is GET /events (deprecated): the user's event stream after
// from (default: now), long-polling up to timeout. Each response is an
// incremental /sync flattened into one list: new room events of joined
// (and just-left) rooms in stream order, the user's new invites, then
// typing, receipts and presence. With room_id it is the peeking form.
func (s *Service) events(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := refuseAppserviceSender(dev); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	timeoutMS, err := httpapi.QueryInt(r, "timeout", 0)
	if err != nil {
		return nil, err
	}
	timeout := min(time.Duration(max(timeoutMS, 0))*time.Millisecond, s.cfg.MaxTimeout)
	var from *clientevent.StreamToken
	if v := q.Get("from"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
		from = &t
	}
	if roomID := q.Get("room_id"); roomID != "" {
		return s.peekEvents(r, dev, roomID, from, timeout)
	}
	ctx := r.Context()
	if from == nil {
		// Now: the current positions, found the way an initial sync finds them.
		pos, err := s.store.Reader().MaxPos(ctx)
		if err != nil {
			return nil, err
		}
		scratch := &syncResponse{Rooms: syncRooms{Join: map[string]*joinedRoom{}}}
		epos, err := s.addEphemeral(ctx, dev, syncOptions{}, scratch, pos, nil)
		if err != nil {
			return nil, err
		}
		from = &clientevent.StreamToken{Pos: pos, EPos: epos}
	}
	opts := syncOptions{since: from, limit: s.cfg.MaxTimelineLimit}
	deadline := time.Now().Add(timeout)
	for {
		woken := s.notifier.WakeCount(dev.UserID)
		chunk, pos, epos, err := s.eventStream(ctx, dev, opts)
		if err != nil {
			return nil, err
		}
		end := clientevent.StreamToken{Pos: pos, EPos: epos, APos: from.APos}
		if len(chunk) > 0 || timeout <= 0 || !time.Now().Before(deadline) {
			return eventsResponse{Start: from.String(), End: end.String(), Chunk: chunk}, nil
		}
		waitCtx, cancel := context.WithDeadline(ctx, deadline)
		s.notifier.WaitSync(waitCtx, dev.UserID, notifier.SyncCursor{Pos: pos, EPos: epos, Wakes: woken})
		cancel()
		if ctx.Err() != nil || s.notifier.IsClosed() {
			return eventsResponse{Start: from.String(), End: end.String(), Chunk: []json.RawMessage{}}, nil
		}
	}
}

// eventStream reads one incremental step of the event stream.
func (s *Service) eventStream(ctx context.Context, dev *httpapi.Device, opts syncOptions) (chunk []json.RawMessage, pos, epos int64, err error) {
	var d syncData
	err = s.store.Snapshot(ctx, func(rd store.Reader) error {
		var err error
		d, err = s.readSync(ctx, rd, dev, opts)
		return err
	})
	if err != nil {
		return nil, 0, 0, err
	}
	// Only what happened after from: a newly joined room's timeline would
	// also carry its history.
	var events []store.StoredEvent
	for _, tl := range d.timelines {
		for _, e := range tl.Events {
			if e.Pos > opts.since.Pos {
				events = append(events, e)
			}
		}
	}
	slices.SortFunc(events, func(a, b store.StoredEvent) int { return int(a.Pos - b.Pos) })
	if chunk, err = s.history.RenderAll(ctx, s.store.Reader(), dev, events, true); err != nil {
		return nil, 0, 0, err
	}
	for roomID, state := range d.invites {
		for _, e := range state {
			if e.Type == "m.room.member" && e.StateKey == dev.UserID {
				raw, err := clientevent.Render(e.JSON, roomID, "")
				if err != nil {
					return nil, 0, 0, err
				}
				chunk = append(chunk, raw)
			}
		}
	}
	eph := &syncResponse{Rooms: syncRooms{Join: map[string]*joinedRoom{}}}
	if epos, err = s.addEphemeral(ctx, dev, opts, eph, d.pos, d.memberships); err != nil {
		return nil, 0, 0, err
	}
	for roomID, jr := range eph.Rooms.Join {
		list, err := withRoomIDs(jr.Ephemeral.Events, roomID)
		if err != nil {
			return nil, 0, 0, err
		}
		chunk = append(chunk, list...)
	}
	chunk = append(chunk, eph.Presence.Events...)
	if chunk == nil {
		chunk = []json.RawMessage{}
	}
	return chunk, d.pos, epos, nil
}

// peekEvents is GET /events?room_id=: one room's new events for anyone
// who may read it (members, and peekers of world_readable rooms).
func (s *Service) peekEvents(r *http.Request, dev *httpapi.Device, roomID string, from *clientevent.StreamToken, timeout time.Duration) (any, error) {
	ctx := r.Context()
	if _, err := spec.NewRoomID(roomID); err != nil {
		return nil, matrixhttp.InvalidParam("Invalid room ID")
	}
	acc, err := s.history.AccessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	if from == nil {
		pos, err := s.store.Reader().MaxPos(ctx)
		if err != nil {
			return nil, err
		}
		from = &clientevent.StreamToken{Pos: pos}
	}
	deadline := time.Now().Add(timeout)
	after := from.Pos
	for {
		rd := s.store.Reader()
		page, err := rd.Messages(ctx, roomID, store.Forward, after, -1, acc.Bound, s.cfg.MaxTimelineLimit)
		if err != nil {
			return nil, err
		}
		visible, err := s.history.VisibleEvents(ctx, rd, dev.UserID, roomID, page.Events, clientevent.RoomEventFilter{})
		if err != nil {
			return nil, err
		}
		if n := len(page.Events); n > 0 {
			after = page.Events[n-1].Pos
		}
		chunk, err := s.history.RenderAll(ctx, rd, dev, visible, true)
		if err != nil {
			return nil, err
		}
		end := clientevent.StreamToken{Pos: after, EPos: from.EPos, APos: from.APos}
		if len(chunk) > 0 || timeout <= 0 || !time.Now().Before(deadline) || (acc.Bound >= 0 && after >= acc.Bound) {
			return eventsResponse{Start: from.String(), End: end.String(), Chunk: chunk}, nil
		}
		waitCtx, cancel := context.WithDeadline(ctx, deadline)
		s.notifier.WaitRoom(waitCtx, roomID, after)
		cancel()
		if ctx.Err() != nil || s.notifier.IsClosed() {
			return eventsResponse{Start: from.String(), End: end.String(), Chunk: []json.RawMessage{}}, nil
		}
	}
}

// getEventByID is GET /events/{eventId} (deprecated): the event, if the
// user may see it.
func (s *Service) getEventByID(r *http.Request, dev *httpapi.Device) (any, error) {
	eventID, err := httpapi.PathParam(r, "eventId")
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	rd := s.store.Reader()
	e, err := rd.EventByIDAnyRoom(ctx, eventID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, history.ErrEventNotFound()
	} else if err != nil {
		return nil, err
	}
	if _, err := s.history.VisibleEvent(ctx, rd, dev.UserID, e.RoomID, eventID); err != nil {
		return nil, err
	}
	out, err := s.history.RenderAll(ctx, rd, dev, []store.StoredEvent{e}, true)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
