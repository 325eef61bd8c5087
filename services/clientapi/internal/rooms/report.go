package rooms

// Reporting content (client-server API "Reporting Content"): users report
// events (they must be joined to the room and able to see the event),
// rooms and users; reports go to content_reports. Admins read event
// reports through Synapse's admin API shape
// (/_synapse/admin/v1/event_reports), so existing moderation tools work.

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// reportBody is the body of the report endpoints. score was removed from
// the spec in v1.18; older clients still send it, so it is kept if valid.
type reportBody struct {
	Reason *string         `json:"reason"`
	Score  json.RawMessage `json:"score"`
}

// readReport reads a report body; reasonRequired for rooms and users.
func readReport(r *http.Request, reasonRequired bool) (reportBody, *int64, error) {
	var b reportBody
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &b); err != nil {
		return b, nil, err
	}
	if reasonRequired && b.Reason == nil {
		return b, nil, matrixhttp.MissingParam("reason is required")
	}
	var score *int64
	if len(b.Score) > 0 && string(b.Score) != "null" {
		var n int64
		if json.Unmarshal(b.Score, &n) != nil || n < -100 || n > 0 {
			return b, nil, matrixhttp.InvalidParam("score must be an integer between -100 and 0")
		}
		score = &n
	}
	return b, score, nil
}

func errReportedEventNotFound() error {
	return matrixhttp.NotFound("The event was not found or you are not joined to the room.")
}

