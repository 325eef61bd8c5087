package roomserver

// CreateRoom and SendEvent: local events, built on the room's current
// forward extremities and current state, signed with the key the
// key-server hands out (build.go) and then run through the same pipeline as every other event
// (input.go).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go"

	"github.com/myelin-chat/myelin/pkg/logging"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// template is a validated EventTemplate.
type template struct {
	Type     string
	StateKey *string
	Content  json.RawMessage
	Redacts  string
	// OriginTS is the sender's origin_server_ts (ms), nil for now.
	OriginTS *int64
}

// maxCanonicalInt is the largest integer canonical JSON allows (2^53-1).
const maxCanonicalInt = 1<<53 - 1

var knownMemberships = []string{spec.Join, spec.Invite, spec.Leave, spec.Ban, spec.Knock}

// parseTemplate checks what the auth rules cannot: that content is a JSON
// object and that membership events name a user and a membership.
func parseTemplate(verImpl gomatrixserverlib.IRoomVersion, t *roomserverv1.EventTemplate) (template, error) {
	out := template{Type: t.GetType(), StateKey: t.StateKey, Content: t.GetContent(), Redacts: t.GetRedacts(), OriginTS: t.OriginServerTs}
	if out.OriginTS != nil && (*out.OriginTS < 0 || *out.OriginTS > maxCanonicalInt) {
		return out, fmt.Errorf("%w: origin_server_ts out of range", ErrBadRequest)
	}
	if out.Type == "" {
		return out, fmt.Errorf("%w: event type is empty", ErrBadRequest)
	}
	if len(out.Content) == 0 {
		out.Content = json.RawMessage(`{}`)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(out.Content, &obj); err != nil || obj == nil {
		return out, fmt.Errorf("%w: content of %s is not a JSON object", ErrBadRequest, out.Type)
	}
	if err := checkIntegers(out.Content); err != nil {
		return out, fmt.Errorf("%w: content of %s: %v", ErrBadRequest, out.Type, err)
	}
	// gomatrixserverlib's canonical JSON writes a control character
	// escaped in an object key (\b, \u0001) raw, which is not JSON. The
	// key-server's builder then fails on it; refuse it here, with a reason
	// a client can read, before a round trip to the key-server.
	if canon, err := gomatrixserverlib.CanonicalJSON(out.Content); err != nil || !json.Valid(canon) {
		return out, fmt.Errorf("%w: content of %s has no canonical JSON form (a control character in a key?)", ErrBadRequest, out.Type)
	}
	switch out.Type {
	case spec.MRoomCreate:
		// Only CreateRoom makes a room's create event; any later one
		// would be rejected by the auth rules (it has prev_events).
		return out, fmt.Errorf("%w: m.room.create is only sent when the room is created", ErrBadRequest)
	case spec.MRoomRedaction:
		if err := normalizeRedaction(verImpl.Version(), &out); err != nil {
			return out, err
		}
	case spec.MRoomMember:
		if out.StateKey == nil {
			return out, fmt.Errorf("%w: m.room.member needs a state key", ErrBadRequest)
		}
		if _, err := spec.NewUserID(*out.StateKey, true); err != nil {
			return out, fmt.Errorf("%w: m.room.member state key %q is not a user ID", ErrBadRequest, *out.StateKey)
		}
		var c struct {
			Membership string `json:"membership"`
		}
		if err := json.Unmarshal(out.Content, &c); err != nil || !slices.Contains(knownMemberships, c.Membership) {
			return out, fmt.Errorf("%w: m.room.member content needs a valid membership", ErrBadRequest)
		}
	case spec.MRoomPowerLevels:
		if out.StateKey != nil && *out.StateKey == "" {
			var pl gomatrixserverlib.PowerLevelContent
			if err := verImpl.ParsePowerLevels(out.Content, &pl); err != nil {
				return out, fmt.Errorf("%w: malformed m.room.power_levels content: %v", ErrBadRequest, err)
			}
		}
	}
	return out, nil
}

// plainInteger is the only number spelling canonical JSON has.
var plainInteger = regexp.MustCompile(`^(0|-?[1-9][0-9]*)$`)

// checkIntegers refuses numbers that are not written as plain integers
// (1E2, 0.0, -0, 1.5). Canonical JSON has only integers (appendices,
// "Canonical JSON"); gomatrixserverlib's builder refuses fractions and
// lower-case exponents of non-zero values but would sign 1E2 and 0.0 as
// given, an event that other servers and clients (mautrix) refuse as not
// canonical. The range of room versions 6 and later is checked by the
// builder.
func checkIntegers(content []byte) error {
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if n, ok := tok.(json.Number); ok && !plainInteger.MatchString(string(n)) {
			return fmt.Errorf("number %s is not an integer in canonical form", n)
		}
	}
}

