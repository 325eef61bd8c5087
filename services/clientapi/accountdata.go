package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Account data (global and per room) and room tags, which are the room
// account data of type m.tag. Changes reach /sync through the token
// component "_a<pos>" (see clientevent.StreamToken) and wake long polls
// through the notifier.

// serverControlledAccountData are types clients may not write here.
var serverControlledAccountData = map[string]bool{"m.fully_read": true, "m.push_rules": true}

// accountDataTarget reads {userId} (which must be the caller) and, for
// per-room routes, {roomId}.
func accountDataTarget(r *http.Request, dev *httpapi.Device, perRoom bool) (roomID string, err error) {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return "", err
	}
	if userID != dev.UserID {
		return "", matrixhttp.Forbidden("Cannot access account data of other users")
	}
	if perRoom {
		return httpapi.RoomIDParam(r)
	}
	return "", nil
}

func accountDataType(r *http.Request) (string, error) {
	return namePathParam(r, "type", "Invalid account data type")
}

// namePathParam reads a path parameter that names something (a type, a
// tag): non-empty and at most 255 bytes.
func namePathParam(r *http.Request, name, invalid string) (string, error) {
	v, err := httpapi.PathParam(r, name)
	if err != nil {
		return "", err
	}
	if v == "" || len(v) > 255 {
		return "", matrixhttp.InvalidParam(invalid)
	}
	return v, nil
}

func (s *Service) putGlobalAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.putAccountData(r, dev, false)
}

func (s *Service) putRoomAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.putAccountData(r, dev, true)
}

func (s *Service) getGlobalAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.getAccountData(r, dev, false)
}

func (s *Service) getRoomAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.getAccountData(r, dev, true)
}

// putAccountData is PUT /user/{userId}[/rooms/{roomId}]/account_data/{type}.
func (s *Service) putAccountData(r *http.Request, dev *httpapi.Device, perRoom bool) (any, error) {
	roomID, err := accountDataTarget(r, dev, perRoom)
	if err != nil {
		return nil, err
	}
	typ, err := accountDataType(r)
	if err != nil {
		return nil, err
	}
	if serverControlledAccountData[typ] {
		return nil, matrixhttp.Errorf(http.StatusMethodNotAllowed, "M_BAD_JSON", "Cannot set %s through this API", typ)
	}
	body, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	if typ == clientevent.IgnoredUserListType && roomID == "" {
		if err := clientevent.CheckIgnoredUserList(dev.UserID, body); err != nil {
			return nil, err
		}
	}
	if err := s.storeAccountData(r.Context(), dev.UserID, roomID, typ, body); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// storeAccountData writes an entry and wakes the user's long polls.
func (s *Service) storeAccountData(ctx context.Context, userID, roomID, typ string, content []byte) error {
	if _, err := s.store.PutAccountData(ctx, userID, roomID, typ, content); err != nil {
		return err
	}
	s.wakeBus.AnnounceWake(userID)
	return nil
}

// getAccountData is GET /user/{userId}[/rooms/{roomId}]/account_data/{type}.
func (s *Service) getAccountData(r *http.Request, dev *httpapi.Device, perRoom bool) (any, error) {
	roomID, err := accountDataTarget(r, dev, perRoom)
	if err != nil {
		return nil, err
	}
	typ, err := accountDataType(r)
	if err != nil {
		return nil, err
	}
	if roomID == "" && typ == push.RulesType {
		content, err := s.push.RulesContent(r.Context(), dev.UserID)
		return json.RawMessage(content), err
	}
	if roomID != "" && typ == "m.fully_read" {
		return s.fullyReadMarker(r, dev, roomID)
	}
	content, err := s.store.GetAccountData(r.Context(), dev.UserID, roomID, typ)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No account data of this type")
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(content), nil
}

// fullyReadMarker serves the room account data m.fully_read, which the
// presence service keeps (POST /read_markers writes it there): the room's
// current marker, read as an initial /sync would.
func (s *Service) fullyReadMarker(r *http.Request, dev *httpapi.Device, roomID string) (any, error) {
	ps, err := s.presenceClient()
	if err != nil {
		return nil, err
	}
	out, err := ps.SyncEphemeral(r.Context(), &presencev1.SyncEphemeralRequest{
		UserId: dev.UserID, RoomIds: []string{roomID}, Initial: true,
	})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "SyncEphemeral", err, nil)
	}
	for _, re := range out.GetRooms() {
		if re.GetRoomId() == roomID && re.GetFullyReadEventId() != "" {
			return map[string]string{"event_id": re.GetFullyReadEventId()}, nil
		}
	}
	return nil, matrixhttp.NotFound("No account data of this type")
}

// tagsContent is the content of m.tag.
type tagsContent struct {
	Tags map[string]json.RawMessage `json:"tags"`
}

func (s *Service) loadTags(ctx context.Context, userID, roomID string) (tagsContent, error) {
	tc := tagsContent{Tags: map[string]json.RawMessage{}}
	raw, err := s.store.GetAccountData(ctx, userID, roomID, "m.tag")
	if errors.Is(err, store.ErrNotFound) {
		return tc, nil
	}
	if err != nil {
		return tc, err
	}
	if err := json.Unmarshal(raw, &tc); err != nil || tc.Tags == nil {
		tc.Tags = map[string]json.RawMessage{}
	}
	return tc, nil
}

// getTags is GET /user/{userId}/rooms/{roomId}/tags.
func (s *Service) getTags(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := accountDataTarget(r, dev, true)
	if err != nil {
		return nil, err
	}
	return s.loadTags(r.Context(), dev.UserID, roomID)
}

func tagParam(r *http.Request) (string, error) {
	return namePathParam(r, "tag", "Invalid tag")
}

