package clientapi

import (
	"net/url"
	"slices"
	"testing"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// TestFederationOutputs publishes the room-server's federation outputs:
// an out-of-room invite with its stripped state (shown under invite in
// /sync) and its rejection, and backfilled history (placed before the
// room's earliest event, never in an incremental /sync).
func TestFederationOutputs(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	aliceTok, _ := h.register("alice", "pw")
	alice := "@alice:" + testServerName

	// An invite into a room of another server.
	remoteRoom := "!far:remote.test"
	rp := newPublisher(t, h, remoteRoom)
	invite := rp.build("@ron:remote.test", "m.room.member", ptr(alice), map[string]any{"membership": "invite"}, nil)
	invite.out.AddedStateEvents = nil
	invite.out.Kind = roomserverv1.OutputKind_OUTPUT_KIND_OUT_OF_ROOM
	invite.out.StrippedState = [][]byte{
		[]byte(`{"type":"m.room.create","state_key":"","sender":"@ron:remote.test","content":{"room_version":"10"}}`),
		[]byte(`{"type":"m.room.name","state_key":"","sender":"@ron:remote.test","content":{"name":"Far away"}}`),
	}
	rp.publish(invite, "")
	h.waitPos(1)
	s := h.do("GET", "/_matrix/client/v3/sync", aliceTok, nil)
	h.expect(s, 200, "")
	inv, _ := s.body["rooms"].(map[string]any)["invite"].(map[string]any)[remoteRoom].(map[string]any)
	if inv == nil {
		t.Fatalf("no invite in /sync: %s", s.raw)
	}
	var types []string
	name := ""
	for _, e := range inv["invite_state"].(map[string]any)["events"].([]any) {
		ev := e.(map[string]any)
		types = append(types, ev["type"].(string))
		if ev["type"] == "m.room.name" {
			name, _ = ev["content"].(map[string]any)["name"].(string)
		}
	}
	slices.Sort(types)
	if !slices.Equal(types, []string{"m.room.create", "m.room.member", "m.room.name"}) || name != "Far away" {
		t.Fatalf("invite_state %v (name %q): %s", types, name, s.raw)
	}
	since := s.body["next_batch"].(string)

	// The rejection (a leave through the remote server) moves the room to
	// leave.
	leave := rp.build(alice, "m.room.member", ptr(alice), map[string]any{"membership": "leave"}, nil)
	leave.out.AddedStateEvents = nil
	leave.out.Kind = roomserverv1.OutputKind_OUTPUT_KIND_OUT_OF_ROOM
	rp.publish(leave, "")
	h.waitPos(2)
	s = h.do("GET", "/_matrix/client/v3/sync?since="+since, aliceTok, nil)
	h.expect(s, 200, "")
	rooms := s.body["rooms"].(map[string]any)
	if _, still := rooms["invite"].(map[string]any)[remoteRoom]; still {
		t.Fatalf("rejected invite still shown: %s", s.raw)
	}
	if _, left := rooms["leave"].(map[string]any)[remoteRoom]; !left {
		t.Fatalf("rejected invite not under leave: %s", s.raw)
	}

	// Backfill: a room alice is in, then two older events published
	// newest first.
	const roomID = "!joined:example.test"
	p := newPublisher(t, h, roomID)
	p.send(alice, "m.room.create", ptr(""), map[string]any{"creator": alice, "room_version": "10"})
	p.send(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"})
	last := p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "now"})
	h.waitPos(5)
	// (Lazy members: the state comes from the client-API's own copy, as
	// this test runs no room-server.)
	s = h.do("GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(`{"room":{"state":{"lazy_load_members":true}}}`), aliceTok, nil)
	h.expect(s, 200, "")
	since = s.body["next_batch"].(string)
	// older comes before old in the room's history; the room-server
	// publishes a backfilled batch newest first.
	older := p.build("@ron:remote.test", "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "older"}, nil)
	old := p.build("@ron:remote.test", "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "old"}, nil)
	for _, b := range []built{old, older} {
		b.out.Kind = roomserverv1.OutputKind_OUTPUT_KIND_BACKFILL
		p.publish(b, "")
	}
	after := p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "later"})
	h.waitPos(6)
	s = h.do("GET", "/_matrix/client/v3/sync?since="+since, aliceTok, nil)
	h.expect(s, 200, "")
	if v := roomView(t, s, "join", roomID); v == nil || !slices.Equal(v.ids, []string{after.id}) {
		t.Fatalf("incremental sync after backfill %s", s.raw)
	}
	msgs := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=10", aliceTok, nil)
	h.expect(msgs, 200, "")
	var ids []string
	for _, e := range msgs.body["chunk"].([]any) {
		ids = append(ids, e.(map[string]any)["event_id"].(string))
	}
	// Newest first: later, now, join, create, then the backfilled events
	// oldest last.
	if len(ids) != 6 || ids[0] != after.id || ids[1] != last.id || ids[4] != old.id || ids[5] != older.id {
		t.Fatalf("messages %v, want backfilled %s, %s at the end", ids, old.id, older.id)
	}
	// Paging back from before the first event reaches them too.
	page := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=4", aliceTok, nil)
	h.expect(page, 200, "")
	more := h.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=4&from="+
		url.QueryEscape(page.body["end"].(string)), aliceTok, nil)
	h.expect(more, 200, "")
	var rest []string
	for _, e := range more.body["chunk"].([]any) {
		rest = append(rest, e.(map[string]any)["event_id"].(string))
	}
	if !slices.Equal(rest, []string{old.id, older.id}) {
		t.Fatalf("second page %v (end %v)", rest, page.body["end"])
	}
}
