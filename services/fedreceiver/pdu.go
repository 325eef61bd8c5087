package fedreceiver

// PDUs of /send: each goes through the room-server's InputEvents (format
// for its room version, hashes, signatures, auth against its auth events,
// the state before it and the current state); what the room-server lacks
// is fetched from the sending server first (gap.go).

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// txnContext is what one transaction's PDUs and EDUs share.
type txnContext struct {
	origin spec.ServerName
	acl    *aclCache
	rooms  map[string]*roomInfo
}

// roomInfo is what the room-server says about a room.
type roomInfo struct {
	exists  bool
	version gomatrixserverlib.IRoomVersion
}

// room returns (and caches) a room's version; exists false when the
// room-server does not know the room (or knows only invites to it).
func (s *Service) room(ctx context.Context, tc *txnContext, roomID string) (*roomInfo, error) {
	if ri, ok := tc.rooms[roomID]; ok {
		return ri, nil
	}
	resp, err := s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: roomID})
	if status.Code(err) == codes.NotFound || status.Code(err) == codes.InvalidArgument {
		err, resp = nil, &roomserverv1.QueryRoomInfoResponse{}
	}
	if err != nil {
		return nil, fmt.Errorf("QueryRoomInfo: %w", err)
	}
	ri := &roomInfo{exists: resp.GetRoomExists()}
	if ri.exists {
		if ri.version, err = gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(resp.GetRoomVersion())); err != nil {
			ri.exists = false
		}
	}
	tc.rooms[roomID] = ri
	return ri, nil
}

// maxEventSize is the spec's bound on a PDU (canonical JSON, without
// unsigned).
const maxEventSize = 65536

// parsePDU parses an event of a room version from an untrusted source.
// Beyond gomatrixserverlib's checks it refuses duplicate keys and events
// over 65,536 bytes before their hash is checked (gomatrixserverlib would
// redact an oversized event with a wrong hash into a small one; the spec
// drops invalid events first). When the event parses but is refused,
// the event is returned with the error, so the caller can name it.
func parsePDU(verImpl gomatrixserverlib.IRoomVersion, raw []byte) (ev gomatrixserverlib.PDU, err error) {
	defer func() {
		if r := recover(); r != nil {
			ev, err = nil, fmt.Errorf("unparseable event: %v", r)
		}
	}()
	ev, err = verImpl.NewEventFromUntrustedJSON(raw)
	if err != nil {
		return nil, err
	}
	_ = ev.EventID() // computes (and may panic on) the reference hash
	_ = ev.RoomID()
	return ev, checkPDUBytes(raw)
}

// checkPDUBytes makes the checks of parsePDU that gomatrixserverlib (and
// so the room-server) does not: no duplicate keys, at most 65,536 bytes.
func checkPDUBytes(raw []byte) error {
	if err := checkNoDuplicateKeys(raw); err != nil {
		return err
	}
	if len(raw) <= maxEventSize/3 {
		// Canonical JSON grows a byte of the JSON it is made from to at
		// most three (an invalid UTF-8 byte becomes U+FFFD; whitespace
		// and escapes only shrink), and dropping unsigned only shortens
		// it: small enough without measuring (most events).
		return nil
	}
	if size, err := eventSize(raw); err != nil || size > maxEventSize {
		return fmt.Errorf("event too large (%d bytes, at most %d)", size, maxEventSize)
	}
	return nil
}

// eventSize is the length of an event's canonical JSON without unsigned.
func eventSize(raw []byte) (int, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return 0, err
	}
	delete(obj, "unsigned")
	b, err := json.Marshal(obj)
	if err != nil {
		return 0, err
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(b)
	return len(canonical), err
}

// pduHeader is what is read from a PDU before its room version is known.
type pduHeader struct {
	RoomID  string `json:"room_id"`
	EventID string `json:"event_id"`
}

// preparedPDU is a PDU of a transaction checked up to its input: its
// event ID (empty: dropped without a result; for room versions 3 on, where
// the PDU does not carry it, the room-server's result names it) and either
// its result or, when ready, what the room-server is given.
type preparedPDU struct {
	id      string
	res     fclient.PDUResult
	ready   bool
	verImpl gomatrixserverlib.IRoomVersion
	roomID  string
	raw     []byte
}

