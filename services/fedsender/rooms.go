package fedsender

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/logging"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// Room events. The sender keeps a copy of every room's memberships from
// the room-server's stream (the state events each commit added and
// removed), applied in stream order, so "the servers in the room" before
// and after an event are lookups in its own schema (one index probe per
// server, store.JoinedServers; the servers before only when the event may
// change who is joined), in the same transaction that queues the event:
// no call to the room-server per event, and presence and device list updates ("servers sharing a room
// with the user") need the same copy. A room the copy has not seen (its
// events older than the stream keeps, which cannot happen for a room
// with remote members, as those came through the stream) is loaded once
// from the room-server's state before the first event it sees.

// pduEvent holds the fields of a PDU the sender reads.
type pduEvent struct {
	Type     string  `json:"type"`
	Sender   string  `json:"sender"`
	StateKey *string `json:"state_key"`
	Content  struct {
		Membership string `json:"membership"`
	} `json:"content"`
}

type bootstrapKey struct{}

// prepareRoomEvent loads the members of a room the copy does not know yet
// (a remote call, so outside the transaction). inBatch holds the rooms of
// the batch's earlier new events: the transaction adds them to the copy
// before this event, so they need no loading.
func (s *Service) prepareRoomEvent(ctx context.Context, m jetstream.Msg, inBatch map[string]bool) (context.Context, error) {
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(m.Data(), &out); err != nil || out.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW {
		return ctx, nil
	}
	if inBatch[out.GetRoomId()] {
		return ctx, nil
	}
	known, err := s.store.RoomKnown(ctx, out.GetRoomId())
	if err != nil || known {
		inBatch[out.GetRoomId()] = known
		return ctx, err
	}
	var ev pduEvent
	if json.Unmarshal(out.GetEventJson(), &ev) != nil {
		return ctx, nil // dropped by applyRoomEvent: the room's next event loads it
	}
	inBatch[out.GetRoomId()] = true
	if ev.Type == "m.room.create" {
		return ctx, nil
	}
	resp, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: out.GetRoomId(), EventId: out.GetEventId()})
	if status.Code(err) == codes.NotFound {
		return ctx, nil
	}
	if err != nil {
		return ctx, fmt.Errorf("QueryState of %s before %s: %w", out.GetRoomId(), out.GetEventId(), err)
	}
	var members []store.Member
	for _, e := range resp.GetState() {
		if mem, ok := memberOf(e.GetEventJson(), e.GetEventId()); ok {
			members = append(members, mem)
		}
	}
	s.log.Info("membership copy: room loaded from the room-server", logging.RoomID(out.GetRoomId()), zap.Int("members", len(members)))
	return context.WithValue(ctx, bootstrapKey{}, members), nil
}

// memberOf reads an m.room.member state event.
func memberOf(raw []byte, eventID string) (store.Member, bool) {
	var ev pduEvent
	if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.room.member" || ev.StateKey == nil || ev.Content.Membership == "" {
		return store.Member{}, false
	}
	return store.Member{UserID: *ev.StateKey, ServerName: serverOf(*ev.StateKey), Membership: ev.Content.Membership, EventID: eventID}, true
}

