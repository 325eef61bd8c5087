//go:build goolm

// Package e2ee runs a real end-to-end encrypted conversation through Myelin
// with mautrix-go's crypto (OlmMachine, on goolm, its pure Go Olm): device
// and one-time keys uploaded, queried and claimed, the Megolm room key
// sent to the other device over Olm-encrypted to-device messages, and an
// m.room.encrypted message decrypted by the recipient. `make test` runs it
// with -tags goolm.
package e2ee

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// oneRoom is the crypto state store of a test with one encrypted room that
// both users share.
type oneRoom struct {
	room  id.RoomID
	users []id.UserID
}

func (s oneRoom) IsEncrypted(_ context.Context, r id.RoomID) (bool, error) { return r == s.room, nil }
func (s oneRoom) GetEncryptionEvent(context.Context, id.RoomID) (*event.EncryptionEventContent, error) {
	return &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}, nil
}
func (s oneRoom) GetHistoryVisibility(context.Context, id.RoomID) (*event.HistoryVisibilityEventContent, error) {
	return &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}, nil
}
func (s oneRoom) FindSharedRooms(context.Context, id.UserID) ([]id.RoomID, error) {
	return []id.RoomID{s.room}, nil
}

type peer struct {
	cli   *mautrix.Client
	mach  *crypto.OlmMachine
	since string
}

func register(t *testing.T, url, name string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "pw-" + name})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// start loads the device's Olm account and uploads its keys.
func (p *peer) start(t *testing.T, store oneRoom) {
	t.Helper()
	ctx := context.Background()
	log := zerolog.Nop()
	p.mach = crypto.NewOlmMachine(p.cli, &log, crypto.NewMemoryStore(nil), store)
	if err := p.mach.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.mach.ShareKeys(ctx, 0); err != nil {
		t.Fatalf("%s shares keys: %v", p.cli.UserID, err)
	}
}

// sync runs one /sync and hands it to the crypto machine; it returns the
// response.
func (p *peer) sync(t *testing.T, timeout int) *mautrix.RespSync {
	t.Helper()
	resp, err := p.cli.SyncRequest(context.Background(), timeout, p.since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	p.mach.ProcessSyncResponse(context.Background(), resp, p.since)
	p.since = resp.NextBatch
	return resp
}

func TestEncryptedConversation(t *testing.T) {
	s := stack.Start(t)
	ctx := context.Background()
	alice := &peer{cli: register(t, s.URL(), "alice")}
	bob := &peer{cli: register(t, s.URL(), "bob")}
	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.cli.UserID},
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	store := oneRoom{room: room.RoomID, users: []id.UserID{alice.cli.UserID, bob.cli.UserID}}
	alice.start(t, store)
	bob.start(t, store)
	alice.sync(t, 0)
	bob.sync(t, 0)

	// Alice shares a Megolm session with both users' devices (keys query,
	// one-time key claim, Olm-encrypted to-device) and sends.
	if err := alice.mach.ShareGroupSession(ctx, room.RoomID, store.users); err != nil {
		t.Fatalf("share group session: %v", err)
	}
	const body = "only bob can read this"
	encrypted, err := alice.mach.EncryptMegolmEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := alice.cli.SendMessageEvent(ctx, room.RoomID, event.EventEncrypted, encrypted)
	if err != nil {
		t.Fatal(err)
	}

	// Bob's syncs bring the room key (to-device) and the encrypted event.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp := bob.sync(t, 5000)
		for _, evt := range resp.Rooms.Join[room.RoomID].Timeline.Events {
			if evt.ID != sent.EventID {
				continue
			}
			evt.RoomID = room.RoomID
			if err := evt.Content.ParseRaw(evt.Type); err != nil {
				t.Fatal(err)
			}
			if evt.Type != event.EventEncrypted {
				t.Fatalf("the message arrived as %s, not encrypted", evt.Type.Type)
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