// reportEvent is POST /rooms/{roomId}/report/{eventId}: the reporter must
// be joined to the room now and able to see the event.
func (s *Reports) reportEvent(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, eventID, err := history.EventParams(r)
	if err != nil {
		return nil, err
	}
	body, score, err := readReport(r, false)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	resp, err := s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: dev.UserID})
	if err != nil {
		if me := s.fromGRPC(ctx, "QueryMembership", err, nil); !isNotFound(me) {
			return nil, me
		}
		return nil, errReportedEventNotFound()
	}
	if resp.GetMembership() != store.MembershipJoin {
		return nil, errReportedEventNotFound()
	}
	rd := s.store.Reader()
	e, err := s.history.VisibleEvent(ctx, rd, dev.UserID, roomID, eventID)
	var sender string
	switch {
	case err == nil:
		sender = e.Sender
	case isNotFound(err):
		// The copy may lag a moment behind the room-server.
		if _, stored := rd.EventByID(ctx, roomID, eventID); stored == nil {
			return nil, errReportedEventNotFound()
		}
		raw, err := s.history.EventFromRoomServer(ctx, dev.UserID, roomID, eventID)
		if err != nil {
			if isNotFound(err) {
				return nil, errReportedEventNotFound()
			}
			return nil, err
		}
		var ce clientevent.ClientEvent
		_ = json.Unmarshal(raw.(json.RawMessage), &ce)
		sender = ce.Sender
	default:
		return nil, err
	}
	_, err = s.store.AddReport(ctx, store.Report{
		Kind: store.ReportEvent, ReceivedTS: time.Now().UnixMilli(), Reporter: dev.UserID,
		RoomID: roomID, EventID: eventID, TargetUserID: sender, Reason: body.Reason, Score: score,
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// reportRoom is POST /rooms/{roomId}/report: anyone may report a room the
// server knows, joined or not.
func (s *Reports) reportRoom(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	body, score, err := readReport(r, true)
	if err != nil {
		return nil, err
	}
	resp, err := s.rooms.GetRoomVisibility(r.Context(), &roomserverv1.GetRoomVisibilityRequest{RoomId: roomID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "GetRoomVisibility", err, nil)
	}
	if !resp.GetRoomExists() {
		return nil, matrixhttp.NotFound("The room was not found.")
	}
	_, err = s.store.AddReport(r.Context(), store.Report{
		Kind: store.ReportRoom, ReceivedTS: time.Now().UnixMilli(), Reporter: dev.UserID,
		RoomID: roomID, Reason: body.Reason, Score: score,
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// reportUser is POST /users/{userId}/report. A local user must exist;
// remote users cannot be checked without federation and are accepted.
func (s *Reports) reportUser(r *http.Request, dev *httpapi.Device) (any, error) {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	uid, err := spec.NewUserID(userID, false)
	if err != nil {
		return nil, matrixhttp.InvalidParam("Invalid user ID")
	}
	body, score, err := readReport(r, true)
	if err != nil {
		return nil, err
	}
	if string(uid.Domain()) == s.serverName {
		ok, err := s.accounts.AccountExists(r.Context(), uid.Local())
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, matrixhttp.NotFound("The user was not found.")
		}
	}
	_, err = s.store.AddReport(r.Context(), store.Report{
		Kind: store.ReportUser, ReceivedTS: time.Now().UnixMilli(), Reporter: dev.UserID,
		TargetUserID: userID, Reason: body.Reason, Score: score,
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func isNotFound(err error) bool {
	var me *matrixhttp.Error
	return errors.As(err, &me) && me.ErrCode == "M_NOT_FOUND"
}

// eventReport is one entry of the admin API, in Synapse's shape.
type eventReport struct {
	ID             int64           `json:"id"`
	ReceivedTS     int64           `json:"received_ts"`
	RoomID         string          `json:"room_id"`
	Name           *string         `json:"name"`
	CanonicalAlias *string         `json:"canonical_alias"`
	EventID        string          `json:"event_id"`
	UserID         string          `json:"user_id"`
	Reason         *string         `json:"reason"`
	Score          *int64          `json:"score"`
	Sender         string          `json:"sender"`
	EventJSON      json.RawMessage `json:"event_json,omitempty"`
}

// renderReport fills in the room's current name and canonical alias.
func (s *Reports) renderReport(r *http.Request, rep store.Report) (eventReport, error) {
	out := eventReport{
		ID: rep.ID, ReceivedTS: rep.ReceivedTS, RoomID: rep.RoomID, EventID: rep.EventID,
		UserID: rep.Reporter, Reason: rep.Reason, Score: rep.Score, Sender: rep.TargetUserID,
	}
	rd := s.store.Reader()
	for _, f := range []struct {
		typ, key string
		dst      **string
	}{{"m.room.name", "name", &out.Name}, {"m.room.canonical_alias", "alias", &out.CanonicalAlias}} {
		e, err := rd.CurrentStateEvent(r.Context(), rep.RoomID, f.typ, "")
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return out, err
		}
		var c struct {
			Content map[string]any `json:"content"`
		}
		_ = json.Unmarshal(e.JSON, &c)
		if v, ok := c.Content[f.key].(string); ok {
			*f.dst = &v
		}
	}
	return out, nil
}

// listEventReports is GET /_synapse/admin/v1/event_reports (from, limit,
// dir, user_id, room_id, event_sender_user_id), admins only.
func (s *Reports) listEventReports(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	from, err := httpapi.QueryInt(r, "from", 0)
	if err != nil {
		return nil, err
	}
	limit, err := httpapi.QueryInt(r, "limit", 100)
	if err != nil {
		return nil, err
	}
	if from < 0 || limit < 0 {
		return nil, matrixhttp.InvalidParam("from and limit must not be negative")
	}
	f := store.ReportFilter{
		Kind: store.ReportEvent, Reporter: q.Get("user_id"), RoomID: q.Get("room_id"),
		TargetUserID: q.Get("event_sender_user_id"), Offset: from, Limit: limit,
	}
	switch q.Get("dir") {
	case "", "b":
	case "f":
		f.Forward = true
	default:
		return nil, matrixhttp.InvalidParam("dir must be b or f")
	}
	reports, total, err := s.store.Reports(r.Context(), f)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"total": total}
	list := make([]eventReport, 0, len(reports))
	for _, rep := range reports {
		er, err := s.renderReport(r, rep)
		if err != nil {
			return nil, err
		}
		list = append(list, er)
	}
	out["event_reports"] = list
	if next := from + int64(len(list)); next < total && len(list) > 0 {
		out["next_token"] = next
	}
	return out, nil
}

// reportIDParam reads {reportId}: a positive integer.
func reportIDParam(r *http.Request) (int64, error) {
	v, err := httpapi.PathParam(r, "reportId")
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 0 {
		return 0, matrixhttp.InvalidParam("The report_id parameter must be a string representing a positive integer.")
	}
	return id, nil
}

// getEventReport is GET /_synapse/admin/v1/event_reports/{reportId}: the
// report with the event as the room-server holds it (redacted if it was).
func (s *Reports) getEventReport(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	id, err := reportIDParam(r)
	if err != nil {
		return nil, err
	}
	rep, err := s.store.ReportByID(r.Context(), store.ReportEvent, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("Event report not found")
	} else if err != nil {
		return nil, err
	}
	out, err := s.renderReport(r, rep)
	if err != nil {
		return nil, err
	}
	resp, err := s.rooms.QueryEvents(r.Context(), &roomserverv1.QueryEventsRequest{EventIds: []string{rep.EventID}})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryEvents", err, nil)
	}
	for _, ev := range resp.GetEvents() {
		out.EventJSON = json.RawMessage(ev.GetEventJson())
	}
	return out, nil
}

// deleteEventReport is DELETE /_synapse/admin/v1/event_reports/{reportId}.
func (s *Reports) deleteEventReport(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	id, err := reportIDParam(r)
	if err != nil {
		return nil, err
	}
	if err := s.store.DeleteReport(r.Context(), store.ReportEvent, id); errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("Event report not found")
	} else if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