// localSender checks that a user ID is valid and belongs to this server
// (only this server's key signs here).
func (s *Service) localSender(userID string) error {
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return fmt.Errorf("%w: invalid user ID %q", ErrBadRequest, userID)
	}
	if u.Domain() != s.serverName {
		return fmt.Errorf("%w: %s is not a user of %s", ErrBadRequest, userID, s.serverName)
	}
	return nil
}

func stateKeysOf(ts []template) []store.StateKey {
	var out []store.StateKey
	for _, t := range ts {
		if t.StateKey != nil {
			out = append(out, store.StateKey{Type: t.Type, StateKey: *t.StateKey})
		}
	}
	return out
}

// createRoom builds and commits m.room.create and the initial events in one
// transaction: if any event is refused, nothing is stored.
func (s *Service) createRoom(ctx context.Context, req *roomserverv1.CreateRoomRequest) (*roomserverv1.CreateRoomResponse, error) {
	creator := req.GetCreator()
	if err := s.localSender(creator); err != nil {
		return nil, err
	}
	version := gomatrixserverlib.RoomVersion(req.GetRoomVersion())
	if version == "" {
		version = gomatrixserverlib.RoomVersion(s.cfg.DefaultRoomVersion)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil || !verImpl.Stable() {
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedRoomVersion, version)
	}
	content := map[string]json.RawMessage{}
	if len(req.GetCreateContent()) > 0 {
		if err := json.Unmarshal(req.GetCreateContent(), &content); err != nil || content == nil {
			return nil, fmt.Errorf("%w: creation content is not a JSON object", ErrBadRequest)
		}
	}
	content["room_version"], _ = json.Marshal(version)
	if createNeedsCreator(version) {
		content["creator"], _ = json.Marshal(creator)
	}
	createContent, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	templates := make([]template, 0, len(req.GetInitialEvents()))
	for i, t := range req.GetInitialEvents() {
		tmpl, err := parseTemplate(verImpl, t)
		if err != nil {
			return nil, fmt.Errorf("initial event %d: %w", i, err)
		}
		templates = append(templates, tmpl)
	}

	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		if roomID, err = newRoomID(s.serverName); err != nil {
			return nil, err
		}
	}
	empty := ""
	create, err := s.signer.Build(ctx, verImpl, &gomatrixserverlib.ProtoEvent{
		SenderID: creator, RoomID: roomID, Type: spec.MRoomCreate, StateKey: &empty,
		PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: createContent,
	})
	if err != nil {
		return nil, err
	}
	roomID = create.RoomID().String()
	if err := s.ensureStateKeys(ctx, append(stateKeysOf(templates), store.StateKey{Type: spec.MRoomCreate})); err != nil {
		return nil, err
	}

	if err := s.deliverable(); err != nil {
		return nil, err
	}
	unlock := s.locks.lock(roomID)
	defer unlock()
	w, err := s.beginWrite(ctx, roomID, nil)
	if err != nil {
		return nil, err
	}
	defer w.rollback(ctx)
	resp := &roomserverv1.CreateRoomResponse{RoomId: roomID, RoomVersion: string(version)}
	if _, err := s.inputLocal(ctx, w, version, create, inputOpts{local: true}); err != nil {
		return nil, fmt.Errorf("create event: %w", err)
	}
	resp.EventIds = append(resp.EventIds, create.EventID())
	for i, tmpl := range templates {
		room, err := w.Room(ctx, roomID)
		if err != nil {
			return nil, err
		}
		ev, refs, err := s.buildOnCurrent(ctx, w, room, creator, tmpl)
		if err != nil {
			return nil, fmt.Errorf("initial event %d (%s): %w", i, tmpl.Type, err)
		}
		if _, err := s.inputLocal(ctx, w, version, ev, inputOpts{local: true, refs: refs}); err != nil {
			return nil, fmt.Errorf("initial event %d (%s): %w", i, tmpl.Type, err)
		}
		resp.EventIds = append(resp.EventIds, ev.EventID())
	}
	if err := s.commit(ctx, w); err != nil {
		return nil, err
	}
	s.log.Info("room created", logging.RoomID(roomID), logging.UserID(creator), logging.EventID(create.EventID()))
	return resp, nil
}

