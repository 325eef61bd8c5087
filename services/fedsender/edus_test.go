package fedsender_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/rpc"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
)

// EDUs of each kind arrive with the right content and only where they
// should: typing and receipts at the servers in the room, presence and
// device list and cross-signing updates at the servers sharing a room with
// the user, send-to-device messages at the recipients' server (once, for
// a retried request), private receipts and remote users' EDUs nowhere.
func TestEDUs(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test", "r3.test"}})
	ctx := context.Background()
	alice, bob := e.user("alice"), e.user("bob")
	r1, r2, r3 := e.remotes["r1.test"], e.remotes["r2.test"], e.remotes["r3.test"]
	shared := e.room(alice)
	if _, err := bob.JoinRoomByID(ctx, shared); err != nil {
		t.Fatal(err)
	}
	e.remoteJoin(r1, shared, "rita")
	e.remoteJoin(r2, shared, "rob")
	other := e.room(alice)
	e.remoteJoin(r3, other, "rhea")
	last := send(t, alice, shared, 1, "hello")[0]

	// Typing: the servers in the room, on and off.
	if _, err := alice.UserTyping(ctx, shared, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*remote{r1, r2} {
		eventually(t, func() error { return hasTyping(r, shared, alice.UserID, true) })
	}
	if _, err := alice.UserTyping(ctx, shared, false, 0); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*remote{r1, r2} {
		eventually(t, func() error { return hasTyping(r, shared, alice.UserID, false) })
	}

	// A remote user's typing (as the federation receiver would set it)
	// is not sent on.
	conn, err := rpc.Dial(e.main.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ps := presencev1.NewPresenceServiceClient(conn)
	if _, err := ps.SetTyping(ctx, &presencev1.SetTypingRequest{Origin: r1.name, RoomId: shared.String(), UserId: r1.user("rita"), Typing: true, TimeoutMs: 30000}); err != nil {
		t.Fatal(err)
	}

	// Receipts: public ones at the servers in the room; private ones not.
	if err := alice.SendReceipt(ctx, shared, id.EventID(last), event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, shared, id.EventID(last), event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*remote{r1, r2} {
		eventually(t, func() error {
			for _, edu := range r.receivedEDUs("m.receipt") {
				var c map[string]map[string]map[string]struct {
					EventIDs []string `json:"event_ids"`
					Data     struct {
						TS int64 `json:"ts"`
					} `json:"data"`
				}
				if json.Unmarshal(edu.content, &c) == nil {
					if rc, ok := c[shared.String()]["m.read"][alice.UserID.String()]; ok && len(rc.EventIDs) == 1 && rc.EventIDs[0] == last && rc.Data.TS > 0 {
						return nil
					}
				}
			}
			return fmt.Errorf("%s: no read receipt of alice", r.name)
		})
	}

	// Presence: alice shares rooms with all three, bob with r1 and r2.
	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "alice here"}); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "bob away"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*remote{r1, r2, r3} {
		eventually(t, func() error { return hasPresence(r, alice.UserID, "online", "alice here") })
	}
	for _, r := range []*remote{r1, r2} {
		eventually(t, func() error { return hasPresence(r, bob.UserID, "unavailable", "bob away") })
	}

	// Device list updates: alice's device keys at all three, bob's at r1
	// and r2.
	uploadDeviceKeys(t, alice)
	uploadDeviceKeys(t, bob)
	for _, r := range []*remote{r1, r2, r3} {
		eventually(t, func() error { return hasDeviceUpdate(r, alice) })
	}
	for _, r := range []*remote{r1, r2} {
		eventually(t, func() error { return hasDeviceUpdate(r, bob) })
	}

	// Cross-signing keys: m.signing_key_update.
	master := uploadCrossSigning(t, alice)
	for _, r := range []*remote{r1, r2, r3} {
		eventually(t, func() error {
			for _, edu := range r.receivedEDUs("m.signing_key_update") {
				var c struct {
					UserID    string `json:"user_id"`
					MasterKey struct {
						Keys map[string]string `json:"keys"`
					} `json:"master_key"`
					SelfSigningKey json.RawMessage `json:"self_signing_key"`
				}
				if json.Unmarshal(edu.content, &c) == nil && c.UserID == alice.UserID.String() &&
					c.MasterKey.Keys["ed25519:"+master] == master && len(c.SelfSigningKey) > 0 {
					return nil
				}
			}
			return fmt.Errorf("%s: no signing key update of alice", r.name)
		})
	}

	// Send-to-device: each remote server gets its users' messages, once
	// for a request the client retries with the same transaction ID.
	body := map[string]any{"messages": map[string]any{
		r1.user("rita"):     map[string]any{"RDEV": map[string]any{"secret": "for rita"}},
		r2.user("rob"):      map[string]any{"*": map[string]any{"secret": "for rob"}},
		bob.UserID.String(): map[string]any{bob.DeviceID.String(): map[string]any{"secret": "for bob"}},
	}}
	url := alice.BuildClientURL("v3", "sendToDevice", "m.test.secret", "txn-1")
	for i := 0; i < 2; i++ {
		if _, err := alice.MakeRequest(ctx, "PUT", url, body, nil); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() error { return hasToDevice(r1, alice.UserID, r1.user("rita"), "RDEV", "for rita") })
	eventually(t, func() error { return hasToDevice(r2, alice.UserID, r2.user("rob"), "*", "for rob") })

	// A marker for r3, queued after everything above: once it arrived,
	// r3 had all it was going to get.
	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "the end"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*remote{r1, r2, r3} {
		eventually(t, func() error { return hasPresence(r, alice.UserID, "online", "the end") })
	}
	if n := len(r3.receivedEDUs("m.typing")) + len(r3.receivedEDUs("m.receipt")) + len(r3.receivedEDUs("m.direct_to_device")); n != 0 {
		t.Errorf("r3 is not in the shared room but got %d typing, receipt or to-device EDUs", n)
	}
	if hasPresence(r3, bob.UserID, "unavailable", "bob away") == nil || hasDeviceUpdate(r3, bob) == nil {
		t.Error("r3 shares no room with bob but got his presence or device list")
	}
	for _, r := range []*remote{r1, r2} {
		if n := len(r.receivedEDUs("m.direct_to_device")); n != 1 {
			t.Errorf("%s: %d to-device EDUs, want 1 (a retried request is sent once)", r.name, n)
		}
		for _, edu := range r.receivedEDUs("m.receipt") {
			if string(edu.content) != "" && json.Valid(edu.content) {
				var c map[string]map[string]any
				_ = json.Unmarshal(edu.content, &c)
				if _, private := c[shared.String()]["m.read.private"]; private {
					t.Errorf("%s got a private receipt", r.name)
				}
			}
		}
	}
	if err := hasTyping(r2, shared, id.UserID(r1.user("rita")), true); err == nil {
		t.Error("r2 got r1's user's typing from this server")
	}
	for _, r := range []*remote{r1, r2, r3} {
		if _, _, authFailures := r.stats(); authFailures != 0 {
			t.Errorf("%s: %d requests failed X-Matrix verification", r.name, authFailures)
		}
	}
}

func hasTyping(r *remote, room id.RoomID, user id.UserID, typing bool) error {
	for _, edu := range r.receivedEDUs("m.typing") {
		var c struct {
			RoomID string `json:"room_id"`
			UserID string `json:"user_id"`
			Typing bool   `json:"typing"`
		}
		if json.Unmarshal(edu.content, &c) == nil && c.RoomID == room.String() && c.UserID == user.String() && c.Typing == typing {
			return nil
		}
	}
	return fmt.Errorf("%s: no typing=%v of %s", r.name, typing, user)
}

func hasPresence(r *remote, user id.UserID, presence, status string) error {
	for _, edu := range r.receivedEDUs("m.presence") {
		var c struct {
			Push []struct {
				UserID          string `json:"user_id"`
				Presence        string `json:"presence"`
				StatusMsg       string `json:"status_msg"`
				CurrentlyActive *bool  `json:"currently_active"`
			} `json:"push"`
		}
		if json.Unmarshal(edu.content, &c) != nil {
			continue
		}
		for _, p := range c.Push {
			if p.UserID == user.String() && p.Presence == presence && p.StatusMsg == status && p.CurrentlyActive != nil {
				return nil
			}
		}
	}
	return fmt.Errorf("%s: no presence %s %q of %s", r.name, presence, status, user)
}

func hasDeviceUpdate(r *remote, c *mautrix.Client) error {
	for _, edu := range r.receivedEDUs("m.device_list_update") {
		var u struct {
			UserID   string `json:"user_id"`
			DeviceID string `json:"device_id"`
			StreamID int64  `json:"stream_id"`
			Keys     struct {
				UserID string `json:"user_id"`
			} `json:"keys"`
		}
		if json.Unmarshal(edu.content, &u) == nil && u.UserID == c.UserID.String() && u.DeviceID == c.DeviceID.String() &&
			u.StreamID > 0 && u.Keys.UserID == c.UserID.String() {
			return nil
		}
	}
	return fmt.Errorf("%s: no device list update with keys of %s", r.name, c.UserID)
}

func hasToDevice(r *remote, sender id.UserID, user, device, secret string) error {
	for _, edu := range r.receivedEDUs("m.direct_to_device") {
		var c struct {
			Sender    string                                  `json:"sender"`
			Type      string                                  `json:"type"`
			MessageID string                                  `json:"message_id"`
			Messages  map[string]map[string]map[string]string `json:"messages"`
		}
		if json.Unmarshal(edu.content, &c) != nil || c.Sender != sender.String() || c.Type != "m.test.secret" {
			continue
		}
		if c.MessageID == "" || len([]rune(c.MessageID)) > 32 {
			return fmt.Errorf("%s: message_id %q", r.name, c.MessageID)
		}
		if len(c.Messages) != 1 || c.Messages[user][device]["secret"] != secret {
			return fmt.Errorf("%s: messages %v", r.name, c.Messages)
		}
		return nil
	}
	return fmt.Errorf("%s: no to-device message", r.name)
}

type edKey struct {
	priv ed25519.PrivateKey
	pub  string
}

func newEdKey(t *testing.T) edKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return edKey{priv: priv, pub: base64.RawStdEncoding.EncodeToString(pub)}
}

