package roomserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

const (
	accepted   = roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED
	rejected   = roomserverv1.InputStatus_INPUT_STATUS_REJECTED
	softFailed = roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED
	missing    = roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS
	invalidSt  = roomserverv1.InputStatus_INPUT_STATUS_INVALID
	duplicate  = roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE
)

func plContent(version string, users map[string]int) map[string]any {
	if version == "12" {
		delete(users, alice)
	}
	return map[string]any{"users": users, "state_default": 50, "events_default": 0, "invite": 50, "ban": 50, "kick": 50, "redact": 50}
}

func sortedIDs(ids ...string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// TestForkedGraph builds forks directly (explicit prev_events), feeds them
// through InputEvents and checks state resolution, soft failure, rejection
// and the other input outcomes.
func TestForkedGraph(t *testing.T) {
	h := newHarness(t, nil)
	for _, version := range []string{"11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			h.t = t
			created := h.createRoom(version, "public", map[string]int{alice: 100, bob: 50})
			roomID := created.GetRoomId()
			h.mustSend(roomID, bob, member(t, bob, "join"))
			x := h.mustSend(roomID, alice, stateTmpl(t, spec.MRoomTopic, "", map[string]any{"topic": "base"}))

			// Fork at x. Branch A: alice names the room, then demotes bob.
			// Branch B: bob (power 50) changes the topic.
			a0 := h.build(roomID, alice, spec.MRoomName, ptr(""), map[string]any{"name": "fork name"}, []string{x}, x)
			h.inputOne(a0, accepted)
			b1 := h.build(roomID, bob, spec.MRoomTopic, ptr(""), map[string]any{"topic": "from bob"}, []string{x}, x)
			h.inputOne(b1, accepted)
			// Unconflicted changes of both branches are in the current state.
			if got := h.stateContent(roomID, "", false, spec.MRoomName, "", "name"); got != "fork name" {
				t.Fatalf("current name %q", got)
			}
			if got := h.stateContent(roomID, "", false, spec.MRoomTopic, "", "topic"); got != "from bob" {
				t.Fatalf("current topic %q", got)
			}
			a1 := h.build(roomID, alice, spec.MRoomPowerLevels, ptr(""), plContent(version, map[string]int{alice: 100, bob: 0}), []string{a0.EventID()}, a0.EventID())
			h.inputOne(a1, accepted)

			ext := h.roomInfo(roomID).GetForwardExtremities()
			if !slices.Equal(sortedIDs(ext...), sortedIDs(a1.EventID(), b1.EventID())) {
				t.Fatalf("extremities %v, want both branches", ext)
			}
			// Each branch's own state.
			if got := h.stateContent(roomID, b1.EventID(), true, spec.MRoomTopic, "", "topic"); got != "from bob" {
				t.Fatalf("topic after b1: %q", got)
			}
			if got := h.stateContent(roomID, b1.EventID(), false, spec.MRoomTopic, "", "topic"); got != "base" {
				t.Fatalf("topic before b1: %q", got)
			}
			if got := h.stateContent(roomID, a1.EventID(), true, spec.MRoomTopic, "", "topic"); got != "base" {
				t.Fatalf("topic after a1: %q", got)
			}
			if got := h.stateContent(roomID, a1.EventID(), false, spec.MRoomPowerLevels, "", "users"); got != mustUsers(t, version, 50) {
				t.Fatalf("power levels before a1: %s", got)
			}
			// Current state = resolution across both extremities: alice's
			// power change wins, and bob's topic falls because under it bob
			// may no longer set state.
			if got := h.stateContent(roomID, "", false, spec.MRoomPowerLevels, "", "users"); got != mustUsers(t, version, 0) {
				t.Fatalf("current power levels: %s", got)
			}
			if got := h.stateContent(roomID, "", false, spec.MRoomTopic, "", "topic"); got != "base" {
				t.Fatalf("current topic %q, want base (bob's topic resolved away)", got)
			}

			// Merge both branches.
			merge := h.build(roomID, alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "merge"},
				[]string{b1.EventID(), a1.EventID()}, a1.EventID())
			h.inputOne(merge, accepted)
			if got := h.stateContent(roomID, merge.EventID(), false, spec.MRoomTopic, "", "topic"); got != "base" {
				t.Fatalf("topic before merge: %q", got)
			}
			if got := h.stateContent(roomID, merge.EventID(), false, spec.MRoomName, "", "name"); got != "fork name" {
				t.Fatalf("name before merge: %q", got)
			}
			if got := h.stateContent(roomID, merge.EventID(), false, spec.MRoomPowerLevels, "", "users"); got != mustUsers(t, version, 0) {
				t.Fatalf("power levels before merge: %s", got)
			}
			if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, []string{merge.EventID()}) {
				t.Fatalf("extremities after merge %v", ext)
			}
			_, err := h.send(roomID, bob, stateTmpl(t, spec.MRoomTopic, "", map[string]any{"topic": "bob again"}))
			wantCode(t, err, codes.PermissionDenied)

			// Ban on one branch, message on the other: the message was fine
			// where it was sent but not against the current state.
			y := merge.EventID()
			ban := h.build(roomID, alice, spec.MRoomMember, ptr(bob), map[string]any{"membership": "ban"}, []string{y}, y)
			h.inputOne(ban, accepted)
			late := h.build(roomID, bob, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "sneaky"}, []string{y}, y)
			h.inputOne(late, softFailed)
			if ev := h.event(late.EventID()); ev == nil || !ev.GetSoftFailed() || ev.GetRejected() {
				t.Fatalf("soft-failed event stored as %+v", ev)
			}
			if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, []string{ban.EventID()}) {
				t.Fatalf("soft-failed event became an extremity: %v", ext)
			}
			if got := h.stateContent(roomID, late.EventID(), false, spec.MRoomMember, bob, "membership"); got != "join" {
				t.Fatalf("bob before the soft-failed event: %q", got)
			}

			// Rejected: carol never joined (fails its own auth events).
			carolMsg := h.build(roomID, carol, "m.room.message", nil, map[string]any{"body": "x"}, []string{ban.EventID()}, ban.EventID())
			h.inputOne(carolMsg, rejected)
			// Rejected: bob's auth events say joined, the state before it says banned.
			bobMsg := h.build(roomID, bob, "m.room.message", nil, map[string]any{"body": "x"}, []string{ban.EventID()}, y)
			res := h.inputOne(bobMsg, rejected)
			if res.GetReason() == "" {
				t.Fatal("rejection has no reason")
			}
			for _, id := range []string{carolMsg.EventID(), bobMsg.EventID()} {
				if ev := h.event(id); ev == nil || !ev.GetRejected() {
					t.Fatalf("rejected event %s stored as %+v", id, ev)
				}
			}
			if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, []string{ban.EventID()}) {
				t.Fatalf("rejected event became an extremity: %v", ext)
			}

			// Missing prev event: not stored.
			orphan := h.build(roomID, alice, "m.room.message", nil, map[string]any{"body": "?"}, []string{"$doesnotexist"}, ban.EventID())
			res = h.inputOne(orphan, missing)
			if !slices.Equal(res.GetMissingEventIds(), []string{"$doesnotexist"}) {
				t.Fatalf("missing %v", res.GetMissingEventIds())
			}
			if h.event(orphan.EventID()) != nil {
				t.Fatal("event with missing prev events was stored")
			}
			h.inputOne(ban, duplicate)

			// Outlier first, then the same event as a timeline event.
			out := h.build(roomID, alice, spec.MRoomTopic, ptr(""), map[string]any{"topic": "outlier"}, []string{ban.EventID()}, ban.EventID())
			if r := h.input(roomserverv1.InputKind_INPUT_KIND_OUTLIER, out)[0]; r.GetStatus() != accepted {
				t.Fatalf("outlier: %s %s", r.GetStatus(), r.GetReason())
			}
			_, err = h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: out.EventID()})
			wantCode(t, err, codes.FailedPrecondition)
			if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, []string{ban.EventID()}) {
				t.Fatalf("outlier became an extremity: %v", ext)
			}
			h.inputOne(out, accepted)
			if got := h.stateContent(roomID, "", false, spec.MRoomTopic, "", "topic"); got != "outlier" {
				t.Fatalf("topic after de-outliering: %q", got)
			}

			// Only accepted timeline events were published, in input order.
			want := slices.Clone(created.GetEventIds())
			msgs := h.waitPublished(roomID, len(want)+2+6)
			var ids []string
			for _, m := range msgs {
				ids = append(ids, m.out.GetEventId())
			}
			tail := ids[len(ids)-6:]
			if !slices.Equal(tail, []string{a0.EventID(), b1.EventID(), a1.EventID(), merge.EventID(), ban.EventID(), out.EventID()}) {
				t.Fatalf("published tail %v", tail)
			}
			// A1's commit changed the current state: the resolved state
			// dropped b1's topic and brought back the base topic.
			var a1Out *roomserverv1.OutputRoomEvent
			for _, m := range msgs {
				if m.out.GetEventId() == a1.EventID() {
					a1Out = m.out
				}
			}
			if !slices.Contains(a1Out.GetRemovedStateEventIds(), b1.EventID()) || len(a1Out.GetAddedStateEvents()) != 2 {
				t.Fatalf("a1 output: added %d removed %v", len(a1Out.GetAddedStateEvents()), a1Out.GetRemovedStateEventIds())
			}
		})
	}
}

