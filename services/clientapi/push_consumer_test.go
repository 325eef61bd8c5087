package clientapi

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// The consumer evaluates push rules once per event, even when JetStream
// delivers the event again, and a receipt that arrives before its event
// takes effect when the event does.
func TestPushEvaluationRedeliveryAndEarlyReceipt(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	_, alice := h.register("alice", "pw")
	bobTok, bob := h.register("bob", "pw")
	roomID := "!push:" + testServerName
	p := newPublisher(t, h, roomID)
	p.send(alice, "m.room.create", ptr(""), map[string]any{"room_version": "10"})
	p.send(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"})
	p.send(bob, "m.room.member", ptr(bob), map[string]any{"membership": "join"})
	m1 := p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "one"})
	p.publish(m1, "again-"+m1.id) // a redelivery JetStream does not deduplicate
	m2 := p.build(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "two"}, nil)
	mark := p.send(alice, "m.room.topic", ptr(""), map[string]any{"topic": "x"}) // does not notify
	h.waitPos(5)

	counts := func() (int, int) {
		t.Helper()
		// Incremental from bob's join: no room-server needed, and the room
		// is always in the response (it has newer events).
		r := h.do("GET", "/_matrix/client/v3/sync?since=s3_a0", bobTok, nil)
		h.expect(r, 200, "")
		jr := r.body["rooms"].(map[string]any)["join"].(map[string]any)[roomID].(map[string]any)
		u := jr["unread_notifications"].(map[string]any)
		return int(u["notification_count"].(float64)), int(u["highlight_count"].(float64))
	}
	if n, _ := counts(); n != 1 {
		t.Fatalf("after a redelivered message: count %d, want 1", n)
	}

	// bob's receipt for m2 arrives before m2 (the receipt copy is fed by
	// the presence service's stream; here it is written directly).
	if _, err := h.svc.store.PutPushReceipt(context.Background(), store.PushReceipt{
		UserID: bob, RoomID: roomID, Type: "m.read", EventID: m2.id, EPos: 1,
	}); err != nil {
		t.Fatal(err)
	}
	if n, _ := counts(); n != 1 {
		t.Fatalf("receipt for an unknown event: count %d, want 1", n)
	}
	p.publish(m2, "")
	testkit.Eventually(t, 20*time.Second, func() error {
		if n, _ := counts(); n != 0 {
			return fmt.Errorf("count %d after the receipt's event arrived", n)
		}
		return nil
	})
	// An older receipt (lower presence position) does not move it back.
	if changed, err := h.svc.store.PutPushReceipt(context.Background(), store.PushReceipt{
		UserID: bob, RoomID: roomID, Type: "m.read", EventID: mark.id, EPos: 0,
	}); err != nil || changed {
		t.Fatalf("older receipt applied: %v %v", changed, err)
	}
	r := h.do("GET", "/_matrix/client/v3/notifications", bobTok, nil)
	h.expect(r, 200, "")
	if list := r.body["notifications"].([]any); len(list) != 2 {
		t.Fatalf("notifications %s", r.raw)
	}
}