func (k edKey) sign(t *testing.T, user, keyID string, obj any) json.RawMessage {
	t.Helper()
	raw, _ := json.Marshal(obj)
	signed, err := gomatrixserverlib.SignJSON(user, gomatrixserverlib.KeyID(keyID), k.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// uploadDeviceKeys uploads signed identity keys for the client's device.
func uploadDeviceKeys(t *testing.T, c *mautrix.Client) {
	t.Helper()
	k := newEdKey(t)
	user, dev := c.UserID.String(), c.DeviceID.String()
	keys := k.sign(t, user, "ed25519:"+dev, map[string]any{"user_id": user, "device_id": dev,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"ed25519:" + dev: k.pub, "curve25519:" + dev: newEdKey(t).pub}})
	if _, err := c.MakeRequest(context.Background(), "POST", c.BuildClientURL("v3", "keys", "upload"),
		map[string]any{"device_keys": keys}, nil); err != nil {
		t.Fatalf("keys/upload: %v", err)
	}
}

// uploadCrossSigning uploads a master and a self-signing key and returns
// the master key.
func uploadCrossSigning(t *testing.T, c *mautrix.Client) string {
	t.Helper()
	user := c.UserID.String()
	master, self := newEdKey(t), newEdKey(t)
	body := map[string]any{
		"master_key": map[string]any{"user_id": user, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + master.pub: master.pub}},
		"self_signing_key": master.sign(t, user, "ed25519:"+master.pub, map[string]any{"user_id": user, "usage": []string{"self_signing"},
			"keys": map[string]string{"ed25519:" + self.pub: self.pub}}),
	}
	if _, err := c.MakeRequest(context.Background(), "POST", c.BuildClientURL("v3", "keys", "device_signing", "upload"), body, nil); err != nil {
		t.Fatalf("device_signing/upload: %v", err)
	}
	return master.pub
}
