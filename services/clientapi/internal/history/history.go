package history

// GET /rooms/{roomId}/event/{eventId} and GET /rooms/{roomId}/context/{eventId}.
// Both read the client-API's own event copy and apply the history
// visibility rules (visibility.go); an event the user may not see is
// reported as not found, as the spec asks.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// visibleEvents keeps the events of one room the user may see and the
// filter allows, leaving out ignored users' non-state events.
func (s *Service) VisibleEvents(ctx context.Context, rd store.Reader, userID, roomID string, events []store.StoredEvent, f clientevent.RoomEventFilter) ([]store.StoredEvent, error) {
	if len(events) == 0 {
		return events, nil
	}
	vf, err := s.newVisibilityFilter(ctx, rd, userID, []string{roomID})
	if err != nil {
		return nil, err
	}
	ignored, err := clientevent.IgnoredUsers(ctx, rd, userID)
	if err != nil {
		return nil, err
	}
	out := events[:0:0]
	for _, e := range events {
		if ignored[e.Sender] && e.StateKey == nil {
			continue
		}
		if f.Allows(e) && vf.canSee(e) {
			e.Membership = vf.membershipAt(e)
			out = append(out, e)
		}
	}
	if err := s.ApplyErasure(ctx, vf, out); err != nil {
		return nil, err
	}
	return out, nil
}

func ErrEventNotFound() error { return matrixhttp.NotFound("Event not found") }

// EventParams reads {roomId} and {eventId}.
func EventParams(r *http.Request) (roomID, eventID string, err error) {
	if roomID, err = httpapi.RoomIDParam(r); err != nil {
		return "", "", err
	}
	if eventID, err = httpapi.PathParam(r, "eventId"); err != nil {
		return "", "", err
	}
	if eventID == "" {
		return "", "", ErrEventNotFound()
	}
	return roomID, eventID, nil
}

// visibleEvent returns a stored event the user may see, or M_NOT_FOUND.
func (s *Service) VisibleEvent(ctx context.Context, rd store.Reader, userID, roomID, eventID string) (store.StoredEvent, error) {
	e, err := rd.EventByID(ctx, roomID, eventID)
	if errors.Is(err, store.ErrNotFound) {
		return e, ErrEventNotFound()
	} else if err != nil {
		return e, err
	}
	vf, err := s.newVisibilityFilter(ctx, rd, userID, []string{roomID})
	if err != nil {
		return e, err
	}
	if !vf.canSee(e) {
		return e, ErrEventNotFound()
	}
	e.Membership = vf.membershipAt(e)
	one := []store.StoredEvent{e}
	if err := s.ApplyErasure(ctx, vf, one); err != nil {
		return e, err
	}
	return one[0], nil
}

// getEvent is GET /rooms/{roomId}/event/{eventId}.
func (s *Service) getEvent(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, eventID, err := EventParams(r)
	if err != nil {
		return nil, err
	}
	rd := s.store.Reader()
	e, err := s.VisibleEvent(r.Context(), rd, dev.UserID, roomID, eventID)
	if err == nil {
		out, err := s.RenderAll(r.Context(), rd, dev, []store.StoredEvent{e}, true)
		if err != nil {
			return nil, err
		}
		return out[0], nil
	}
	var me *matrixhttp.Error
	if !errors.As(err, &me) {
		return nil, err
	}
	if _, err := rd.EventByID(r.Context(), roomID, eventID); err == nil {
		return nil, ErrEventNotFound() // stored, but not visible
	}
	// Not in the copy yet (the consumer may lag just behind a send): ask
	// the room-server, with the visibility rules applied to its state.
	return s.EventFromRoomServer(r.Context(), dev.UserID, roomID, eventID)
}

// eventFromRoomServer serves an event the client-API has not stored yet,
// checking the visibility rules against the room-server's state before
// the event (the user's own membership event may be seen when the
// membership after it allows).
func (s *Service) EventFromRoomServer(ctx context.Context, userID, roomID, eventID string) (any, error) {
	resp, err := s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: []string{eventID}})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryEvents", err, nil)
	}
	if len(resp.GetEvents()) != 1 {
		return nil, ErrEventNotFound()
	}
	ev := resp.GetEvents()[0]
	if ev.GetRoomId() != roomID || ev.GetRejected() || ev.GetSoftFailed() {
		return nil, ErrEventNotFound()
	}
	pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
	if err != nil {
		return nil, err
	}
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{
		RoomId: roomID, EventId: eventID,
		Filter: []*roomserverv1.StateKeyTuple{{Type: "m.room.history_visibility"}, {Type: "m.room.member", StateKey: userID}},
	})
	if err != nil {
		return nil, ErrEventNotFound() // an outlier: no state known at it
	}
	vis, membership := store.VisibilityShared, ""
	for _, se := range st.GetState() {
		spdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), se.GetEventJson())
		if err != nil {
			return nil, err
		}
		if spdu.Type() == "m.room.member" {
			membership = clientevent.MembershipOf(spdu)
		} else {
			raw, _ := pkgce.NewClientEvent(spdu).Marshal()
			vis = store.VisibilityOf(raw)
		}
	}
	allowed := allowedBy(vis, membership, false)
	if pdu.Type() == "m.room.member" && pdu.StateKeyEquals(userID) {
		allowed = allowed || allowedBy(vis, clientevent.MembershipOf(pdu), false)
	}
	if !allowed {
		return nil, ErrEventNotFound()
	}
	return clientevent.RenderPDU(ev, true)
}

