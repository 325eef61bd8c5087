package fedreceiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
)

// syncTimeline runs /sync for cli until check accepts the timeline events
// of a room seen so far (senders and bodies, in order).
func syncUntil(t *testing.T, cli *mautrix.Client, roomID string, check func(events []string) error) {
	t.Helper()
	var seen []string
	since := ""
	testkit.Eventually(t, 20*time.Second, func() error {
		resp, err := cli.SyncRequest(context.Background(), 1000, since, "", false, "")
		if err != nil {
			return err
		}
		since = resp.NextBatch
		if room, ok := resp.Rooms.Join[id.RoomID(roomID)]; ok {
			for _, ev := range room.Timeline.Events {
				body, _ := ev.Content.Raw["body"].(string)
				seen = append(seen, ev.Sender.String()+"|"+ev.Type.Type+"|"+body)
			}
		}
		return check(seen)
	})
}

func contains(want string) func([]string) error {
	return func(events []string) error {
		if !slices.Contains(events, want) {
			return fmt.Errorf("%q not seen in %v", want, events)
		}
		return nil
	}
}

// TestJoinAndSend: a remote user joins a local room through make_join and
// send_join (v1 and v2) in every room version family (1-2, 3-10, 11, 12),
// the resident server signs the join, and a message the remote then sends
// in a transaction reaches the local member's /sync through mautrix-go.
func TestJoinAndSend(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	for _, c := range []struct {
		version string
		v1      bool
	}{{"1", true}, {"2", false}, {"3", true}, {"10", false}, {"11", true}, {"11", false}, {"12", false}, {"12", true}} {
		t.Run(fmt.Sprintf("v%s/send_join_v1=%t", c.version, c.v1), func(t *testing.T) {
			roomID := e.createRoom(alice, c.version, "public_chat")
			bob := e.remote.User("bob")
			rr := e.remote.Join(roomID, bob, c.v1)
			join := rr.Last
			var sigs struct {
				Signatures map[string]map[string]string `json:"signatures"`
			}
			_ = json.Unmarshal(join.JSON(), &sigs)
			if sigs.Signatures[hsName] == nil || sigs.Signatures[string(e.remote.Name)] == nil {
				t.Fatalf("the join should carry both servers' signatures: %v", sigs.Signatures)
			}
			e.waitAccepted(join.EventID())
			if m := e.membership(roomID, bob); m != spec.Join {
				t.Fatalf("bob's membership %q", m)
			}
			msg := rr.Message(bob, "hello from remote v"+c.version)
			status, res := e.remote.Send(raws(msg))
			if status != 200 {
				t.Fatalf("send: %d", status)
			}
			if r, ok := res[msg.EventID()]; !ok || r.Error != "" {
				t.Fatalf("result for the message: %+v (%v)", r, res)
			}
			e.waitAccepted(msg.EventID())
			syncUntil(t, alice, roomID, contains(bob+"|m.room.message|hello from remote v"+c.version))
		})
	}
}

// joinedRoom is a local room (alice's) that bob of remote.test joined.
func (e *env) joinedRoom(alice *mautrix.Client, version string) (string, *fedpeer.Room) {
	e.t.Helper()
	roomID := e.createRoom(alice, version, "public_chat")
	rr := e.remote.Join(roomID, e.remote.User("bob"), false)
	e.waitAccepted(rr.Last.EventID())
	return roomID, rr
}
