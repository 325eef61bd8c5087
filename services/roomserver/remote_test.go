package roomserver

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// remoteServer is another homeserver in the tests: its events are built
// and signed here with gomatrixserverlib and its own ed25519 key, and it
// publishes that key over HTTPS when given to newHarness as a peer
// (remote_keys_test.go).
type remoteServer struct {
	name  string
	keyID gomatrixserverlib.KeyID
	key   ed25519.PrivateKey
	// keyRequests counts the requests for its keys it answered.
	keyRequests atomic.Int64
}

func newRemote(t testing.TB, name string) *remoteServer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &remoteServer{name: name, keyID: "ed25519:test", key: key}
}

func (r *remoteServer) user(local string) string { return "@" + local + ":" + r.name }

// sign builds a proto-event as this server.
func (r *remoteServer) sign(t testing.TB, verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	t.Helper()
	pe.Version = verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), spec.ServerName(r.name), r.keyID, r.key)
	if err != nil {
		t.Fatalf("build %s: %v", pe.Type, err)
	}
	return ev
}

// remoteRoom is a room as a remote server holds it: a linear history, the
// state after its last event.
type remoteRoom struct {
	t       testing.TB
	verImpl gomatrixserverlib.IRoomVersion
	roomID  string
	events  []gomatrixserverlib.PDU
	state   map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	last    gomatrixserverlib.PDU
}

// newRemoteRoom creates a room on r: create, the creator's join, power
// levels, join rules, history visibility and a name.
func newRemoteRoom(t testing.TB, r *remoteServer, version, joinRule string) *remoteRoom {
	t.Helper()
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	rr := &remoteRoom{t: t, verImpl: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}}
	creator := r.user("ron")
	createContent := map[string]any{"room_version": version}
	if createNeedsCreator(verImpl.Version()) {
		createContent["creator"] = creator
	}
	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		roomID = "!remote" + randomSuffix(t) + ":" + r.name
	}
	empty := ""
	create := r.sign(t, verImpl, &gomatrixserverlib.ProtoEvent{SenderID: creator, RoomID: roomID, Type: spec.MRoomCreate,
		StateKey: &empty, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: mustJSON(t, createContent)})
	rr.roomID = create.RoomID().String()
	rr.apply(create)
	rr.add(r, creator, spec.MRoomMember, &creator, map[string]any{"membership": "join"})
	users := map[string]any{creator: 100}
	if verImpl.PrivilegedCreators() {
		users = map[string]any{}
	}
	rr.add(r, creator, spec.MRoomPowerLevels, &empty, map[string]any{"users": users, "users_default": 0, "events_default": 0,
		"state_default": 50, "invite": 0, "ban": 50, "kick": 50, "redact": 50})
	rr.add(r, creator, spec.MRoomJoinRules, &empty, map[string]any{"join_rule": joinRule})
	rr.add(r, creator, spec.MRoomHistoryVisibility, &empty, map[string]any{"history_visibility": "shared"})
	rr.add(r, creator, spec.MRoomName, &empty, map[string]any{"name": "remote room"})
	return rr
}

func randomSuffix(t testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	const letters = "abcdefghijklmnopqrstuvwxyz"
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

func (rr *remoteRoom) apply(ev gomatrixserverlib.PDU) {
	rr.events = append(rr.events, ev)
	rr.last = ev
	if sk := ev.StateKey(); sk != nil {
		rr.state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
	}
}

// proto fills in prev_events (the last event), depth and auth_events.
func (rr *remoteRoom) proto(sender, typ string, stateKey *string, content any) *gomatrixserverlib.ProtoEvent {
	rr.t.Helper()
	pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: rr.roomID, Type: typ, StateKey: stateKey,
		PrevEvents: []string{rr.last.EventID()}, Depth: rr.last.Depth() + 1, Content: mustJSON(rr.t, content), Version: rr.verImpl}
	var st []gomatrixserverlib.PDU
	for _, ev := range rr.state {
		st = append(st, ev)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(st)
	if err != nil {
		rr.t.Fatal(err)
	}
	eb := rr.verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		rr.t.Fatal(err)
	}
	pe.AuthEvents = eb.AuthEvents
	return pe
}

// add builds an event of r on the room's last event and applies it.
func (rr *remoteRoom) add(r *remoteServer, sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	rr.t.Helper()
	ev := r.sign(rr.t, rr.verImpl, rr.proto(sender, typ, stateKey, content))
	rr.apply(ev)
	return ev
}

// stateIDs are the event IDs of the current state.
func (rr *remoteRoom) stateIDs() []string {
	var out []string
	for _, ev := range rr.state {
		out = append(out, ev.EventID())
	}
	slices.Sort(out)
	return out
}

// stateEvents returns the current state events.
func (rr *remoteRoom) stateEvents() []gomatrixserverlib.PDU {
	var out []gomatrixserverlib.PDU
	for _, ev := range rr.state {
		out = append(out, ev)
	}
	return out
}

// inputReq builds an InputEventsRequest.
func inputReq(kind roomserverv1.InputKind, evs ...gomatrixserverlib.PDU) *roomserverv1.InputEventsRequest {
	req := &roomserverv1.InputEventsRequest{}
	for _, ev := range evs {
		req.Events = append(req.Events, &roomserverv1.InputEvent{RoomVersion: string(ev.Version()), EventJson: ev.JSON(), Kind: kind})
	}
	return req
}

func (h *harness) inputReq(req *roomserverv1.InputEventsRequest) []*roomserverv1.InputEventResult {
	h.t.Helper()
	resp, err := h.rs.InputEvents(h.ctx, req)
	if err != nil {
		h.t.Fatalf("InputEvents: %v", err)
	}
	return resp.GetResults()
}

func wantStatuses(t testing.TB, res []*roomserverv1.InputEventResult, want roomserverv1.InputStatus) {
	t.Helper()
	for _, r := range res {
		if r.GetStatus() != want {
			t.Fatalf("%s: status %s (%s), want %s", r.GetEventId(), r.GetStatus(), r.GetReason(), want)
		}
	}
}

// localJoin builds alice's join to a remote room as the joining server
// does after make_join: on the remote's last event, signed by this
// server's key-server.
func (h *harness) localJoin(rr *remoteRoom, user string) gomatrixserverlib.PDU {
	h.t.Helper()
	pe := rr.proto(user, spec.MRoomMember, &user, map[string]any{"membership": "join"})
	ev, err := h.svc.signer.Build(h.ctx, rr.verImpl, pe)
	if err != nil {
		h.t.Fatal(err)
	}
	return ev
}

// joinRemoteRoom joins user to rr the way send_join's answer is input: the
// state and auth chain as outliers (in reverse, to check the room-server
// orders them), then the join with the state before it.
func (h *harness) joinRemoteRoom(rr *remoteRoom, user string) gomatrixserverlib.PDU {
	h.t.Helper()
	join := h.localJoin(rr, user)
	stateIDs := rr.stateIDs()
	outliers := slices.Clone(rr.stateEvents())
	slices.SortFunc(outliers, func(a, b gomatrixserverlib.PDU) int { return int(b.Depth() - a.Depth()) })
	wantStatuses(h.t, h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUTLIER, outliers...)), accepted)
	req := inputReq(roomserverv1.InputKind_INPUT_KIND_NEW, join)
	req.Events[0].HasState, req.Events[0].StateEventIds = true, stateIDs
	wantStatuses(h.t, h.inputReq(req), accepted)
	rr.apply(join)
	return join
}

func contentOf(t testing.TB, raw []byte) map[string]any {
	t.Helper()
	var ev struct {
		Content map[string]any `json:"content"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	return ev.Content
}
