package appservice_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/testkit"
	fedreceiverv1 "github.com/myelin-chat/myelin/proto/fedreceiver/v1"
)

// toDevice sends one to-device message of type m.test with {"n": n} to
// each (user, device) of to, as c, under the transaction ID txnID.
func toDevice(t testing.TB, c *mautrix.Client, txnID string, n int, to map[id.UserID][]id.DeviceID) {
	t.Helper()
	msgs := map[id.UserID]map[id.DeviceID]*event.Content{}
	for u, devices := range to {
		msgs[u] = map[id.DeviceID]*event.Content{}
		for _, d := range devices {
			msgs[u][d] = &event.Content{Raw: map[string]any{"n": n}}
		}
	}
	url := c.BuildClientURL("v3", "sendToDevice", "m.test", txnID)
	if _, err := c.MakeRequest(context.Background(), "PUT", url, &mautrix.ReqSendToDevice{Messages: msgs}, nil); err != nil {
		t.Fatalf("sendToDevice %s: %v", txnID, err)
	}
}

// waitToDevice waits for the receiver to have n to-device messages and
// checks they are exactly want, in order.
func waitToDevice(t testing.TB, r *receiver, want []string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := r.toDeviceOf(); len(got) < len(want) {
			return fmt.Errorf("%d of %d to-device messages delivered: %v", len(got), len(want), got)
		}
		return nil
	})
	if got := r.toDeviceOf(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("to-device messages delivered:\n%s\nwant (once each, in order):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// To-device messages for the devices of an appservice's users (MSC2409)
// reach it in its transactions' de.sorunome.msc2409.to_device, with
// to_user_id and to_device_id: a local client's ("*" as each device, an
// unknown device left out, a retried request once), the appservice's
// sender's, and other servers' (an EDU handed on twice is delivered
// once); nothing for users outside the namespaces or to an appservice
// without receive_ephemeral. An appservice down while messages come, and
// the appservice service restarted meanwhile, gets each once, in order.
// An undecodable message on the stream is dropped.
func TestToDevice(t *testing.T) {
	e := newEnv(t, true,
		asSpec{id: "tdev", namespaces: users(`@watched_.*:as\.test`, false), ephemeral: true},
		asSpec{id: "noeph", namespaces: users(`@watched_.*:as\.test`, false)},
	)
	ctx := context.Background()
	alice, bob := e.user("alice"), e.user("watched_bob")
	// bob's second device.
	bob2, err := mautrix.NewClient(e.main.URL(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	login, err := bob2.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "watched_bob"}, Password: "secret password watched_bob",
		DeviceID: "ZZZZZZZZZZZZ"})
	if err != nil {
		t.Fatal(err)
	}
	who, err := bob.Whoami(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b1, b2 := who.DeviceID, login.DeviceID
	if b1 >= b2 {
		t.Fatalf("device IDs %s, %s: the test wants the first to sort first", b1, b2)
	}
	// The appservice's sender with a device of its own (PUT /devices with
	// the as_token).
	sender, err := mautrix.NewClient(e.main.URL(), "@_tdev_bot:as.test", "as-tdev")
	if err != nil {
		t.Fatal(err)
	}
	if err := sender.CreateDeviceMSC4190(ctx, "BOTDEV", "bot"); err != nil {
		t.Fatalf("create the sender's device: %v", err)
	}
	r := e.recv["tdev"]
	line := func(u id.UserID, d id.DeviceID, sender id.UserID, n int) string {
		return fmt.Sprintf("%s/%s/%s/m.test/{\"n\":%d}", u, d, sender, n)
	}
	a := alice.UserID

	toDevice(t, alice, "t1", 1, map[id.UserID][]id.DeviceID{bob.UserID: {b1}, a: {alice.DeviceID}})
	toDevice(t, alice, "t1", 1, map[id.UserID][]id.DeviceID{bob.UserID: {b1}}) // a retry
	toDevice(t, alice, "t2", 2, map[id.UserID][]id.DeviceID{bob.UserID: {"*"}})
	toDevice(t, alice, "t3", 3, map[id.UserID][]id.DeviceID{bob.UserID: {"NOSUCHDEVICE"}})
	toDevice(t, alice, "t4", 4, map[id.UserID][]id.DeviceID{"@_tdev_bot:as.test": {"*"}})
	want := []string{line(bob.UserID, b1, a, 1), line(bob.UserID, b1, a, 2), line(bob.UserID, b2, a, 2),
		line("@_tdev_bot:as.test", "BOTDEV", a, 4)}
	waitToDevice(t, r, want)

	// Down, and the appservice service restarted meanwhile.
	r.setMode(modeDown)
	for n := 5; n < 10; n++ {
		toDevice(t, alice, fmt.Sprint("t", n), n, map[id.UserID][]id.DeviceID{bob.UserID: {b2}})
		want = append(want, line(bob.UserID, b2, a, n))
	}
	r.mu.Lock()
	before := r.attempts
	r.mu.Unlock()
	testkit.Eventually(t, 20*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.attempts < before+2 {
			return fmt.Errorf("%d attempts while down", r.attempts-before)
		}
		return nil
	})
	e.as.Stop()
	toDevice(t, alice, "t10", 10, map[id.UserID][]id.DeviceID{bob.UserID: {b1}})
	want = append(want, line(bob.UserID, b1, a, 10))
	e.startAppservice(e.asGRPC)
	r.setMode(modeOK)
	waitToDevice(t, r, want)

	// From another server: the federation-receiver hands an EDU's messages
	// for bob on MYELIN_TO_DEVICE_IN; handed on twice (past JetStream's
	// duplicate check), bob's devices get it once. Before it, garbage on
	// the appservices' stream is dropped.
	_, js, err := bus.Connect(ctx, e.cfg.NATS.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, bus.AppserviceToDeviceSubject(string(bob.UserID)), []byte("\xffnot a protobuf")); err != nil {
		t.Fatal(err)
	}
	edu, _ := proto.Marshal(&fedreceiverv1.InboundToDevice{Origin: "remote.test", Sender: "@eve:remote.test", Type: "m.test",
		MessageId: "edu1", UserId: string(bob.UserID), Messages: map[string][]byte{"*": []byte(`{"n":11}`)}})
	for i := 0; i < 2; i++ {
		if _, err := js.Publish(ctx, bus.ToDeviceInSubject(string(bob.UserID)), edu, jetstream.WithMsgID(fmt.Sprint("test-", i))); err != nil {
			t.Fatal(err)
		}
	}
	want = append(want, line(bob.UserID, b1, "@eve:remote.test", 11), line(bob.UserID, b2, "@eve:remote.test", 11))
	waitToDevice(t, r, want)
	toDevice(t, alice, "t12", 12, map[id.UserID][]id.DeviceID{bob.UserID: {b1}})
	want = append(want, line(bob.UserID, b1, a, 12))
	waitToDevice(t, r, want)

	// bob's own /sync has them as before (the appservices get a copy).
	bob.DeviceID = b1
	resp, err := bob.SyncRequest(ctx, 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, ev := range resp.ToDevice.Events {
		raw, _ := json.Marshal(ev.Content.Raw)
		ns = append(ns, string(raw))
	}
	// (The remote message is published for the appservices before it is
	// stored for /sync, so its place among alice's may differ.)
	sort.Strings(ns)
	if fmt.Sprint(ns) != `[{"n":10} {"n":11} {"n":12} {"n":1} {"n":2}]` {
		t.Errorf("bob's first device syncs %v", ns)
	}
	// The appservice without receive_ephemeral got none: they would have
	// been queued with tdev's, before this room event.
	room := e.room(alice, nil)
	join(t, bob, room)
	waitEvents(t, e.recv["noeph"], room, send(t, alice, room, 1, "last"))
	if got := e.recv["noeph"].toDeviceOf(); len(got) != 0 {
		t.Errorf("an appservice without receive_ephemeral got to-device messages: %v", got)
	}
}