func mustUsers(t *testing.T, version string, bobLevel int) string {
	users := map[string]int{alice: 100, bob: bobLevel}
	if version == "12" {
		delete(users, alice)
	}
	return string(mustJSON(t, users))
}

// TestInvalidInput: unparseable events, bad signatures and events signed by
// servers whose keys are unknown are INVALID and not stored.
func TestInvalidInput(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	ext := h.roomInfo(roomID).GetForwardExtremities()
	good := h.build(roomID, alice, "m.room.message", nil, map[string]any{"body": "ok"}, ext, ext[0])

	// Forged signature.
	var obj map[string]any
	if err := json.Unmarshal(good.JSON(), &obj); err != nil {
		t.Fatal(err)
	}
	sigs := obj["signatures"].(map[string]any)[testServer].(map[string]any)
	for k := range sigs {
		sigs[k] = base64.RawStdEncoding.EncodeToString(make([]byte, 64))
	}
	forged, _ := gomatrixserverlib.CanonicalJSON(mustJSON(t, obj))

	// Signed by another server (its keys are unknown to us).
	verImpl := gomatrixserverlib.MustGetRoomVersion("11")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	eb := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: "@eve:elsewhere.test", RoomID: roomID, Type: "m.room.message", PrevEvents: ext, AuthEvents: []string{},
		Depth: 10, Content: []byte(`{"body":"remote"}`),
	})
	remote, err := eb.Build(time.Now(), "elsewhere.test", "ed25519:x", priv)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		version string
		json    []byte
	}{
		{"garbage", "11", []byte(`{not json`)},
		{"not an event", "11", []byte(`{"type":"m.room.message"}`)},
		{"unknown room version", "99", good.JSON()},
		{"unstable room version", "org.matrix.msc4014", good.JSON()},
		{"forged signature", "11", forged},
		{"remote server", "11", remote.JSON()},
		{"room id garbage", "12", []byte(`{"room_id":"!","type":"m.room.message","sender":"@a:b","content":{},"prev_events":[],"auth_events":[],"depth":1,"origin_server_ts":1,"hashes":{"sha256":"x"},"signatures":{}}`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := h.rs.InputEvents(h.ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{
				{RoomVersion: c.version, EventJson: c.json, Kind: roomserverv1.InputKind_INPUT_KIND_NEW},
			}})
			if err != nil {
				t.Fatal(err)
			}
			if st := resp.GetResults()[0].GetStatus(); st != invalidSt {
				t.Fatalf("status %s (%s), want INVALID", st, resp.GetResults()[0].GetReason())
			}
		})
	}
	if h.event(good.EventID()) != nil || h.event(remote.EventID()) != nil {
		t.Fatal("invalid events were stored")
	}
	h.inputOne(good, accepted)
}

