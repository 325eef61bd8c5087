package roomserver

// Tests for the send path's shortcuts (see bench/analysis.md): locally
// built events skip re-parsing and signature checks in the pipeline, newly
// stored events enter the event cache on commit, and the write transaction
// pipelines its statements.

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/signing"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// TestLocalEventsVerify: every event the room-server builds (create,
// initial state, messages, state, memberships, redactions) parses as
// untrusted JSON with its event ID as reference hash and verifies against
// the key-server's published keys, which is what the pipeline no longer
// re-checks for local events.
func TestLocalEventsVerify(t *testing.T) {
	h := newHarness(t, nil)
	keys := signing.NewVerifier(h.sks, time.Minute)
	for _, version := range []string{"1", "4", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			created := h.createRoom(version, "public", map[string]int{alice: 100})
			roomID := created.GetRoomId()
			ids := append([]string{}, created.GetEventIds()...)
			ids = append(ids, h.mustSend(roomID, bob, member(t, bob, "join")))
			msg := h.mustSend(roomID, bob, message(t, "hello"))
			ids = append(ids, msg,
				h.mustSend(roomID, alice, stateTmpl(t, spec.MRoomTopic, "", map[string]any{"topic": "t"})),
				h.mustSend(roomID, alice, redaction(msg, "spam")),
				h.mustSend(roomID, alice, message(t, strings.Repeat("x", 1000))))
			verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
			for _, id := range ids {
				// The stored JSON (redacted for msg) and the event as built.
				for _, raw := range [][]byte{[]byte(h.storedJSON(id)), h.event(id).GetEventJson()} {
					if canon, err := gomatrixserverlib.CanonicalJSON(raw); err != nil || string(canon) != string(raw) {
						t.Fatalf("%s is not canonical JSON: %s", id, raw)
					}
					pdu, err := verImpl.NewEventFromUntrustedJSON(raw)
					if err != nil {
						t.Fatalf("%s does not parse as untrusted: %v", id, err)
					}
					// Only the redacted message fails its content hash.
					if pdu.EventID() != id || pdu.Redacted() != (id == msg) {
						t.Fatalf("%s: reference hash gives %s (redacted by a bad hash: %v)", id, pdu.EventID(), pdu.Redacted())
					}
					if err := gomatrixserverlib.VerifyEventSignatures(h.ctx, pdu, keys, userIDForSender); err != nil {
						t.Fatalf("%s does not verify: %v", id, err)
					}
				}
			}
		})
	}
}

