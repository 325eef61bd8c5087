package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/logging"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/appservice/store"
)

// Room events. The service keeps a copy of each room's joined members and
// aliases (from m.room.canonical_alias: alias and alt_aliases) from the
// room-server's stream, applied in stream order, so an event's interested
// appservices are found in its own schema in the transaction that queues
// the event. A room the copy has not seen is loaded once from the
// room-server's state before its first event.
//
// An appservice (with a url) is interested in an event when its sender,
// or the target of a membership, is the appservice's sender or in its
// users namespaces (local users only); when the room ID is in its rooms
// namespaces; when one of the room's aliases is in its aliases
// namespaces; or when one of its users is joined to the room (after the
// event). New events and out-of-room memberships (a local user invited to
// a remote room) are pushed; backfilled history is not.

// pduEvent holds the fields of a PDU the service reads.
type pduEvent struct {
	Type     string          `json:"type"`
	Sender   string          `json:"sender"`
	StateKey *string         `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

func (e *pduEvent) membership() string {
	var c struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(e.Content, &c)
	return c.Membership
}

func (e *pduEvent) aliases() []string {
	var c struct {
		Alias      string   `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	_ = json.Unmarshal(e.Content, &c)
	var out []string
	if c.Alias != "" {
		out = append(out, c.Alias)
	}
	for _, a := range c.AltAliases {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

type bootstrapKey struct{}

type bootstrap struct {
	joined, aliases []string
	// directory are the room's directory aliases.
	directory []string
}

// prepareRoomEvent loads a room the copy lacks from the room-server (a
// remote call, so outside the transaction). inBatch holds the rooms of the
// batch's earlier NEW events: the transaction adds them to the copy before
// this event, so they need no loading.
func (s *Service) prepareRoomEvent(ctx context.Context, m jetstream.Msg, inBatch map[string]bool) (context.Context, error) {
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(m.Data(), &out); err != nil || out.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW {
		return ctx, nil
	}
	if inBatch[out.GetRoomId()] {
		return ctx, nil
	}
	inBatch[out.GetRoomId()] = true
	if _, ok := s.roomCache.get(out.GetRoomId()); ok {
		return ctx, nil
	}
	known, err := s.store.RoomKnown(ctx, out.GetRoomId())
	if err != nil || known {
		if known {
			s.roomCache.known(out.GetRoomId())
		}
		return ctx, err
	}
	var ev pduEvent
	if json.Unmarshal(out.GetEventJson(), &ev) == nil && ev.Type == "m.room.create" {
		return ctx, nil
	}
	resp, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: out.GetRoomId(), EventId: out.GetEventId()})
	if status.Code(err) == codes.NotFound {
		return ctx, nil
	}
	if err != nil {
		return ctx, fmt.Errorf("QueryState of %s before %s: %w", out.GetRoomId(), out.GetEventId(), err)
	}
	var b bootstrap
	for _, e := range resp.GetState() {
		var st pduEvent
		if json.Unmarshal(e.GetEventJson(), &st) != nil || st.StateKey == nil {
			continue
		}
		switch {
		case st.Type == "m.room.member" && st.membership() == "join":
			b.joined = append(b.joined, *st.StateKey)
		case st.Type == "m.room.canonical_alias" && *st.StateKey == "":
			b.aliases = st.aliases()
		}
	}
	dir, err := s.rooms.ListRoomAliases(ctx, &roomserverv1.ListRoomAliasesRequest{RoomId: out.GetRoomId()})
	if err != nil {
		return ctx, fmt.Errorf("ListRoomAliases of %s: %w", out.GetRoomId(), err)
	}
	b.directory = dir.GetAliases()
	s.log.Info("room copy: room loaded from the room-server", logging.RoomID(out.GetRoomId()), zap.Int("joined", len(b.joined)))
	return context.WithValue(ctx, bootstrapKey{}, b), nil
}