// TestSnapshotsDoNotCopyState: state snapshots grow with state changes,
// not with events times state size.
func TestSnapshotsDoNotCopyState(t *testing.T) {
	const baseInterval = 16
	h := newHarness(t, func(c *Config) { c.SnapshotBaseInterval = baseInterval; c.StateCacheSize = 4 })
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	for i := range 30 {
		user := "@user" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ":" + testServer
		h.mustSend(roomID, user, member(t, user, "join"))
	}
	snapshotStats := func() (rows, entries int64) {
		t.Helper()
		err := h.svc.store.Pool().QueryRow(h.ctx, `SELECT count(*), COALESCE(sum(cardinality(state_key_nids)), 0)
			FROM state_snapshots s JOIN rooms r USING (room_nid) WHERE r.room_id = $1`, roomID).Scan(&rows, &entries)
		if err != nil {
			t.Fatal(err)
		}
		return rows, entries
	}
	stateSize := int64(5 + 30) // create, alice, PL, join rules, history + 30 members
	rows0, entries0 := snapshotStats()

	for i := range 200 {
		h.mustSend(roomID, alice, message(t, "m"+string(rune('0'+i%10))))
	}
	rows1, entries1 := snapshotStats()
	if rows1 != rows0 || entries1 != entries0 {
		t.Fatalf("200 messages added snapshot rows/entries: %d/%d -> %d/%d", rows0, entries0, rows1, entries1)
	}

	var last string
	for i := range 50 {
		last = "topic " + string(rune('A'+i%26)) + string(rune('A'+i/26))
		h.mustSend(roomID, alice, stateTmpl(t, spec.MRoomTopic, "", map[string]any{"topic": last}))
	}
	rows2, entries2 := snapshotStats()
	if rows2-rows1 != 50 {
		t.Fatalf("50 state changes added %d snapshot rows, want 50", rows2-rows1)
	}
	// Deltas are one entry each; at most one full base per baseInterval
	// state changes.
	maxEntries := int64(50) + (50/baseInterval+1)*(stateSize+1)
	if entries2-entries1 > maxEntries {
		t.Fatalf("50 state changes added %d snapshot entries, want <= %d", entries2-entries1, maxEntries)
	}
	totalEvents := int64(5 + 30 + 200 + 50)
	if entries2 >= totalEvents*stateSize/10 {
		t.Fatalf("%d snapshot entries for %d events with ~%d state each: state is being copied", entries2, totalEvents, stateSize)
	}
	var maxChain int64
	if err := h.svc.store.Pool().QueryRow(h.ctx, `SELECT max(chain_len) FROM state_snapshots`).Scan(&maxChain); err != nil {
		t.Fatal(err)
	}
	if maxChain > baseInterval {
		t.Fatalf("a snapshot has %d deltas, more than the base interval %d", maxChain, baseInterval)
	}

	// Reading back through cold caches gives the right state.
	h.restart(true)
	if got := h.stateContent(roomID, "", false, spec.MRoomTopic, "", "topic"); got != last {
		t.Fatalf("topic %q, want %q", got, last)
	}
	st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(st.GetState())) != stateSize+1 {
		t.Fatalf("current state has %d events, want %d", len(st.GetState()), stateSize+1)
	}
	batch, err := h.rs.QueryStateBatch(h.ctx, &roomserverv1.QueryStateBatchRequest{
		EventIds: h.roomInfo(roomID).GetForwardExtremities(),
		Filter:   []*roomserverv1.StateKeyTuple{{Type: spec.MRoomTopic}, {Type: spec.MRoomMember, StateKey: alice}},
	})
	if err != nil || len(batch.GetStates()) != 1 || len(batch.GetStates()[0].GetState()) != 2 {
		t.Fatalf("state batch: %v %+v", err, batch)
	}
}