// preparePDU checks one PDU of a transaction up to its input (room known,
// no duplicate keys, size, server ACL). The PDU is not parsed here: the
// room-server parses it once for its format, hashes, signatures and auth
// (InputEvent.room_id holds it to the room whose ACL was checked here);
// only a PDU refused here is parsed, to name it in the result. An error
// fails the whole transaction (a peer is down).
func (s *Service) preparePDU(ctx context.Context, tc *txnContext, raw json.RawMessage) (preparedPDU, error) {
	var h pduHeader
	if err := json.Unmarshal(raw, &h); err != nil || h.RoomID == "" {
		s.log.Debug("PDU without a room dropped", zap.String("origin", string(tc.origin)))
		return preparedPDU{}, nil
	}
	fail := func(id, format string, args ...any) (preparedPDU, error) {
		return preparedPDU{id: id, res: fclient.PDUResult{Error: fmt.Sprintf(format, args...)}}, nil
	}
	ri, err := s.room(ctx, tc, h.RoomID)
	if err != nil {
		return preparedPDU{}, err
	}
	if !ri.exists {
		if h.EventID != "" {
			return fail(h.EventID, "This server is not in room %s", h.RoomID)
		}
		return preparedPDU{}, nil
	}
	// nameOf is the event ID of a refused PDU ("" when it has none).
	nameOf := func() string {
		if ev, _ := parsePDU(ri.version, raw); ev != nil {
			return ev.EventID()
		}
		return h.EventID
	}
	if err := checkPDUBytes(raw); err != nil {
		// As parsePDU reports it: a format error first.
		ev, perr := parsePDU(ri.version, raw)
		switch {
		case ev != nil:
			return fail(ev.EventID(), "Invalid event: %v", perr)
		case h.EventID != "":
			return fail(h.EventID, "Invalid event: %v", perr)
		}
		return preparedPDU{}, nil
	}
	if err := tc.acl.check(ctx, h.RoomID); err != nil {
		if !errorsIsACL(err) {
			return preparedPDU{}, err
		}
		if id := nameOf(); id != "" {
			return fail(id, "Server %s is denied by the room's server ACL", tc.origin)
		}
		return preparedPDU{}, nil
	}
	p := preparedPDU{ready: true, verImpl: ri.version, roomID: h.RoomID, raw: raw}
	if ri.version.EventFormat() == gomatrixserverlib.EventFormatV1 {
		p.id = h.EventID // room versions 1 and 2 carry it; later ones are named by their hash
	}
	return p, nil
}

// named sets the PDU's event ID from the room-server's result (which
// parsed it; empty when it could not).
func (p *preparedPDU) named(r *roomserverv1.InputEventResult) {
	if id := r.GetEventId(); id != "" {
		p.id = id
	}
}

// inputPrepared inputs a transaction's ready PDUs, room by room in the
// order rooms first appear, each room's PDUs in transaction order and in
// one room-server call (one database transaction: a transaction's PDUs
// of a room are usually a chain). A PDU whose prior events the room-server
// lacks then goes through inputWithGaps, in order, so those after it that
// build on it follow once its gap is filled. A room not reached before ctx
// ends leaves its PDUs without a result (id emptied).
func (s *Service) inputPrepared(ctx context.Context, origin spec.ServerName, ps []preparedPDU) error {
	var rooms []string
	byRoom := map[string][]int{}
	for i, p := range ps {
		if !p.ready {
			continue
		}
		if _, ok := byRoom[p.roomID]; !ok {
			rooms = append(rooms, p.roomID)
		}
		byRoom[p.roomID] = append(byRoom[p.roomID], i)
	}
	for _, room := range rooms {
		idx := byRoom[room]
		var results []*roomserverv1.InputEventResult
		if len(idx) > 1 && ctx.Err() == nil {
			req := &roomserverv1.InputEventsRequest{Events: make([]*roomserverv1.InputEvent, len(idx))}
			for k, i := range idx {
				p := &ps[i]
				req.Events[k] = newInput(p.verImpl, p.raw, p.roomID, nil, false)
			}
			resp, err := s.rooms.InputEvents(ctx, req)
			switch {
			case err != nil && isPeerDown(err):
				return err
			case err != nil:
				// One by one below, each with its own error.
				s.log.Warn("input of a room's PDUs at once failed", zap.String("room_id", room), zap.Error(err))
			case len(resp.GetResults()) == len(idx):
				results = resp.GetResults()
			}
		}
		for k, i := range idx {
			p := &ps[i]
			if results != nil && results[k].GetStatus() != roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS {
				p.named(results[k])
				p.res = pduResult(results[k])
				continue
			}
			if ctx.Err() != nil {
				p.id = "" // out of budget: left without a result
				continue
			}
			res, err := s.inputWithGaps(ctx, origin, p)
			if err != nil {
				return err
			}
			p.res = res
		}
	}
	return nil
}

