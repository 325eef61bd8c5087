package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/testkit"
	fedreceiverv1 "github.com/myelin-chat/myelin/proto/fedreceiver/v1"
)

// TestInboundToDevice: send-to-device messages of another server's user,
// as the federation-receiver publishes them on MYELIN_TO_DEVICE_IN, reach
// the recipient's /sync to_device once, also when the same EDU's message
// is published again (a redelivery, or the EDU received twice) and after
// a restart of the client-API; a message for one device goes to that
// device only, one for "*" to every device.
func TestInboundToDevice(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	tok1, bob := h.register("bob", "secret password")
	login := h.do("POST", "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "secret password"})
	tok2, _ := login.body["access_token"].(string)
	if tok2 == "" {
		t.Fatalf("login: %d %s", login.status, login.raw)
	}
	dev1 := h.do("GET", "/_matrix/client/v3/account/whoami", tok1, nil).body["device_id"].(string)

	publish := func(messageID string, messages map[string]string) {
		t.Helper()
		in := &fedreceiverv1.InboundToDevice{Origin: "remote.test", Sender: "@alice:remote.test", Type: "m.room_key_request",
			MessageId: messageID, UserId: bob, Messages: map[string][]byte{}}
		for dev, body := range messages {
			in.Messages[dev] = []byte(`{"body":"` + body + `"}`)
		}
		data, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		// No Nats-Msg-Id: the stream's deduplication is not what makes
		// the consumer idempotent.
		if _, err := h.js.Publish(context.Background(), bus.ToDeviceInSubject(bob), data); err != nil {
			t.Fatal(err)
		}
	}
	publish("m1", map[string]string{dev1: "to one"})
	publish("m2", map[string]string{"*": "to all"})
	publish("m1", map[string]string{dev1: "to one"})

	// collect syncs device tok until it has seen want messages, then
	// once more, and returns every body seen.
	sinces := map[string]string{}
	collect := func(tok string, want int) []string {
		t.Helper()
		var bodies []string
		testkit.Eventually(t, 30*time.Second, func() error {
			path := "/_matrix/client/v3/sync?timeout=0"
			if since := sinces[tok]; since != "" {
				path += "&since=" + since
			}
			r := h.do("GET", path, tok, nil)
			sinces[tok], _ = r.body["next_batch"].(string)
			var td struct {
				ToDevice struct {
					Events []struct {
						Sender  string `json:"sender"`
						Type    string `json:"type"`
						Content struct {
							Body string `json:"body"`
						} `json:"content"`
					} `json:"events"`
				} `json:"to_device"`
			}
			_ = json.Unmarshal(r.raw, &td)
			for _, ev := range td.ToDevice.Events {
				if ev.Sender != "@alice:remote.test" || ev.Type != "m.room_key_request" {
					t.Fatalf("to-device event %+v", ev)
				}
				bodies = append(bodies, ev.Content.Body)
			}
			if len(bodies) < want {
				return fmt.Errorf("%d of %d messages", len(bodies), want)
			}
			return nil
		})
		return bodies
	}
	if got := collect(tok1, 2); len(got) != 2 || got[0] != "to one" || got[1] != "to all" {
		t.Fatalf("device 1 got %v, want [to one, to all]", got)
	}
	if got := collect(tok2, 1); len(got) != 1 || got[0] != "to all" {
		t.Fatalf("device 2 got %v, want [to all]", got)
	}
	// Every published message was handled: nothing pending for the
	// durable consumer, so the repeat of m1 was stored as nothing.
	testkit.Eventually(t, 30*time.Second, func() error {
		c, err := h.js.Consumer(context.Background(), bus.ToDeviceInStream, h.cfg.ToDeviceInConsumerName)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("pending %d, ack pending %d", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	// A restart consumes nothing again.
	h.stop()
	publish("m1", map[string]string{dev1: "to one"})
	h.start()
	publish("m3", map[string]string{dev1: "after restart"})
	if got := collect(tok1, 1); len(got) != 1 || got[0] != "after restart" {
		t.Fatalf("device 1 after the restart got %v, want [after restart]", got)
	}
}
