package roomserver

import (
	"encoding/json"
	"github.com/myelin-chat/myelin/services/roomserver/store"
	"google.golang.org/protobuf/proto"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

func redaction(target, reason string) *roomserverv1.EventTemplate {
	return &roomserverv1.EventTemplate{Type: spec.MRoomRedaction, Redacts: target, Content: []byte(`{"reason":"` + reason + `"}`)}
}

// storedJSON reads an event's JSON straight from the room-server's table.
func (h *harness) storedJSON(eventID string) string {
	h.t.Helper()
	var js string
	if err := h.svc.store.Pool().QueryRow(h.ctx, `SELECT event_json FROM events WHERE event_id = $1`, eventID).Scan(&js); err != nil {
		h.t.Fatalf("read %s: %v", eventID, err)
	}
	return js
}

func TestRedactionsPruneStorage(t *testing.T) {
	h := newHarness(t, nil)
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			h.t = t
			roomID := h.createRoom(version, "public", map[string]int{alice: 100}).GetRoomId()
			h.mustSend(roomID, bob, member(t, bob, "join"))
			bobMsg := h.mustSend(roomID, bob, message(t, "bob secret one"))
			aliceMsg := h.mustSend(roomID, alice, message(t, "alice secret"))
			bobMsg2 := h.mustSend(roomID, bob, message(t, "bob secret two"))

			// Bob (power 0, redact needs 50) may not redact alice's event.
			_, err := h.send(roomID, bob, redaction(aliceMsg, "nope"))
			wantCode(t, err, codes.PermissionDenied)
			if !strings.Contains(h.storedJSON(aliceMsg), "alice secret") {
				t.Fatal("refused redaction changed the target")
			}
			// A redaction without a target is malformed.
			_, err = h.send(roomID, bob, &roomserverv1.EventTemplate{Type: spec.MRoomRedaction, Content: []byte(`{}`)})
			wantCode(t, err, codes.InvalidArgument)

			// Bob redacts his own event; alice (power 100) redacts bob's other one.
			red1 := h.mustSend(roomID, bob, redaction(bobMsg, "oops"))
			red2 := h.mustSend(roomID, alice, redaction(bobMsg2, "spam"))

			verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
			for target, red := range map[string]string{bobMsg: red1, bobMsg2: red2} {
				stored := h.storedJSON(target)
				if strings.Contains(stored, "secret") || strings.Contains(stored, "body") {
					t.Fatalf("redacted content still stored: %s", stored)
				}
				// The redacted form keeps the event ID (reference hash).
				pdu, err := verImpl.NewEventFromUntrustedJSON([]byte(stored))
				if err != nil || pdu.EventID() != target {
					t.Fatalf("redacted event does not verify: %v (id %v)", err, pdu)
				}
				// The redaction names its target where the version wants it
				// (from v11 on also top-level, where Dendrite v0.13.8 reads it).
				var redEv struct {
					Redacts string          `json:"redacts"`
					Content map[string]any  `json:"content"`
					Raw     json.RawMessage `json:"-"`
				}
				if err := json.Unmarshal([]byte(h.storedJSON(red)), &redEv); err != nil {
					t.Fatal(err)
				}
				inContent, _ := redEv.Content["redacts"].(string)
				if version != "10" && (inContent != target || redEv.Redacts != target) {
					t.Fatalf("v11+ redaction: content.redacts %q, top-level %q", inContent, redEv.Redacts)
				}
				if version == "10" && (redEv.Redacts != target || inContent != "") {
					t.Fatalf("v10 redaction: top-level %q, content.redacts %q", redEv.Redacts, inContent)
				}
			}
			if !strings.Contains(h.storedJSON(aliceMsg), "alice secret") {
				t.Fatal("unrelated event lost its content")
			}
			// QueryEvents serves the redacted form too.
			if strings.Contains(string(h.event(bobMsg).GetEventJson()), "secret") {
				t.Fatal("QueryEvents serves the original content")
			}

			// Published: the redaction carries its target's redacted form.
			msgs := h.waitPublished(roomID, 5+1+3+2)
			var found bool
			for _, m := range msgs {
				if m.out.GetEventId() == red1 {
					found = true
					if m.out.GetRedactedEventId() != bobMsg || strings.Contains(string(m.out.GetRedactedEventJson()), "secret") ||
						len(m.out.GetRedactedEventJson()) == 0 {
						t.Fatalf("published redaction: %s %s", m.out.GetRedactedEventId(), m.out.GetRedactedEventJson())
					}
				}
			}
			if !found {
				t.Fatal("redaction not published")
			}
		})
	}
}

// A redaction that arrives before its target (as federation may deliver
// them) waits, and the target is stored already redacted.
func TestRedactionBeforeTarget(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	head := h.roomInfo(roomID).GetForwardExtremities()
	target := h.build(roomID, alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "early secret"}, head, head[0])
	red := h.build(roomID, alice, spec.MRoomRedaction, nil, map[string]any{"redacts": target.EventID()}, head, head[0])
	h.inputOne(red, roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED)
	h.inputOne(target, roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED)
	if stored := h.storedJSON(target.EventID()); strings.Contains(stored, "early secret") {
		t.Fatalf("late target stored unredacted: %s", stored)
	}
	msgs := h.waitPublished(roomID, 5+2)
	last := msgs[len(msgs)-1].out
	if last.GetEventId() != target.EventID() || len(last.GetRedactedBecause()) == 0 || strings.Contains(string(last.GetEventJson()), "early secret") {
		t.Fatalf("published late target: %s because=%s", last.GetEventJson(), last.GetRedactedBecause())
	}
}

// TestPublishedRedactionCarriesTheRedactedForm: the publisher builds a
// redaction's message with its target's redacted form read from the
// database, whatever the event cache holds. The cache held the original
// from the target's own commit until the redaction's commit dropped it,
// and the publisher, woken at that commit, could read it first (a redacted
// message then reached clients whole).
func TestPublishedRedactionCarriesTheRedactedForm(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	msg := h.mustSend(roomID, alice, message(t, "secret"))
	rows, err := h.svc.store.Queries.EventsByID(h.ctx, []string{msg})
	if err != nil || len(rows) != 1 {
		t.Fatalf("load %s: %v", msg, err)
	}
	original, err := newEventEntry(rows[0])
	if err != nil {
		t.Fatal(err)
	}
	red := h.mustSend(roomID, alice, redaction(msg, ""))
	rows, err = h.svc.store.Queries.EventsByID(h.ctx, []string{red})
	if err != nil || len(rows) != 1 {
		t.Fatalf("load %s: %v", red, err)
	}
	redNID := rows[0].NID
	// The cache as a publisher racing the redaction's commit found it.
	h.svc.events.Put(original.NID, original)
	msgs, err := h.svc.outputMessages(h.ctx, store.Pending{
		Entries: []store.OutboxEntry{{EventNID: redNID, RoomNID: original.RoomNID}},
		Targets: map[int64]int64{redNID: original.NID},
	})
	if err != nil || len(msgs) != 1 {
		t.Fatalf("outputMessages: %d, %v", len(msgs), err)
	}
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(msgs[0].msg.Data, &out); err != nil {
		t.Fatal(err)
	}
	if out.GetRedactedEventId() != msg || strings.Contains(string(out.GetRedactedEventJson()), "secret") {
		t.Fatalf("redaction message carries target %s: %s", out.GetRedactedEventId(), out.GetRedactedEventJson())
	}
}
