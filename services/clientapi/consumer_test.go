package clientapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/testkit"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// publisher builds signed PDUs of one room and publishes them on the real
// room events stream exactly as the room-server does (OutputRoomEvent,
// Nats-Msg-Id = event ID), so the consumer is exercised without a
// room-server.
type publisher struct {
	t      *testing.T
	h      *harness
	roomID string
	key    ed25519.PrivateKey
	prev   []string
	depth  int64
	seq    int64
}

func newPublisher(t *testing.T, h *harness, roomID string) *publisher {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &publisher{t: t, h: h, roomID: roomID, key: key}
}

type built struct {
	id   string
	json []byte
	out  *roomserverv1.OutputRoomEvent
}

// build creates the next event; state events enter the current state.
func (p *publisher) build(sender, typ string, stateKey *string, content any, txn *roomserverv1.TransactionID) built {
	p.t.Helper()
	raw, err := json.Marshal(content)
	if err != nil {
		p.t.Fatal(err)
	}
	p.depth++
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	eb := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: p.roomID, Type: typ, StateKey: stateKey,
		PrevEvents: append([]string{}, p.prev...), AuthEvents: []string{}, Depth: p.depth, Content: raw,
	})
	pdu, err := eb.Build(time.Now(), spec.ServerName(testServerName), "ed25519:test", p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	p.prev = []string{pdu.EventID()}
	p.seq++
	out := &roomserverv1.OutputRoomEvent{
		RoomId: p.roomID, RoomVersion: "10", EventId: pdu.EventID(), EventJson: pdu.JSON(),
		StreamPosition: p.seq, TransactionId: txn,
	}
	if stateKey != nil {
		out.AddedStateEvents = [][]byte{pdu.JSON()}
	}
	return built{id: pdu.EventID(), json: pdu.JSON(), out: out}
}