// applyRoomEvent updates the room copy with a committed event and queues
// it for the interested appservices; it returns them.
func (s *Service) applyRoomEvent(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(m.Data(), &out); err != nil {
		s.log.Error("dropping an undecodable room event", zap.String("subject", m.Subject()), zap.Error(err))
		return nil, nil
	}
	if out.GetKind() == roomserverv1.OutputKind_OUTPUT_KIND_BACKFILL {
		return nil, nil
	}
	if out.GetStatePart() < out.GetStateParts() {
		// A leading part of a large state change (the event comes with
		// the last part): the room copy only.
		if out.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW {
			return nil, nil
		}
		return nil, s.updateRoomCopy(ctx, tx, &out)
	}
	var ev pduEvent
	if err := json.Unmarshal(out.GetEventJson(), &ev); err != nil {
		s.log.Error("dropping a room event that is not JSON", logging.EventID(out.GetEventId()), zap.Error(err))
		return nil, nil
	}
	roomID := out.GetRoomId()
	isNew := out.GetKind() == roomserverv1.OutputKind_OUTPUT_KIND_NEW
	if isNew {
		if err := s.updateRoomCopy(ctx, tx, &out); err != nil {
			return nil, err
		}
	}
	var target string
	if ev.Type == "m.room.member" && ev.StateKey != nil {
		target = *ev.StateKey
	}
	// The room-wide interest is computed only when an appservice needs it
	// (none does when none is registered), and then kept until the room's
	// members or aliases change (roomCache).
	var roomWide []string
	roomWideKnown := false
	var ids []string
	for _, r := range s.regs.List() {
		if !r.HasURL() {
			continue
		}
		interested := r.IsInterestedInUser(ev.Sender) || (target != "" && r.IsInterestedInUser(target))
		if !interested && isNew {
			if !roomWideKnown {
				var err error
				if roomWide, err = s.roomWideInterest(ctx, tx, roomID); err != nil {
					return nil, err
				}
				roomWideKnown = true
			}
			interested = slices.Contains(roomWide, r.ID)
		}
		if !interested && !isNew {
			interested = r.IsInterestedInRoom(roomID)
		}
		if interested {
			ids = append(ids, r.ID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	body, err := clientFormat(&out)
	if err != nil {
		s.log.Error("dropping a room event that does not parse", logging.EventID(out.GetEventId()), zap.Error(err))
		return nil, nil
	}
	return ids, tx.Enqueue(ctx, ids, store.KindEvent, body)
}

// updateRoomCopy applies the state a new event added: memberships and
// aliases.
func (s *Service) updateRoomCopy(ctx context.Context, tx *store.Tx, out *roomserverv1.OutputRoomEvent) error {
	roomID := out.GetRoomId()
	s.forgetChangedInterest(out)
	known, err := s.copyHas(ctx, tx, roomID)
	if err != nil {
		return err
	}
	if !known {
		b, _ := ctx.Value(bootstrapKey{}).(bootstrap)
		if err := tx.AddRoom(ctx, roomID, b.joined, b.aliases); err != nil {
			return err
		}
		if err := tx.AddDirectoryAliases(ctx, roomID, b.directory); err != nil {
			return err
		}
	}
	// A message adds one event per state key: the memberships go in
	// two statements (a join of a remote room adds thousands).
	var joined, left []string
	for _, raw := range out.GetAddedStateEvents() {
		var st pduEvent
		if json.Unmarshal(raw, &st) != nil || st.StateKey == nil {
			continue
		}
		switch {
		case st.Type == "m.room.member":
			if st.membership() == "join" {
				joined = append(joined, *st.StateKey)
			} else {
				left = append(left, *st.StateKey)
			}
		case st.Type == "m.room.canonical_alias" && *st.StateKey == "":
			if err := tx.SetAliases(ctx, roomID, st.aliases()); err != nil {
				return err
			}
		}
	}
	return tx.SetMemberships(ctx, roomID, joined, left)
}

// roomEventNoop reports, without the database, that applying m would
// change nothing but the position: backfilled history, or a new event that
// changes no state, of a room whose room-wide interest is cached as none,
// whose sender no appservice (with a url) is interested in. Anything else,
// or anything it cannot tell, is not a no-op.
func (s *Service) roomEventNoop(m jetstream.Msg) bool {
	var out roomserverv1.OutputRoomEvent
	if proto.Unmarshal(m.Data(), &out) != nil {
		return false
	}
	switch out.GetKind() {
	case roomserverv1.OutputKind_OUTPUT_KIND_BACKFILL:
		return true
	case roomserverv1.OutputKind_OUTPUT_KIND_NEW:
	default:
		return false
	}
	if len(out.GetAddedStateEvents()) > 0 || len(out.GetRemovedStateEventIds()) > 0 {
		return false
	}
	if e, ok := s.roomCache.get(out.GetRoomId()); !ok || !e.computed || len(e.interested) > 0 {
		return false
	}
	var ev pduEvent
	if json.Unmarshal(out.GetEventJson(), &ev) != nil || (ev.Type == "m.room.member" && ev.StateKey != nil) {
		return false
	}
	for _, r := range s.regs.List() {
		if r.HasURL() && r.IsInterestedInUser(ev.Sender) {
			return false
		}
	}
	return true
}

// copyHas reports whether the room copy has the room, from the cache or
// else from tx. Either way the cache holds the room as known afterwards:
// when it was not, the caller adds it in tx (and a failed batch resets
// the cache).
func (s *Service) copyHas(ctx context.Context, tx *store.Tx, roomID string) (bool, error) {
	if _, ok := s.roomCache.get(roomID); ok {
		return true, nil
	}
	known, err := tx.RoomKnown(ctx, roomID)
	if err == nil {
		s.roomCache.known(roomID)
	}
	return known, err
}

// forgetChangedInterest forgets the room-wide interest of the event's room
// when the event changes its members or aliases (before the copy changes
// in the transaction: the next read of the interest reads the copy).
func (s *Service) forgetChangedInterest(out *roomserverv1.OutputRoomEvent) {
	for _, raw := range out.GetAddedStateEvents() {
		var st pduEvent
		if json.Unmarshal(raw, &st) != nil || st.StateKey == nil {
			continue
		}
		if st.Type == "m.room.member" || (st.Type == "m.room.canonical_alias" && *st.StateKey == "") {
			s.roomCache.known(out.GetRoomId())
			return
		}
	}
}

// roomWideInterest returns the appservices (with a url) interested in the
// whole room, from the cache or else from the room copy in tx.
func (s *Service) roomWideInterest(ctx context.Context, tx *store.Tx, roomID string) ([]string, error) {
	if e, ok := s.roomCache.get(roomID); ok && e.computed {
		return e.interested, nil
	}
	gen := s.roomCache.generation()
	room, err := tx.Room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, r := range s.regs.List() {
		if r.HasURL() && roomInterest(r, roomID, room) {
			ids = append(ids, r.ID)
		}
	}
	s.roomCache.setInterest(roomID, ids, gen)
	return ids, nil
}

// roomInterest reports whether the appservice is interested in everything
// of the room: its ID or an alias is in its namespaces, or one of its
// users is joined.
func roomInterest(r *asreg.Registration, roomID string, room store.Room) bool {
	if r.IsInterestedInRoom(roomID) {
		return true
	}
	for _, a := range room.Aliases {
		if r.IsInterestedInAlias(a) {
			return true
		}
	}
	for _, u := range room.Joined {
		if r.IsInterestedInUser(u) {
			return true
		}
	}
	return false
}

// clientFormat renders a committed event as the client-server API does,
// with room_id (and unsigned.redacted_because when it comes redacted).
func clientFormat(out *roomserverv1.OutputRoomEvent) ([]byte, error) {
	pdu, err := clientevent.ParseOutputPDU(out.GetRoomVersion(), out.GetEventId(), out.GetEventJson())
	if err != nil {
		return nil, err
	}
	ce := clientevent.NewClientEvent(pdu)
	ce.RoomID = out.GetRoomId()
	if rb := out.GetRedactedBecause(); len(rb) > 0 {
		if red, err := clientevent.ParsePDU(out.GetRoomVersion(), rb); err == nil {
			rce := clientevent.NewClientEvent(red)
			rce.RoomID = out.GetRoomId()
			unsigned := map[string]any{}
			_ = json.Unmarshal(ce.Unsigned, &unsigned)
			unsigned["redacted_because"] = rce
			ce.Unsigned, _ = json.Marshal(unsigned)
		}
	}
	return ce.Marshal()
}

// applyAliasChange records a room directory alias's new state
// (MYELIN_ROOM_ALIASES): the rooms with an alias in an appservice's
// aliases namespaces interest it (spec: "the room has an alias in the
// namespace"), canonical or not. It queues nothing. The rooms it changes
// are forgotten by the rooms consumer's cache once the batch commits
// (aliasesApplied).
func (s *Service) applyAliasChange(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var c roomserverv1.AliasChange
	if err := proto.Unmarshal(m.Data(), &c); err != nil || c.GetAlias() == "" {
		if err == nil {
			err = errors.New("no alias")
		}
		return s.undecodable(m, err)
	}
	rooms, err := tx.SetDirectoryAlias(ctx, c.GetAlias(), c.GetRoomId())
	if err == nil {
		s.aliasRoomsMu.Lock()
		s.aliasRooms = append(s.aliasRooms, rooms...)
		s.aliasRoomsMu.Unlock()
	}
	return nil, err
}

// aliasesApplied makes the rooms consumer's cache forget the rooms whose
// directory aliases a committed batch changed, so their interest is read
// again from the copy (and their events are not skipped as no-ops). Rooms
// of a batch that rolled back are forgotten with the next commit, which
// is harmless.
func (s *Service) aliasesApplied() {
	s.aliasRoomsMu.Lock()
	rooms := s.aliasRooms
	s.aliasRooms = nil
	s.aliasRoomsMu.Unlock()
	if len(rooms) > 0 {
		s.roomCache.forget(rooms...)
	}
}