// createNeedsCreator: room versions before 11 carry the creator in the
// create event's content (checkCreateEventV1 in gomatrixserverlib demands
// it); from 11 on the sender is the creator.
func createNeedsCreator(v gomatrixserverlib.RoomVersion) bool {
	switch v {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		return true
	}
	return false
}

// sendEvent builds a local event on the room's forward extremities and
// commits it, or refuses it without storing anything.
func (s *Service) sendEvent(ctx context.Context, req *roomserverv1.SendEventRequest) (*roomserverv1.SendEventResponse, error) {
	roomID, sender := req.GetRoomId(), req.GetSender()
	if _, err := spec.NewRoomID(roomID); err != nil {
		return nil, fmt.Errorf("%w: invalid room ID %q", ErrBadRequest, roomID)
	}
	if err := s.localSender(sender); err != nil {
		return nil, err
	}
	txn := req.GetTransactionId()
	if txn != nil && txn.GetTxnId() == "" {
		txn = nil
	}
	version, err := s.roomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, err
	}
	tmpl, err := parseTemplate(verImpl, req.GetEvent())
	if err != nil {
		return nil, err
	}
	if err := s.ensureStateKeys(ctx, stateKeysOf([]template{tmpl})); err != nil {
		return nil, err
	}

	var txnKey *store.TxnKey
	if txn != nil {
		txnKey = &store.TxnKey{Sender: sender, DeviceID: txn.GetDeviceId(), TxnID: txn.GetTxnId()}
	}
	// The signing key is asked for (when due) before the room's lock is
	// taken; a failure shows again when the event is built.
	_, _ = s.signer.Identity(ctx)
	unlock := s.locks.lock(roomID)
	defer unlock()
	w, err := s.beginWrite(ctx, roomID, txnKey)
	if err != nil {
		return nil, err
	}
	defer w.rollback(ctx)
	room, err := w.Room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if w.TxnEventID != "" {
		return &roomserverv1.SendEventResponse{EventId: w.TxnEventID, Deduplicated: true}, nil
	}
	if err := s.deliverable(); err != nil {
		return nil, err
	}
	if tmpl, err = s.authoriseLocalMember(ctx, w, room, sender, tmpl); err != nil {
		return nil, err
	}
	if tmpl.Type == spec.MRoomRedaction {
		if err := s.checkLocalRedaction(ctx, w, room, sender, tmpl); err != nil {
			return nil, err
		}
	}
	ev, refs, err := s.buildOnCurrent(ctx, w, room, sender, tmpl)
	if err != nil {
		return nil, err
	}
	if _, err := s.inputLocal(ctx, w, version, ev, inputOpts{local: true, txn: txn, sender: sender, refs: refs}); err != nil {
		return nil, err
	}
	if err := s.commit(ctx, w); err != nil {
		return nil, err
	}
	return &roomserverv1.SendEventResponse{EventId: ev.EventID()}, nil
}

// deliverable refuses a local write while this room-server's NATS
// connection is down (ErrUndeliverable). The event would commit, but
// nothing could read it until NATS is back (the outbox would publish it
// then), and the client-API would hold the request waiting for its copy:
// failing fast, before anything is stored, lets the client retry. A
// connection lost after this check does not lose the event either: the
// outbox keeps it until it is published.
func (s *Service) deliverable() error {
	if st := s.js.Conn().Status(); st != nats.CONNECTED {
		return fmt.Errorf("%w (connection %s)", ErrUndeliverable, st)
	}
	return nil
}

// roomVersion returns a room's version (cached: it never changes), or
// ErrRoomNotFound.
func (s *Service) roomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	if v, ok := s.roomVersions.Get(roomID); ok {
		return v, nil
	}
	room, err := s.room(ctx, roomID)
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("%w: %s", ErrRoomNotFound, roomID)
	} else if err != nil {
		return "", err
	}
	v := gomatrixserverlib.RoomVersion(room.Version)
	s.roomVersions.Put(roomID, v)
	return v, nil
}

