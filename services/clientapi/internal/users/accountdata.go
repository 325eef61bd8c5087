package users

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
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

func (s *AccountData) putGlobalAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.putAccountData(r, dev, false)
}

func (s *AccountData) putRoomAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.putAccountData(r, dev, true)
}

func (s *AccountData) getGlobalAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.getAccountData(r, dev, false)
}

func (s *AccountData) getRoomAccountData(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.getAccountData(r, dev, true)
}

// putAccountData is PUT /user/{userId}[/rooms/{roomId}]/account_data/{type}.
func (s *AccountData) putAccountData(r *http.Request, dev *httpapi.Device, perRoom bool) (any, error) {
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
func (s *AccountData) storeAccountData(ctx context.Context, userID, roomID, typ string, content []byte) error {
	if _, err := s.store.PutAccountData(ctx, userID, roomID, typ, content); err != nil {
		return err
	}
	s.wakeBus.AnnounceWake(userID)
	return nil
}

// getAccountData is GET /user/{userId}[/rooms/{roomId}]/account_data/{type}.
func (s *AccountData) getAccountData(r *http.Request, dev *httpapi.Device, perRoom bool) (any, error) {
	roomID, err := accountDataTarget(r, dev, perRoom)
	if err != nil {
		return nil, err
	}
	typ, err := accountDataType(r)
	if err != nil {
		return nil, err
	}
	if roomID == "" && typ == store.PushRulesType {
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
func (s *AccountData) fullyReadMarker(r *http.Request, dev *httpapi.Device, roomID string) (any, error) {
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

func (s *AccountData) loadTags(ctx context.Context, userID, roomID string) (tagsContent, error) {
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
func (s *AccountData) getTags(r *http.Request, dev *httpapi.Device) (any, error) {
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
func (s *AccountData) putTag(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.changeTag(r, dev, true)
}

// deleteTag is DELETE /user/{userId}/rooms/{roomId}/tags/{tag}.
func (s *AccountData) deleteTag(r *http.Request, dev *httpapi.Device) (any, error) {
	return s.changeTag(r, dev, false)
}

func (s *AccountData) changeTag(r *http.Request, dev *httpapi.Device, put bool) (any, error) {
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
