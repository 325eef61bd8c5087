package fedreceiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/testkit"
	fedreceiverv1 "github.com/myelin-chat/myelin/proto/fedreceiver/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

func edu(t *testing.T, typ string, content any) gomatrixserverlib.EDU {
	t.Helper()
	return gomatrixserverlib.EDU{Type: typ, Content: mustJSON(t, content)}
}

// TestEDUs: typing, receipts and presence of a remote member reach the
// local member's /sync; device list and signing key updates reach the
// key-server; to-device messages for local users are published once on
// MYELIN_TO_DEVICE_IN. EDUs about another server's users are dropped.
func TestEDUs(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	roomID, rr := e.joinedRoom(alice, "11")
	bob := e.remote.User("bob")
	msg := rr.Message(bob, "read me")
	if status, res := e.remote.Send(raws(msg)); status != 200 || res[msg.EventID()].Error != "" {
		t.Fatalf("send: %d %+v", status, res)
	}
	ghost := "@ghost:evil.test"
	status, _ := e.remote.Send(nil,
		edu(t, "m.typing", map[string]any{"room_id": roomID, "user_id": bob, "typing": true}),
		edu(t, "m.typing", map[string]any{"room_id": roomID, "user_id": ghost, "typing": true}),
		edu(t, "m.receipt", map[string]any{roomID: map[string]any{"m.read": map[string]any{
			bob:   map[string]any{"event_ids": []string{msg.EventID()}, "data": map[string]any{"ts": 1234}},
			ghost: map[string]any{"event_ids": []string{msg.EventID()}, "data": map[string]any{"ts": 1234}},
		}}}),
		edu(t, "m.presence", map[string]any{"push": []any{
			map[string]any{"user_id": bob, "presence": "online", "status_msg": "federating", "last_active_ago": 1000, "currently_active": true},
			map[string]any{"user_id": ghost, "presence": "online", "last_active_ago": 0},
		}}),
	)
	if status != 200 {
		t.Fatalf("send EDUs: %d", status)
	}
	var typing, receipt, presence bool
	since := ""
	testkit.Eventually(t, 20*time.Second, func() error {
		resp, err := alice.SyncRequest(context.Background(), 1000, since, "", false, "")
		if err != nil {
			return err
		}
		since = resp.NextBatch
		if room, ok := resp.Rooms.Join[id.RoomID(roomID)]; ok {
			for _, ev := range room.Ephemeral.Events {
				raw, _ := json.Marshal(ev.Content.Raw)
				switch ev.Type {
				case event.EphemeralEventTyping:
					var c struct {
						UserIDs []string `json:"user_ids"`
					}
					_ = json.Unmarshal(raw, &c)
					if slices.Contains(c.UserIDs, ghost) {
						return fmt.Errorf("typing of another server's user shown: %v", c.UserIDs)
					}
					typing = typing || slices.Contains(c.UserIDs, bob)
				case event.EphemeralEventReceipt:
					var c map[string]map[string]map[string]any
					_ = json.Unmarshal(raw, &c)
					if _, ok := c[msg.EventID()]["m.read"][ghost]; ok {
						return fmt.Errorf("receipt of another server's user shown")
					}
					_, ok := c[msg.EventID()]["m.read"][bob]
					receipt = receipt || ok
				}
			}
		}
		for _, ev := range resp.Presence.Events {
			if ev.Sender.String() == ghost {
				return fmt.Errorf("presence of another server's user shown")
			}
			if ev.Sender.String() == bob && ev.Content.Raw["presence"] == "online" && ev.Content.Raw["status_msg"] == "federating" {
				presence = true
			}
		}
		if !typing || !receipt || !presence {
			return fmt.Errorf("typing %t, receipt %t, presence %t", typing, receipt, presence)
		}
		return nil
	})

	// Device lists and cross-signing keys of remote users.
	devKeys := map[string]any{"user_id": bob, "device_id": "BOBDEV", "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"curve25519:BOBDEV": "curvekey", "ed25519:BOBDEV": "edkey"}}
	master := map[string]any{"user_id": bob, "usage": []string{"master"}, "keys": map[string]string{"ed25519:masterkey": "masterkey"}}
	status, _ = e.remote.Send(nil,
		edu(t, "m.device_list_update", map[string]any{"user_id": bob, "device_id": "BOBDEV", "device_display_name": "Bob's phone",
			"stream_id": 5, "keys": devKeys}),
		edu(t, "m.device_list_update", map[string]any{"user_id": ghost, "device_id": "X", "stream_id": 1}),
		edu(t, "m.signing_key_update", map[string]any{"user_id": bob, "master_key": master}),
	)
	if status != 200 {
		t.Fatalf("send key EDUs: %d", status)
	}
	lists, err := e.e2e.QueryRemoteDeviceLists(e.ctx, &keyserverv1.QueryRemoteDeviceListsRequest{UserIds: []string{bob, ghost}})
	if err != nil {
		t.Fatal(err)
	}
	if len(lists.GetLists()) != 1 || lists.GetLists()[0].GetUserId() != bob {
		t.Fatalf("remote device lists: %+v", lists.GetLists())
	}
	l := lists.GetLists()[0]
	if len(l.GetDevices()) != 1 || l.GetDevices()[0].GetDeviceId() != "BOBDEV" || l.GetDevices()[0].GetDisplayName() != "Bob's phone" ||
		!l.GetStale() || l.GetStreamId() != 5 || len(l.GetMasterKey()) == 0 {
		t.Fatalf("bob's list: %+v (the first update of a list not held marks it stale)", l)
	}

	// To-device: published per local recipient, once however often the
	// EDU comes.
	js := testkit.JetStream(t, e.hs.Config.NATS.URL)
	cons, err := js.CreateOrUpdateConsumer(e.ctx, bus.ToDeviceInStream, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	toDevice := edu(t, "m.direct_to_device", map[string]any{"sender": bob, "type": "m.room_key_request", "message_id": "msg-1",
		"messages": map[string]any{
			alice.UserID.String(): map[string]any{"*": map[string]any{"action": "cancellation"}},
			"@carol:evil.test":    map[string]any{"*": map[string]any{"action": "cancellation"}},
		}})
	forged := edu(t, "m.direct_to_device", map[string]any{"sender": ghost, "type": "m.dummy", "message_id": "msg-2",
		"messages": map[string]any{alice.UserID.String(): map[string]any{"*": map[string]any{}}}})
	for range 2 {
		if status, _ := e.remote.Send(nil, toDevice, forged); status != 200 {
			t.Fatalf("send to-device: %d", status)
		}
	}
	batch, err := cons.FetchNoWait(10)
	if err != nil {
		t.Fatal(err)
	}
	var got []*fedreceiverv1.InboundToDevice
	for m := range batch.Messages() {
		var msg fedreceiverv1.InboundToDevice
		if err := proto.Unmarshal(m.Data(), &msg); err != nil {
			t.Fatal(err)
		}
		if m.Subject() != bus.ToDeviceInSubject(alice.UserID.String()) {
			t.Fatalf("subject %s", m.Subject())
		}
		got = append(got, &msg)
	}
	if len(got) != 1 || got[0].GetSender() != bob || got[0].GetUserId() != alice.UserID.String() || got[0].GetMessageId() != "msg-1" ||
		string(got[0].GetMessages()["*"]) != `{"action":"cancellation"}` {
		t.Fatalf("to-device messages on the stream: %+v", got)
	}
}