// applyRoomEvent updates the membership copy with a committed event and,
// when this server's user sent it, queues it for every other server in
// the room before or after it (a leaving server gets its leave, a joining
// one its join), and for the target's server when a local user rescinds
// a remote user's invite or refuses their knock (that server is not in
// the room, but its user must learn of it).
func (s *Service) applyRoomEvent(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(m.Data(), &out); err != nil {
		s.log.Error("dropping an undecodable room event", zap.String("subject", m.Subject()), zap.Error(err))
		return nil, nil
	}
	// Backfilled history and out-of-room memberships change no current
	// state, and only new events go to other servers.
	if out.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW {
		return nil, nil
	}
	roomID := out.GetRoomId()
	if out.GetStatePart() < out.GetStateParts() {
		// A leading part of a large state change (the event comes with
		// the last part): its members only. Applying it again writes the
		// same rows.
		return nil, s.applyStatePart(ctx, tx, &out)
	}
	var ev pduEvent
	if err := json.Unmarshal(out.GetEventJson(), &ev); err != nil {
		s.log.Error("dropping a room event that is not JSON", logging.EventID(out.GetEventId()), zap.Error(err))
		return nil, nil
	}
	known, err := tx.RoomKnown(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !known {
		members, _ := ctx.Value(bootstrapKey{}).([]store.Member)
		if err := tx.AddRoom(ctx, roomID, members); err != nil {
			return nil, err
		}
	}
	var changes []store.Member
	for _, raw := range out.GetAddedStateEvents() {
		var id struct {
			EventID string `json:"event_id"`
		}
		_ = json.Unmarshal(raw, &id)
		if id.EventID == "" {
			id.EventID = eventIDOf(raw, out.GetRoomVersion())
		}
		if mem, ok := memberOf(raw, id.EventID); ok {
			changes = append(changes, mem)
		}
	}
	removed := out.GetRemovedStateEventIds()
	// Other servers' events only update the copy. For this server's, the
	// servers before the event are read only when it may change who is
	// joined (it adds a member event, or removes state events, which may
	// be member events): otherwise they are the servers after it.
	local := s.isLocal(ev.Sender)
	var before []string
	var targetBefore string
	isMember := ev.Type == "m.room.member" && ev.StateKey != nil
	if local && (len(changes) > 0 || len(removed) > 0) {
		if before, err = tx.JoinedServers(ctx, roomID); err != nil {
			return nil, err
		}
	}
	if local && isMember && !s.isLocal(*ev.StateKey) {
		if targetBefore, err = tx.Membership(ctx, roomID, *ev.StateKey); err != nil {
			return nil, err
		}
	}
	if err := tx.RemoveMemberEvents(ctx, roomID, removed); err != nil {
		return nil, err
	}
	if err := tx.SetMembers(ctx, roomID, changes); err != nil {
		return nil, err
	}
	if !local {
		return nil, nil
	}
	after, err := tx.JoinedServers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	dests := s.others(union(before, after))
	if isMember && !s.isLocal(*ev.StateKey) && (ev.Content.Membership == "leave" || ev.Content.Membership == "ban") &&
		(targetBefore == "invite" || targetBefore == "knock") {
		if target := serverOf(*ev.StateKey); target != "" && !slices.Contains(dests, target) {
			dests = append(dests, target)
		}
	}
	if len(dests) == 0 {
		return nil, nil
	}
	if err := tx.EnqueuePDU(ctx, dests, roomID, out.GetEventId(), out.GetEventJson()); err != nil {
		return nil, err
	}
	return dests, nil
}

// applyStatePart applies the state change a leading part of an event's
// message carries (roomserverv1.OutputRoomEvent.state_part).
func (s *Service) applyStatePart(ctx context.Context, tx *store.Tx, out *roomserverv1.OutputRoomEvent) error {
	roomID := out.GetRoomId()
	known, err := tx.RoomKnown(ctx, roomID)
	if err != nil {
		return err
	}
	if !known {
		members, _ := ctx.Value(bootstrapKey{}).([]store.Member)
		if err := tx.AddRoom(ctx, roomID, members); err != nil {
			return err
		}
	}
	if err := tx.RemoveMemberEvents(ctx, roomID, out.GetRemovedStateEventIds()); err != nil {
		return err
	}
	var changes []store.Member
	for _, raw := range out.GetAddedStateEvents() {
		var id struct {
			EventID string `json:"event_id"`
		}
		_ = json.Unmarshal(raw, &id)
		if id.EventID == "" {
			id.EventID = eventIDOf(raw, out.GetRoomVersion())
		}
		if mem, ok := memberOf(raw, id.EventID); ok {
			changes = append(changes, mem)
		}
	}
	return tx.SetMembers(ctx, roomID, changes)
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

// eventIDOf is the ID of a PDU whose JSON does not carry it (room
// versions 3 on: the reference hash), "" when it cannot be parsed.
func eventIDOf(raw []byte, roomVersion string) string {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return ""
	}
	ev, err := verImpl.NewEventFromTrustedJSON(raw, false)
	if err != nil {
		return ""
	}
	return ev.EventID()
}