// TestLocalSigningAcrossRotation: the room-server signs events with the
// key the key-server hands out. After a rotation it keeps signing with
// the old key until it asks again (what it signs then verifies: the old
// key is still valid), and once it asks again it signs with the new one;
// both verify against the key-server's published keys, and the rooms go
// on as one graph.
func TestLocalSigningAcrossRotation(t *testing.T) {
	h := newHarness(t, nil)
	keys := signing.NewVerifier(h.sks, time.Minute)
	created := h.createRoom("10", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	keyIDOf := func(id string) string {
		t.Helper()
		var ev struct {
			Signatures map[string]map[string]string `json:"signatures"`
		}
		if err := json.Unmarshal(h.event(id).GetEventJson(), &ev); err != nil {
			t.Fatal(err)
		}
		sigs := ev.Signatures[testServer]
		if len(sigs) != 1 {
			t.Fatalf("%s has signatures %v, want one of %s", id, ev.Signatures, testServer)
		}
		for k := range sigs {
			return k
		}
		return ""
	}
	verify := func(id string) {
		t.Helper()
		verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
		pdu, err := verImpl.NewEventFromUntrustedJSON(h.event(id).GetEventJson())
		if err != nil {
			t.Fatal(err)
		}
		if err := gomatrixserverlib.VerifyEventSignatures(h.ctx, pdu, keys, userIDForSender); err != nil {
			t.Fatalf("%s does not verify: %v", id, err)
		}
	}
	before := h.mustSend(roomID, alice, message(t, "before"))
	oldKey := keyIDOf(before)
	rot, err := h.sks.RotateKey(h.ctx, &keyserverv1.RotateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rot.GetOldKeyId() != oldKey || rot.GetKeyId() == oldKey {
		t.Fatalf("rotation %v, want %s replaced", rot, oldKey)
	}
	held := h.mustSend(roomID, alice, message(t, "held key"))
	if got := keyIDOf(held); got != oldKey {
		t.Fatalf("before asking again the room-server signed with %s, want the held %s", got, oldKey)
	}
	h.svc.signer.Key.Forget() // what valid_until_ts passing does
	after := h.mustSend(roomID, alice, message(t, "after"))
	if got := keyIDOf(after); got != rot.GetKeyId() {
		t.Fatalf("after asking again the room-server signed with %s, want the new %s", got, rot.GetKeyId())
	}
	for _, id := range []string{before, held, after} {
		verify(id)
	}
	if prev := h.event(after).GetEventJson(); !strings.Contains(string(prev), held) {
		t.Fatalf("the event after the rotation does not follow the one before it: %s", prev)
	}
}

// TestEventCacheAcrossWrites: a sent event is cached on commit, and the
// cache never serves it after a redaction replaced it; a refused event
// never enters the graph or the cache.
func TestEventCacheAcrossWrites(t *testing.T) {
	h := newHarness(t, nil)
	created := h.createRoom("11", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	h.mustSend(roomID, bob, member(t, bob, "join"))
	msg := h.mustSend(roomID, bob, message(t, "secret words"))
	nid := h.countRows(`SELECT event_nid FROM events WHERE event_id = $1`, msg)
	if _, ok := h.svc.events.Get(nid); !ok {
		t.Fatalf("a sent event is not cached after its commit")
	}
	if !strings.Contains(string(h.event(msg).GetEventJson()), "secret words") {
		t.Fatalf("event before redaction: %s", h.event(msg).GetEventJson())
	}

	// The redaction replaces the stored JSON; every read after it gets the
	// redacted form, from QueryEvents, state queries and the publisher.
	red := h.mustSend(roomID, alice, redaction(msg, "spam"))
	if got := string(h.event(msg).GetEventJson()); strings.Contains(got, "secret words") {
		t.Fatalf("QueryEvents serves the event as before its redaction: %s", got)
	}
	if e, ok := h.svc.events.Get(nid); ok && strings.Contains(string(e.pdu.JSON()), "secret words") {
		t.Fatalf("the cache still holds the unredacted event")
	}
	msgs := h.waitPublished(roomID, len(created.GetEventIds())+3)
	last := msgs[len(msgs)-1].out
	if last.GetEventId() != red || last.GetRedactedEventId() != msg || strings.Contains(string(last.GetRedactedEventJson()), "secret") {
		t.Fatalf("published redaction %s carries target %s: %s", last.GetEventId(), last.GetRedactedEventId(), last.GetRedactedEventJson())
	}

	// A refused event (bob may not change the name: state_default 50) is
	// neither stored nor cached, and the next event builds on the real
	// extremity.
	before := h.roomInfo(roomID).GetForwardExtremities()
	_, err := h.send(roomID, bob, stateTmpl(t, spec.MRoomName, "", map[string]any{"name": "bob's"}))
	wantCode(t, err, codes.PermissionDenied)
	if after := h.roomInfo(roomID).GetForwardExtremities(); strings.Join(after, ",") != strings.Join(before, ",") || len(before) != 1 || before[0] != red {
		t.Fatalf("extremities %v -> %v after a refused event", before, after)
	}
	next := h.mustSend(roomID, alice, message(t, "after"))
	var ev struct {
		PrevEvents []string `json:"prev_events"`
	}
	if err := json.Unmarshal(h.event(next).GetEventJson(), &ev); err != nil {
		t.Fatal(err)
	}
	if len(ev.PrevEvents) != 1 || ev.PrevEvents[0] != red {
		t.Fatalf("next event builds on %v, want [%s]", ev.PrevEvents, red)
	}
	if n := h.countRows(`SELECT count(*) FROM events WHERE event_type = 'm.room.name' AND sender = $1`, bob); n != 0 {
		t.Fatalf("refused event stored (%d rows)", n)
	}
}

// TestPipelinedTx: queued writes are read back by later reads in the same
// transaction, and a queued write that fails makes Commit fail with
// nothing committed.
func TestPipelinedTx(t *testing.T) {
	h := newHarness(t, nil)
	ctx := h.ctx
	st := h.svc.store
	roomID := "!pipeline:" + testServer

	tx, err := st.BeginRoom(ctx, roomID, &store.TxnKey{Sender: alice, DeviceID: "D", TxnID: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Room(ctx, roomID); err != store.ErrNotFound || tx.TxnEventID != "" {
		t.Fatalf("new room: %v, txn %q", err, tx.TxnEventID)
	}
	// BeginRoom reserved one event NID, handed out once.
	if nid, ok := tx.ReservedNID(); !ok || nid <= 0 {
		t.Fatalf("reserved NID %d, %v", nid, ok)
	}
	if _, ok := tx.ReservedNID(); ok {
		t.Fatal("the reserved NID was handed out twice")
	}
	nid, err := tx.InsertRoom(ctx, roomID, "11", false)
	if err != nil {
		t.Fatal(err)
	}
	tx.QueueUpdateRoom(nid, 0, []int64{42}, 7)
	// A read through the transaction flushes the queue first.
	if got, err := tx.Queries.Room(ctx, roomID); err != nil || got.Depth != 7 {
		t.Fatalf("read after queued update: %+v, %v", got, err)
	}
	tx.QueueTransaction(nid, alice, "D", "t", "$e")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = st.BeginRoom(ctx, roomID, &store.TxnKey{Sender: alice, DeviceID: "D", TxnID: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if room, err := tx.Room(ctx, roomID); err != nil || room.Depth != 7 || tx.TxnEventID != "$e" {
		t.Fatalf("committed room %+v (%v), txn %q", room, err, tx.TxnEventID)
	}
	// The same transaction ID again violates the primary key: the commit
	// fails and the depth update queued before it is not committed.
	tx.QueueUpdateRoom(nid, 0, []int64{42}, 8)
	tx.QueueTransaction(nid, alice, "D", "t", "$other")
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("commit with a failing queued write succeeded")
	}
	tx.Rollback(ctx)
	if n := h.countRows(`SELECT depth FROM rooms WHERE room_id = $1`, roomID); n != 7 {
		t.Fatalf("depth %d after a failed commit", n)
	}
	// The connection went back to the pool in a usable state.
	for range 20 {
		tx, err := st.BeginRoom(context.Background(), roomID, nil)
		if err != nil {
			t.Fatal(err)
		}
		tx.Rollback(ctx)
	}
}