// TestRestartAndRepublish: events committed while no publisher ran are
// published by the next Run; a restart keeps everything and publishes
// nothing twice.
func TestRestartAndRepublish(t *testing.T) {
	h := newHarness(t, nil)
	h.restart(false) // no publisher: commits pile up in the outbox
	created := h.createRoom("11", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	want := slices.Clone(created.GetEventIds())
	for range 3 {
		want = append(want, h.mustSend(roomID, alice, message(t, "while unpublished")))
	}
	if n := h.countRows(`SELECT published_up_to FROM publish_watermark`); n != 0 {
		t.Fatalf("watermark moved without a publisher: %d", n)
	}

	h.restart(true)
	h.waitPublished(roomID, len(want))
	want = append(want, h.mustSend(roomID, alice, message(t, "after restart")))
	h.waitPublished(roomID, len(want))

	h.restart(true)
	want = append(want, h.mustSend(roomID, alice, message(t, "after second restart")))
	msgs := h.waitPublished(roomID, len(want))
	var got []string
	for _, m := range msgs {
		got = append(got, m.out.GetEventId())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("published %v\nwant %v", got, want)
	}
	// The graph survived the restarts.
	if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, want[len(want)-1:]) {
		t.Fatalf("extremities %v", ext)
	}
	if got := h.membership(roomID, alice); got != "join" {
		t.Fatalf("alice is %q", got)
	}
	// Waiting a little longer publishes nothing more.
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
	defer cancel()
	if err := (&publisher{s: h.svc}).publishPending(ctx); err != nil {
		t.Fatal(err)
	}
	if again, err := h.readRoom(roomID); err != nil || len(again) != len(want) {
		t.Fatalf("after another publish round: %d messages (%v), want %d", len(again), err, len(want))
	}
}