// inputLocal runs a locally built event through the pipeline inside w.
// Refusals become ErrForbidden (nothing was written for them).
//
// Steps 1 and 2 (parse as untrusted, verify signatures) are skipped: the
// event was just built by gomatrixserverlib's EventBuilder (content hash,
// event ID, field checks) and signed with our own key (signer.build),
// so they could only fail on a bug; TestLocalEventsVerify checks that what
// the room-server builds parses as untrusted and verifies against the
// key-server's published keys.
func (s *Service) inputLocal(ctx context.Context, w *writeTx, version gomatrixserverlib.RoomVersion, built gomatrixserverlib.PDU, opts inputOpts) (inputResult, error) {
	if built.Version() != version {
		return inputResult{}, fmt.Errorf("locally built event is for room version %s, not %s", built.Version(), version)
	}
	res, err := s.processEvent(ctx, w, built, opts)
	if err != nil {
		return res, err
	}
	switch res.status {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED:
		return res, nil
	case roomserverv1.InputStatus_INPUT_STATUS_REJECTED, roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED:
		return res, fmt.Errorf("%w: %s", ErrForbidden, res.reason)
	default:
		return res, fmt.Errorf("locally built event %s: %s: %s", res.eventID, res.status, res.reason)
	}
}

// buildOnCurrent fills in prev_events (the forward extremities, newest
// first, at most MaxPrevEvents), depth and auth_events (from the current
// state, as gomatrixserverlib.StateNeededForProtoEvent says) and builds.
// refs are the prev and auth events it used, by event ID (processEvent
// then need not read them again).
func (s *Service) buildOnCurrent(ctx context.Context, w *writeTx, room store.Room, sender string, t template) (ev gomatrixserverlib.PDU, refs map[string]*eventEntry, err error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	if err != nil {
		return nil, nil, err
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: room.RoomID, Type: t.Type, StateKey: t.StateKey,
		Content: spec.RawJSON(t.Content), Redacts: t.Redacts, Version: verImpl,
	}
	refs, _, err = s.fillOnCurrent(ctx, w.Queries, room, pe)
	if err != nil {
		return nil, nil, err
	}
	ev, err = s.signer.BuildAt(ctx, verImpl, pe, t.OriginTS)
	return ev, refs, err
}

// fillOnCurrent fills in a proto-event's prev_events (the forward
// extremities, newest first, at most MaxPrevEvents), depth and auth_events
// (from the current state). It returns the prev and auth events by ID and
// the auth events as a provider.
func (s *Service) fillOnCurrent(ctx context.Context, q *store.Queries, room store.Room, pe *gomatrixserverlib.ProtoEvent) (map[string]*eventEntry, *gomatrixserverlib.AuthEvents, error) {
	ext, err := s.loadEvents(ctx, q, room.Extremities)
	if err != nil {
		return nil, nil, err
	}
	prevs := make([]*eventEntry, 0, len(ext))
	for _, e := range ext {
		prevs = append(prevs, e)
	}
	slices.SortFunc(prevs, func(a, b *eventEntry) int { return int(b.Depth - a.Depth) })
	if len(prevs) > s.cfg.MaxPrevEvents {
		prevs = prevs[:s.cfg.MaxPrevEvents]
	}
	prevIDs := make([]string, len(prevs))
	var depth int64
	for i, p := range prevs {
		prevIDs[i] = p.EventID
		depth = max(depth, p.Depth)
	}
	pe.PrevEvents, pe.Depth = prevIDs, depth+1
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(pe)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	current, err := s.loadState(ctx, q, room.SnapshotNID)
	if err != nil {
		return nil, nil, err
	}
	authEntries, err := s.stateEntriesFor(ctx, q, current.state, needed.Tuples())
	if err != nil {
		return nil, nil, err
	}
	refs := make(map[string]*eventEntry, len(prevs)+len(authEntries))
	authPDUs := make([]gomatrixserverlib.PDU, len(authEntries))
	for i, e := range authEntries {
		authPDUs[i] = e.pdu
		refs[e.EventID] = e
	}
	for _, p := range prevs {
		refs[p.EventID] = p
	}
	provider, err := gomatrixserverlib.NewAuthEvents(authPDUs)
	if err != nil {
		return nil, nil, err
	}
	eb := pe.Version.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	pe.AuthEvents = eb.AuthEvents
	return refs, provider, nil
}