// publish sends an OutputRoomEvent; msgID defaults to the event ID.
func (p *publisher) publish(b built, msgID string) {
	p.t.Helper()
	data, err := proto.Marshal(b.out)
	if err != nil {
		p.t.Fatal(err)
	}
	if msgID == "" {
		msgID = b.id
	}
	msg := nats.NewMsg(bus.RoomEventsSubject(p.roomID))
	msg.Data = data
	msg.Header.Set(nats.MsgIdHdr, msgID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.h.js.PublishMsg(ctx, msg); err != nil {
		p.t.Fatal(err)
	}
}

func (p *publisher) send(sender, typ string, stateKey *string, content any) built {
	b := p.build(sender, typ, stateKey, content, nil)
	p.publish(b, "")
	return b
}

// waitPos waits until the consumer has stored events up to pos.
func (h *harness) waitPos(pos int64) {
	h.t.Helper()
	testkit.Eventually(h.t, 20*time.Second, func() error {
		got, err := h.svc.store.Reader().MaxPos(context.Background())
		if err != nil {
			return err
		}
		if got < pos {
			return fmt.Errorf("stored up to %d, want %d", got, pos)
		}
		return nil
	})
}

// timelineOf extracts a joined (or left) room's timeline event IDs and
// bodies from a sync response.
type syncRoomView struct {
	ids       []string
	events    []map[string]any
	state     []map[string]any
	limited   bool
	prevBatch string
}

func roomView(t *testing.T, resp response, section, roomID string) *syncRoomView {
	t.Helper()
	rooms, _ := resp.body["rooms"].(map[string]any)
	sec, _ := rooms[section].(map[string]any)
	room, ok := sec[roomID].(map[string]any)
	if !ok {
		return nil
	}
	v := &syncRoomView{}
	tl, _ := room["timeline"].(map[string]any)
	for _, e := range tl["events"].([]any) {
		ev := e.(map[string]any)
		v.ids = append(v.ids, ev["event_id"].(string))
		v.events = append(v.events, ev)
	}
	v.limited, _ = tl["limited"].(bool)
	v.prevBatch, _ = tl["prev_batch"].(string)
	st, _ := room["state"].(map[string]any)
	for _, e := range st["events"].([]any) {
		v.state = append(v.state, e.(map[string]any))
	}
	return v
}

func ptr(s string) *string { return &s }

func TestConsumerAndIncrementalSync(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	const roomID = "!lobby:example.test"
	alice, bob := "@alice:example.test", "@bob:example.test"
	reg := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "alice", "password": "pw", "device_id": "ADEV", "auth": map[string]any{"type": "m.login.dummy"}})
	h.expect(reg, 200, "")
	aliceTok := reg.body["access_token"].(string)
	bobTok, _ := h.register("bob", "pw")

	p := newPublisher(t, h, roomID)
	create := p.send(alice, "m.room.create", ptr(""), map[string]any{"creator": alice, "room_version": "10"}) // pos 1
	p.send(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"})                          // pos 2
	p.send(alice, "m.room.power_levels", ptr(""), map[string]any{"users": map[string]any{alice: 100}})
	msg1 := p.build(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "one"},
		&roomserverv1.TransactionID{DeviceId: "ADEV", TxnId: "txn1"})
	p.publish(msg1, "") // pos 4
	h.waitPos(4)
	// The notifier hears of a batch just after it commits.
	testkit.Eventually(t, 10*time.Second, func() error {
		if m := h.svc.notifier.Members(roomID); !slices.Equal(m, []string{alice}) {
			return fmt.Errorf("notifier members %v", m)
		}
		return nil
	})

	// Incremental sync from just after alice's join: the two later events,
	// with transaction_id for alice's device only.
	s := h.do("GET", "/_matrix/client/v3/sync?since=s2", aliceTok, nil)
	h.expect(s, 200, "")
	if s.body["next_batch"] != "s4" {
		t.Fatalf("next_batch %v", s.body["next_batch"])
	}
	v := roomView(t, s, "join", roomID)
	if v == nil || len(v.ids) != 2 || v.ids[1] != msg1.id || v.limited {
		t.Fatalf("timeline %+v (%s)", v, s.raw)
	}
	if _, hasRoomID := v.events[1]["room_id"]; hasRoomID {
		t.Fatal("sync timeline events carry room_id")
	}
	if txn := v.events[1]["unsigned"].(map[string]any)["transaction_id"]; txn != "txn1" {
		t.Fatalf("transaction_id %v", txn)
	}
	// The same event through /messages of another device of alice has no transaction_id.
	login := h.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "pw"})
	otherTok := login.body["access_token"].(string)
	msgs := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=1", otherTok, nil)
	h.expect(msgs, 200, "")
	chunk := msgs.body["chunk"].([]any)
	first := chunk[0].(map[string]any)
	unsigned, _ := first["unsigned"].(map[string]any)
	if _, hasTxn := unsigned["transaction_id"]; first["event_id"] != msg1.id || hasTxn || unsigned["membership"] != "join" || first["room_id"] != roomID {
		t.Fatalf("messages chunk %s", msgs.raw)
	}

	// Nothing new: the long poll times out with the same position.
	empty := h.do("GET", "/_matrix/client/v3/sync?since=s4&timeout=50", aliceTok, nil)
	h.expect(empty, 200, "")
	if empty.body["next_batch"] != "s4" || len(empty.body["rooms"].(map[string]any)["join"].(map[string]any)) != 0 {
		t.Fatalf("empty sync %s", empty.raw)
	}

	// A long poll is woken by the consumer.
	done := make(chan response, 1)
	go func() { done <- h.do("GET", "/_matrix/client/v3/sync?since=s4&timeout=60000", aliceTok, nil) }()
	msg2 := p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "two"}) // pos 5
	var woke response
	select {
	case woke = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("long poll was not woken")
	}
	h.expect(woke, 200, "")
	if v := roomView(t, woke, "join", roomID); v == nil || !slices.Equal(v.ids, []string{msg2.id}) {
		t.Fatalf("woken sync %s", woke.raw)
	}

	// A republished event (new message ID, so JetStream does not drop it)
	// is skipped by the consumer.
	p.publish(msg2, "again-"+msg2.id)
	name := p.send(alice, "m.room.name", ptr(""), map[string]any{"name": "Lobby"}) // pos 6
	var bodies []built
	for i := range 4 {
		bodies = append(bodies, p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": fmt.Sprint("gap ", i)}))
	} // pos 7..10
	h.waitPos(10)
	if got, _ := h.svc.store.Reader().MaxPos(context.Background()); got != 10 {
		t.Fatalf("max pos %d after a duplicate, want 10", got)
	}

	// A limited incremental sync reports the gap's state change.
	lim := h.do("GET", "/_matrix/client/v3/sync?since=s5&filter="+url.QueryEscape(`{"room":{"timeline":{"limit":2}}}`), aliceTok, nil)
	h.expect(lim, 200, "")
	v = roomView(t, lim, "join", roomID)
	if v == nil || !v.limited || !slices.Equal(v.ids, []string{bodies[2].id, bodies[3].id}) || v.prevBatch != "s8" {
		t.Fatalf("limited sync %+v", v)
	}
	if len(v.state) != 1 || v.state[0]["event_id"] != name.id {
		t.Fatalf("gap state %v", v.state)
	}
	// The gap can be filled with /messages from prev_batch back to since.
	gap := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&from="+v.prevBatch+"&to=s5", aliceTok, nil)
	h.expect(gap, 200, "")
	var gapIDs []string
	for _, e := range gap.body["chunk"].([]any) {
		gapIDs = append(gapIDs, e.(map[string]any)["event_id"].(string))
	}
	if !slices.Equal(gapIDs, []string{bodies[1].id, bodies[0].id, name.id}) || gap.body["end"] != nil {
		t.Fatalf("gap messages %v end=%v", gapIDs, gap.body["end"])
	}

	// Paginating backwards in pages of 3 visits every event once.
	var all []string
	from := ""
	for range 10 {
		q := "dir=b&limit=3"
		if from != "" {
			q += "&from=" + from
		}
		r := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q, aliceTok, nil)
		h.expect(r, 200, "")
		for _, e := range r.body["chunk"].([]any) {
			all = append(all, e.(map[string]any)["event_id"].(string))
		}
		end, _ := r.body["end"].(string)
		if end == "" {
			break
		}
		from = end
	}
	if len(all) != 10 || all[0] != bodies[3].id || all[9] != create.id {
		t.Fatalf("backward pagination visited %d events: %v", len(all), all)
	}
	fwd := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=f&limit=2", aliceTok, nil)
	fchunk := fwd.body["chunk"].([]any)
	if len(fchunk) != 2 || fchunk[0].(map[string]any)["type"] != "m.room.create" || fwd.body["end"] != "s2" {
		t.Fatalf("forward pagination %s", fwd.raw)
	}

	// An invite shows up in bob's sync with stripped state.
	p.send(alice, "m.room.member", ptr(bob), map[string]any{"membership": "invite"}) // pos 11
	h.waitPos(11)
	bs := h.do("GET", "/_matrix/client/v3/sync", bobTok, nil)
	h.expect(bs, 200, "")
	inv := bs.body["rooms"].(map[string]any)["invite"].(map[string]any)[roomID].(map[string]any)
	var types []string
	for _, e := range inv["invite_state"].(map[string]any)["events"].([]any) {
		ev := e.(map[string]any)
		types = append(types, ev["type"].(string))
		if _, ok := ev["event_id"]; ok {
			t.Fatalf("stripped state has event_id: %v", ev)
		}
		if ev["type"] == "m.room.member" && (ev["state_key"] != bob || ev["content"].(map[string]any)["membership"] != "invite") {
			t.Fatalf("invite event %v", ev)
		}
	}
	if !slices.Contains(types, "m.room.create") || !slices.Contains(types, "m.room.name") || !slices.Contains(types, "m.room.member") {
		t.Fatalf("invite_state types %v", types)
	}

	// Restart: events published while the client-API is down are stored
	// when it comes back, in order, and syncs continue from their tokens.
	h.stop()
	leave := p.send(alice, "m.room.member", ptr(alice), map[string]any{"membership": "leave"}) // pos 12
	after := p.send(bob, "m.room.message", nil, map[string]any{"body": "after alice left"})    // pos 13
	h.start()
	h.waitPos(13)
	ls := h.do("GET", "/_matrix/client/v3/sync?since=s11", aliceTok, nil)
	h.expect(ls, 200, "")
	lv := roomView(t, ls, "leave", roomID)
	if lv == nil || !slices.Equal(lv.ids, []string{leave.id}) {
		t.Fatalf("leave section %s", ls.raw)
	}
	if roomView(t, ls, "join", roomID) != nil {
		t.Fatal("left room still in join")
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if m := h.svc.notifier.Members(roomID); len(m) != 0 {
			return fmt.Errorf("notifier members after leave %v", m)
		}
		return nil
	})
	// History after the leave is hidden from alice.
	hist := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=1", aliceTok, nil)
	h.expect(hist, 200, "")
	if id := hist.body["chunk"].([]any)[0].(map[string]any)["event_id"]; id != leave.id || id == after.id {
		t.Fatalf("alice sees %v after leaving", id)
	}
	if !strings.HasPrefix(ls.body["next_batch"].(string), "s13") {
		t.Fatalf("next_batch after restart %v", ls.body["next_batch"])
	}
}