// putTag is PUT /user/{userId}/rooms/{roomId}/tags/{tag}.
func (s *Service) putTag(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.changeTag(r, dev, true)
}

// deleteTag is DELETE /user/{userId}/rooms/{roomId}/tags/{tag}.
func (s *Service) deleteTag(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.changeTag(r, dev, false)
}

func (s *Service) changeTag(r *http.Request, dev *httpapi.Device, put bool) (any, error) {
	roomID, err := accountDataTarget(r, dev, true)
	if err != nil {
		return nil, err
	}
	tag, err := tagParam(r)
	if err != nil {
		return nil, err
	}
	var body []byte
	if put {
		if body, err = httpapi.ReadObject(r, httpapi.BodyRequired); err != nil {
			return nil, err
		}
		var info struct {
			Order *float64 `json:"order"`
		}
		if err := json.Unmarshal(body, &info); err != nil {
			return nil, matrixhttp.BadJSON("order must be a number")
		}
	}
	ctx := r.Context()
	tc, err := s.loadTags(ctx, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	if put {
		tc.Tags[tag] = body
	} else {
		delete(tc.Tags, tag)
	}
	raw, err := json.Marshal(tc)
	if err != nil {
		return nil, err
	}
	if err := s.storeAccountData(ctx, dev.UserID, roomID, "m.tag", raw); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// syncAccountData adds the account data changed after since to a sync
// response — global, and for rooms the user is joined to (or left in this
// response) that the filter's room list allows — and returns the user's
// account data position for next_batch. Filters' account_data sections
// are not applied. The position also covers changes of the user's read
// receipts (push_receipts shares the sequence): a joined room whose
// unread counts changed that way appears, so the new counts reach the
// client. An initial sync always carries m.push_rules (the defaults when
// the user never changed a rule, so nothing is stored). ch is what
// changed after since when the caller read it (nil: it is read here).
func (s *Service) syncAccountData(ctx context.Context, userID string, since int64, initial bool, filter clientevent.Filter, resp *syncResponse, ch *store.AccountDataChanges) (int64, error) {
	rd := s.store.Reader()
	if ch == nil {
		ch = &store.AccountDataChanges{}
		b := &store.Batch{}
		b.AccountDataChanges(userID, since, ch)
		if err := rd.Send(ctx, b); err != nil {
			return 0, err
		}
	}
	rooms := &joinedRoomsCache{userID: userID, rd: rd}
	havePushRules := false
	for _, e := range ch.Entries {
		ev, err := json.Marshal(map[string]any{"type": e.Type, "content": json.RawMessage(e.Content)})
		if err != nil {
			return 0, err
		}
		if e.RoomID == "" {
			havePushRules = havePushRules || e.Type == push.RulesType
			resp.AccountData.Events = append(resp.AccountData.Events, ev)
			continue
		}
		if lr := resp.Rooms.Leave[e.RoomID]; lr != nil && resp.Rooms.Join[e.RoomID] == nil {
			lr.AccountData.Events = append(lr.AccountData.Events, ev)
			continue
		}
		jr, err := s.syncRoomEntry(ctx, rooms, e.RoomID, filter, resp)
		if err != nil {
			return 0, err
		}
		if jr != nil {
			jr.AccountData.Events = append(jr.AccountData.Events, ev)
		}
	}
	if initial && !havePushRules {
		content, err := s.push.RulesContent(ctx, userID)
		if err != nil {
			return 0, err
		}
		ev, err := json.Marshal(map[string]any{"type": push.RulesType, "content": json.RawMessage(content)})
		if err != nil {
			return 0, err
		}
		resp.AccountData.Events = append(resp.AccountData.Events, ev)
	}
	for _, roomID := range ch.ReceiptRooms {
		if _, err := s.syncRoomEntry(ctx, rooms, roomID, filter, resp); err != nil {
			return 0, err
		}
	}
	return max(ch.Latest, ch.ReceiptLatest), nil
}

// joinedRoomsCache reads the user's joined rooms once, when first needed.
type joinedRoomsCache struct {
	userID string
	rd     store.Reader
	joined map[string]bool
}

func (c *joinedRoomsCache) has(ctx context.Context, roomID string) (bool, error) {
	if c.joined == nil {
		rooms, err := c.rd.JoinedRooms(ctx, c.userID)
		if err != nil {
			return false, err
		}
		c.joined = map[string]bool{}
		for _, r := range rooms {
			c.joined[r] = true
		}
	}
	return c.joined[roomID], nil
}

// syncRoomEntry returns the response's entry for a joined room, adding one
// with no new events when the room has none yet; nil for rooms the user is
// not joined to or the filter leaves out (their data is in the next
// initial sync).
func (s *Service) syncRoomEntry(ctx context.Context, rooms *joinedRoomsCache, roomID string, filter clientevent.Filter, resp *syncResponse) (*joinedRoom, error) {
	if jr := resp.Rooms.Join[roomID]; jr != nil {
		return jr, nil
	}
	if resp.Rooms.Leave[roomID] != nil || !filter.AllowsRoom(roomID) {
		return nil, nil
	}
	joined, err := rooms.has(ctx, roomID)
	if err != nil || !joined {
		return nil, err
	}
	summaries, err := rooms.rd.RoomSummaries(ctx, []string{roomID}, rooms.userID)
	if err != nil {
		return nil, err
	}
	jr := &joinedRoom{
		Summary:             toSummary(summaries[roomID]),
		State:               clientevent.EmptyEvents(),
		Timeline:            timelineBatch{Events: []json.RawMessage{}},
		Ephemeral:           clientevent.EmptyEvents(),
		AccountData:         clientevent.EmptyEvents(),
		UnreadNotifications: map[string]int{},
	}
	resp.Rooms.Join[roomID] = jr
	return jr, nil
}
