package clientapi

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/matrix-org/gomatrixserverlib"
)

// redacted returns a published event's redacted PDU JSON.
func redactedPDU(t *testing.T, b built) []byte {
	t.Helper()
	raw, err := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10).RedactEventJSON(b.json)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestConsumerAppliesRedactions: the consumer overwrites its copies
// (sync_events and current_state) with the redacted forms the room-server
// publishes, and stores an event that arrives already redacted with
// unsigned.redacted_because. Checked with SQL on the client-API's tables.
func TestConsumerAppliesRedactions(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	const roomID = "!redact:example.test"
	alice := "@alice:example.test"
	p := newPublisher(t, h, roomID)
	p.send(alice, "m.room.create", ptr(""), map[string]any{"creator": alice, "room_version": "10"})
	p.send(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"})
	msg := p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "secret message",
		"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": "$x"}})
	topic := p.send(alice, "m.room.topic", ptr(""), map[string]any{"topic": "secret topic"})

	for _, target := range []built{msg, topic} {
		red := p.build(alice, "m.room.redaction", nil, map[string]any{"reason": "gone"}, nil)
		red.out.RedactedEventId = target.id
		red.out.RedactedEventJson = redactedPDU(t, target)
		p.publish(red, "")
	}
	// An event published already redacted, with its redaction attached.
	late := p.build(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "secret late"}, nil)
	because := p.build(alice, "m.room.redaction", nil, map[string]any{"reason": "early"}, nil)
	late.out.EventJson = redactedPDU(t, late)
	late.out.RedactedBecause = because.json
	p.publish(late, "")
	// A redelivery of the redacted message does not bring its relation
	// back; the marker after it shows it was consumed.
	p.publish(msg, "again-"+msg.id)
	p.send(alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "marker"})
	h.waitPos(8)

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, h.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, table := range []string{"clientapi.sync_events", "clientapi.current_state"} {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE convert_from(event, 'UTF8') LIKE '%secret%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("%s still holds %d events with redacted content", table, n)
		}
	}
	for _, id := range []string{msg.id, topic.id, late.id} {
		var js string
		if err := conn.QueryRow(ctx, `SELECT convert_from(event, 'UTF8') FROM clientapi.sync_events WHERE event_id = $1`, id).Scan(&js); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(js, `"redacted_because"`) {
			t.Fatalf("stored redacted event lacks redacted_because: %s", js)
		}
	}
	// The redacted event's relation is gone with its content.
	var rels int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM clientapi.event_relations WHERE event_id = $1`, msg.id).Scan(&rels); err != nil {
		t.Fatal(err)
	}
	if rels != 0 {
		t.Fatal("relation of a redacted event kept")
	}
}
