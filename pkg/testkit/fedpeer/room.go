package fedpeer

import (
	"crypto/rand"
	"encoding/json"
	"slices"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer/peercore"
)

// Room is a room as the server holds it: its state and last event, and
// the events it applied in order. The server builds its events on the
// last one.
type Room struct {
	Server  *Server
	RoomID  string
	Version gomatrixserverlib.IRoomVersion
	State   map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	Last    gomatrixserverlib.PDU
	// Applied are the events applied to the room, in order.
	Applied []gomatrixserverlib.PDU
}

// NewRoom creates a room on the server: create, the creator's join, power
// levels, join rules (joinRule), history visibility "shared" and a name.
func (s *Server) NewRoom(version, creator, joinRule string) *Room {
	s.t.Helper()
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	rr := &Room{Server: s, Version: verImpl, State: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}}
	content := map[string]any{"room_version": version}
	if n, _ := strconv.Atoi(version); n <= 10 {
		content["creator"] = creator // room versions 1-10 name the creator
	}
	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		roomID = "!r" + randomSuffix(s) + ":" + string(s.Name)
	}
	empty := ""
	create := s.Sign(verImpl, &gomatrixserverlib.ProtoEvent{SenderID: creator, RoomID: roomID, Type: spec.MRoomCreate,
		StateKey: &empty, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: s.mustJSON(content)})
	rr.RoomID = create.RoomID().String()
	rr.Apply(create)
	rr.Add(creator, spec.MRoomMember, &creator, map[string]any{"membership": "join"})
	users := map[string]any{creator: 100}
	if verImpl.PrivilegedCreators() {
		users = map[string]any{}
	}
	rr.Add(creator, spec.MRoomPowerLevels, &empty, map[string]any{"users": users, "users_default": 0, "events_default": 0,
		"state_default": 50, "invite": 0, "ban": 50, "kick": 50, "redact": 50})
	rr.Add(creator, spec.MRoomJoinRules, &empty, map[string]any{"join_rule": joinRule})
	rr.Add(creator, spec.MRoomHistoryVisibility, &empty, map[string]any{"history_visibility": "shared"})
	rr.Add(creator, spec.MRoomName, &empty, map[string]any{"name": "remote room"})
	s.Mu.Lock()
	s.Rooms[rr.RoomID] = rr
	s.Mu.Unlock()
	return rr
}

func randomSuffix(s *Server) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		s.t.Fatal(err)
	}
	const letters = "abcdefghijklmnopqrstuvwxyz"
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

func (s *Server) mustJSON(v any) []byte {
	s.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

// Apply makes ev the room's last event (and state), and records it with
// the state before it.
func (rr *Room) Apply(ev gomatrixserverlib.PDU) {
	before := map[gomatrixserverlib.StateKeyTuple]string{}
	for k, st := range rr.State {
		before[k] = st.EventID()
	}
	rr.Server.Mu.Lock()
	rr.Server.Events[ev.EventID()] = &Event{PDU: ev, StateBefore: before}
	rr.Server.Mu.Unlock()
	if sk := ev.StateKey(); sk != nil {
		rr.State[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
	}
	rr.Applied = append(rr.Applied, ev)
	rr.Last = ev
}

// Proto is an event on the room's last event with auth events from its
// state.
func (rr *Room) Proto(sender, typ string, stateKey *string, content any) *gomatrixserverlib.ProtoEvent {
	t := rr.Server.t
	t.Helper()
	pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: rr.RoomID, Type: typ, StateKey: stateKey,
		PrevEvents: []string{rr.Last.EventID()}, Depth: rr.Last.Depth() + 1, Content: rr.Server.mustJSON(content), Version: rr.Version}
	if err := peercore.AddAuthEvents(rr.Version, pe, rr.State); err != nil {
		t.Fatal(err)
	}
	return pe
}

// Build signs an event on the room's last event without applying it.
func (rr *Room) Build(sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	rr.Server.t.Helper()
	return rr.Server.Sign(rr.Version, rr.Proto(sender, typ, stateKey, content))
}

// Add builds and applies an event.
func (rr *Room) Add(sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	rr.Server.t.Helper()
	ev := rr.Build(sender, typ, stateKey, content)
	rr.Apply(ev)
	return ev
}

// Message adds a text message.
func (rr *Room) Message(sender, body string) gomatrixserverlib.PDU {
	rr.Server.t.Helper()
	return rr.Add(sender, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body})
}

// StateIDs are the event IDs of the current state, sorted.
func (rr *Room) StateIDs() []string {
	out := IDs(rr.StateEvents())
	slices.Sort(out)
	return out
}

// StateEvents are the current state events.
func (rr *Room) StateEvents() []gomatrixserverlib.PDU {
	out := make([]gomatrixserverlib.PDU, 0, len(rr.State))
	for _, ev := range rr.State {
		out = append(out, ev)
	}
	return out
}
