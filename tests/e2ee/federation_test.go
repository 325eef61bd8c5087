//go:build goolm

package e2ee

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// federatingStacks starts one Myelin (all services, in process) per
// server name, federating over HTTPS on loopback with a test CA.
func federatingStacks(t *testing.T, names ...string) map[string]*stack.Stack {
	t.Helper()
	ca := testkit.NewCA(t)
	addrs := map[string]string{}
	for _, n := range names {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[n] = l.Addr().String()
		l.Close()
	}
	out := map[string]*stack.Stack{}
	for _, n := range names {
		cfg := stack.TestConfig(t)
		cfg.ServerName = n
		cfg.ClientAPI.RateLimit.Enabled = false
		cfg.Federation.Enabled = true
		cfg.Federation.Listen = addrs[n]
		cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = ca.Issue(t, n)
		cfg.Federation.TrustedCAFiles = []string{ca.CertFile}
		cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
		cfg.Federation.ServerNameMap = addrs
		cfg.FederationSender.BackoffMin = 200 * time.Millisecond
		out[n] = stack.StartWithConfig(t, cfg)
	}
	return out
}

// TestEncryptedConversationAcrossServers: alice of a.test invites bob of
// b.test to an encrypted room (createRoom's invite list); bob joins over
// federation; alice's device
// queries bob's device keys and claims a one-time key through b.test
// (/keys/query, /keys/claim over federation), sends the Megolm room key
// to bob's device as an Olm-encrypted to-device message (which travels as
// an m.direct_to_device EDU and reaches bob's /sync through b.test's
// inbound to-device consumer), and bob decrypts her message. Before that,
// bob's key upload reaches alice's /sync as device_lists.changed (an
// m.device_list_update EDU into a.test's key-server's change log).
func TestEncryptedConversationAcrossServers(t *testing.T) {
	stacks := federatingStacks(t, "a.test", "b.test")
	ctx := context.Background()
	alice := &peer{cli: register(t, stacks["a.test"].URL(), "alice")}
	bob := &peer{cli: register(t, stacks["b.test"].URL(), "bob")}
	// bob is invited by createRoom's invite list: his invite goes to
	// b.test once the room exists.
	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.cli.UserID},
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	var membership event.MemberEventContent
	if err := alice.cli.StateEvent(ctx, room.RoomID, event.StateMember, bob.cli.UserID.String(), &membership); err != nil ||
		membership.Membership != event.MembershipInvite {
		t.Fatalf("bob's membership after createRoom: %v %v", membership.Membership, err)
	}
	if _, err := bob.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatalf("bob joins over federation: %v", err)
	}
	store := oneRoom{room: room.RoomID, users: []id.UserID{alice.cli.UserID, bob.cli.UserID}}
	alice.start(t, store)
	alice.sync(t, 0)
	// bob's device uploads its keys: b.test sends an m.device_list_update
	// to a.test (which shares the room), whose /sync names bob in
	// alice's device_lists.changed.
	bob.start(t, store)
	bob.sync(t, 0)
	deadline := time.Now().Add(60 * time.Second)
	for sawChange := false; !sawChange; {
		if time.Now().After(deadline) {
			t.Fatal("bob's device change never reached alice's device_lists.changed")
		}
		resp := alice.sync(t, 1000)
		sawChange = slices.Contains(resp.DeviceLists.Changed, bob.cli.UserID)
	}

	if err := alice.mach.ShareGroupSession(ctx, room.RoomID, store.users); err != nil {
		t.Fatalf("share group session: %v", err)
	}
	const body = "only bob, on another server, can read this"
	encrypted, err := alice.mach.EncryptMegolmEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := alice.cli.SendMessageEvent(ctx, room.RoomID, event.EventEncrypted, encrypted)
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp := bob.sync(t, 5000)
		jr := resp.Rooms.Join[room.RoomID]
		if jr == nil {
			continue
		}
		for _, evt := range jr.Timeline.Events {
			if evt.ID != sent.EventID {
				continue
			}
			evt.RoomID = room.RoomID
			if err := evt.Content.ParseRaw(evt.Type); err != nil {
				t.Fatal(err)
			}
			dec, err := bob.mach.DecryptMegolmEvent(ctx, evt)
			if err != nil {
				t.Fatalf("bob decrypts: %v", err)
			}
			if got := dec.Content.AsMessage().Body; got != body {
				t.Fatalf("decrypted %q, want %q", got, body)
			}
			return
		}
	}
	t.Fatal("bob never received the encrypted message")
}