// newInput is the room-server's input of a PDU of roomID as NEW,
// optionally with the state before it.
func newInput(verImpl gomatrixserverlib.IRoomVersion, raw []byte, roomID string, stateIDs []string, hasState bool) *roomserverv1.InputEvent {
	return &roomserverv1.InputEvent{RoomVersion: string(verImpl.Version()), EventJson: raw, RoomId: roomID,
		Kind: roomserverv1.InputKind_INPUT_KIND_NEW, HasState: hasState, StateEventIds: stateIDs}
}

// inputNew inputs one PDU of roomID as NEW (optionally with the state
// before it) and returns the room-server's result.
func (s *Service) inputNew(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, raw []byte, roomID string, stateIDs []string, hasState bool) (*roomserverv1.InputEventResult, error) {
	resp, err := s.rooms.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{
		newInput(verImpl, raw, roomID, stateIDs, hasState)}})
	if err != nil {
		return nil, fmt.Errorf("InputEvents: %w", err)
	}
	if len(resp.GetResults()) != 1 {
		return nil, fmt.Errorf("InputEvents: %d results for one event", len(resp.GetResults()))
	}
	return resp.GetResults()[0], nil
}

// pduResult turns an input result into the transaction's result.
func pduResult(r *roomserverv1.InputEventResult) fclient.PDUResult {
	switch r.GetStatus() {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED, roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE,
		roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED:
		// Soft-failed events are handled: stored, not shown to clients.
		return fclient.PDUResult{}
	case roomserverv1.InputStatus_INPUT_STATUS_REJECTED:
		return fclient.PDUResult{Error: "Event rejected: " + r.GetReason()}
	case roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS:
		return fclient.PDUResult{Error: "Events it refers to could not be fetched"}
	}
	return fclient.PDUResult{Error: "Invalid event: " + r.GetReason()}
}

// inputWithGaps inputs p (and names it); when the room-server misses
// events it refers to, they are fetched from origin (gap.go) and the input
// is tried again.
func (s *Service) inputWithGaps(ctx context.Context, origin spec.ServerName, p *preparedPDU) (fclient.PDUResult, error) {
	res, err := s.inputNew(ctx, p.verImpl, p.raw, p.roomID, nil, false)
	if err != nil {
		if isPeerDown(err) {
			return fclient.PDUResult{}, err
		}
		if ev, _ := parsePDU(p.verImpl, p.raw); ev != nil && p.id == "" {
			p.id = ev.EventID() // the answer names it
		}
		s.log.Error("input failed", zap.String("event_id", p.id), zap.Error(err))
		return fclient.PDUResult{Error: "The event could not be processed"}, nil
	}
	p.named(res)
	if res.GetStatus() != roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS {
		return pduResult(res), nil
	}
	// The room-server parsed it: it parses here too.
	ev, err := parsePDU(p.verImpl, p.raw)
	if err != nil {
		return fclient.PDUResult{Error: fmt.Sprintf("Invalid event: %v", err)}, nil
	}
	g := &gap{s: s, origin: origin, verImpl: p.verImpl, ev: ev, raw: p.raw}
	gctx, cancel := context.WithTimeout(ctx, s.cfg.GapBudget)
	defer cancel()
	res, err = g.fill(gctx)
	if err != nil {
		if isPeerDown(err) {
			return fclient.PDUResult{}, err
		}
		s.log.Info("gap not filled", zap.String("origin", string(origin)), zap.String("event_id", ev.EventID()), zap.Error(err))
		return fclient.PDUResult{Error: "Events it refers to could not be fetched: " + err.Error()}, nil
	}
	return pduResult(res), nil
}

// isPeerDown: a peer service (not the remote server) is unavailable; the
// transaction must be tried again rather than answered. Other failures
// (a room-server bug on some input) become that PDU's error, so one bad
// PDU cannot make its sender retry forever.
func isPeerDown(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Canceled:
		return true
	}
	return false
}