// TestAuthEventsSelection: auth_events must be exactly the events the auth
// rules select (no extras, no duplicates), and events may not reference
// another room's events.
func TestAuthEventsSelection(t *testing.T) {
	h := newHarness(t, nil)
	created := h.createRoom("11", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	other := h.createRoom("11", "public", map[string]int{alice: 100})
	ext := h.roomInfo(roomID).GetForwardExtremities()
	good := h.build(roomID, alice, "m.room.message", nil, map[string]any{"body": "x"}, ext, ext[0])
	verImpl := gomatrixserverlib.MustGetRoomVersion("11")
	rebuild := func(prevs, auth []string) gomatrixserverlib.PDU {
		t.Helper()
		ev, err := h.svc.signer.Build(h.ctx, verImpl, &gomatrixserverlib.ProtoEvent{
			SenderID: alice, RoomID: roomID, Type: "m.room.message", PrevEvents: prevs, AuthEvents: auth,
			Depth: good.Depth(), Content: []byte(`{"body":"y"}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	history := created.GetEventIds()[4] // m.room.history_visibility: not an auth event of a message
	extra := rebuild(ext, append(slices.Clone(good.AuthEventIDs()), history))
	h.inputOne(extra, rejected)
	foreignAuth := rebuild(ext, append(slices.Clone(good.AuthEventIDs()), other.GetEventIds()[0]))
	h.inputOne(foreignAuth, invalidSt)
	foreignPrev := rebuild([]string{other.GetEventIds()[4]}, good.AuthEventIDs())
	h.inputOne(foreignPrev, invalidSt)
	h.inputOne(good, accepted)
}