// contextResponse is the body of GET /rooms/{roomId}/context/{eventId}.
type contextResponse struct {
	Start        string            `json:"start"`
	End          string            `json:"end"`
	Event        json.RawMessage   `json:"event"`
	EventsBefore []json.RawMessage `json:"events_before"`
	EventsAfter  []json.RawMessage `json:"events_after"`
	State        []json.RawMessage `json:"state"`
}

// maxContextLimit caps /context's limit.
const maxContextLimit = 100

// eventContext is GET /rooms/{roomId}/context/{eventId}: the event, up to
// limit/2 events before it and the rest after it (both filtered by the
// visibility rules and the filter parameter), tokens that continue in
// /messages, and the room state at the last event returned.
func (s *Service) eventContext(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, eventID, err := EventParams(r)
	if err != nil {
		return nil, err
	}
	limit, err := httpapi.QueryInt(r, "limit", 10)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	limit = min(limit, maxContextLimit)
	f, err := clientevent.ParseRoomEventFilter(r.URL.Query().Get("filter"))
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	var resp contextResponse
	var lastID string
	senders := map[string]bool{}
	err = s.store.Snapshot(ctx, func(rd store.Reader) error {
		e, err := s.VisibleEvent(ctx, rd, dev.UserID, roomID, eventID)
		if err != nil {
			return err
		}
		// A user who left sees nothing after their leave.
		bound := int64(-1)
		if m, err := rd.Membership(ctx, dev.UserID, roomID); err == nil &&
			(m.Membership == store.MembershipLeave || m.Membership == store.MembershipBan) {
			bound = m.Pos
		}
		nBefore := int(limit / 2)
		before, err := rd.Messages(ctx, roomID, store.Backward, e.Pos-1, -1, bound, nBefore)
		if err != nil {
			return err
		}
		after, err := rd.Messages(ctx, roomID, store.Forward, e.Pos, -1, bound, int(limit)-nBefore)
		if err != nil {
			return err
		}
		resp.Start = clientevent.StreamToken{Pos: e.Pos - 1}.String()
		if n := len(before.Events); n > 0 {
			resp.Start = clientevent.StreamToken{Pos: before.Events[n-1].Pos - 1}.String()
		}
		resp.End = clientevent.StreamToken{Pos: e.Pos}.String()
		lastID = e.EventID
		if n := len(after.Events); n > 0 {
			resp.End = clientevent.StreamToken{Pos: after.Events[n-1].Pos}.String()
			lastID = after.Events[n-1].EventID
		}
		ev, err := s.RenderAll(ctx, rd, dev, []store.StoredEvent{e}, true)
		if err != nil {
			return err
		}
		resp.Event = ev[0]
		for _, x := range slices.Concat([]store.StoredEvent{e}, before.Events, after.Events) {
			senders[x.Sender] = true
		}
		if resp.EventsBefore, err = s.renderVisible(ctx, rd, dev, roomID, before.Events, f); err != nil {
			return err
		}
		resp.EventsAfter, err = s.renderVisible(ctx, rd, dev, roomID, after.Events, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: lastID, After: true})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryState", err, nil)
	}
	resp.State = make([]json.RawMessage, 0, len(st.GetState()))
	for _, ev := range st.GetState() {
		pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if !f.AllowsType(pdu.Type()) {
			continue
		}
		// Lazy loading: only the members who sent a returned event.
		if f.LazyLoadMembers && pdu.Type() == "m.room.member" && !senders[*pdu.StateKey()] {
			continue
		}
		raw, err := clientevent.RenderPDU(ev, true)
		if err != nil {
			return nil, err
		}
		resp.State = append(resp.State, raw)
	}
	return resp, nil
}

// renderVisible filters and renders events for the device.
func (s *Service) renderVisible(ctx context.Context, rd store.Reader, dev *httpapi.Device, roomID string, events []store.StoredEvent, f clientevent.RoomEventFilter) ([]json.RawMessage, error) {
	visible, err := s.VisibleEvents(ctx, rd, dev.UserID, roomID, events, f)
	if err != nil {
		return nil, err
	}
	return s.RenderAll(ctx, rd, dev, visible, true)
}

// lazyMembers returns the member events of the senders of events, in the
// state after the last of them (lazy_load_members in /messages).
func (s *Service) lazyMembers(ctx context.Context, roomID string, events []store.StoredEvent) ([]json.RawMessage, error) {
	out := []json.RawMessage{}
	if len(events) == 0 {
		return out, nil
	}
	var filter []*roomserverv1.StateKeyTuple
	seen := map[string]bool{}
	last := events[0]
	for _, e := range events {
		if !seen[e.Sender] {
			seen[e.Sender] = true
			filter = append(filter, &roomserverv1.StateKeyTuple{Type: "m.room.member", StateKey: e.Sender})
		}
		if e.Pos > last.Pos {
			last = e
		}
	}
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: last.EventID, After: true, Filter: filter})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryState", err, nil)
	}
	return clientevent.RenderPDUs(st.GetState(), true)
}
