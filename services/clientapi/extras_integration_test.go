package clientapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/services/clientapi"
)

// TestTimestampToEvent: the event closest to a timestamp in each direction,
// through mautrix-go; nothing past the ends; nothing for a user who may not
// see the room.
func TestTimestampToEvent(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	carol := newUser(t, hs, "carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []id.EventID
	var stamps []int64
	for i := range 8 {
		time.Sleep(5 * time.Millisecond) // distinct milliseconds
		eid := sendText(t, alice, room.RoomID, "message "+string(rune('a'+i)))
		ev, err := alice.GetEvent(ctx, room.RoomID, eid)
		if err != nil {
			t.Fatal(err)
		}
		ids, stamps = append(ids, eid), append(stamps, ev.Timestamp)
	}
	at := func(ms int64, dir mautrix.Direction) (id.EventID, error) {
		resp, err := alice.TimestampToEvent(ctx, room.RoomID, time.UnixMilli(ms), dir)
		if err != nil {
			return "", err
		}
		return resp.EventID, nil
	}
	for i := range ids {
		for _, c := range []struct {
			ms  int64
			dir mautrix.Direction
		}{{stamps[i], mautrix.DirectionBackward}, {stamps[i], mautrix.DirectionForward}} {
			got, err := at(c.ms, c.dir)
			if err != nil || got != ids[i] {
				t.Errorf("message %d at its own ts, dir %c: %s, %v", i, c.dir, got, err)
			}
		}
		if i > 0 {
			// Between two messages: backward finds the earlier, forward the later.
			mid := (stamps[i-1] + stamps[i]) / 2
			if mid != stamps[i-1] && mid != stamps[i] {
				if got, err := at(mid, mautrix.DirectionBackward); err != nil || got != ids[i-1] {
					t.Errorf("between %d and %d, backward: %s, %v", i-1, i, got, err)
				}
				if got, err := at(mid, mautrix.DirectionForward); err != nil || got != ids[i] {
					t.Errorf("between %d and %d, forward: %s, %v", i-1, i, got, err)
				}
			}
		}
	}
	_, err = at(stamps[len(stamps)-1]+60_000, mautrix.DirectionForward)
	wantMatrixError(t, "forward past the last event", err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = alice.TimestampToEvent(ctx, room.RoomID, time.UnixMilli(1000), mautrix.DirectionBackward)
	wantMatrixError(t, "backward before the room", err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = carol.TimestampToEvent(ctx, room.RoomID, time.UnixMilli(stamps[3]), mautrix.DirectionBackward)
	wantMatrixError(t, "a user outside the private room", err, http.StatusNotFound, "M_NOT_FOUND")
}

// TestMutualRoomsAndTurn: /v1/mutual_rooms lists exactly the rooms both
// users are joined to; /voip/turnServer answers {} unconfigured and
// coturn-style shared-secret credentials when configured.
func TestMutualRoomsAndTurn(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Turn = clientapi.TurnConfig{URIs: []string{"turn:turn.example.test:3478?transport=udp"}, SharedSecret: "coturn-secret", UserLifetime: time.Hour}
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	var shared []id.RoomID
	for i := range 3 {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatal(err)
			}
			shared = append(shared, room.RoomID)
		}
	}
	got, err := bob.GetMutualRooms(ctx, alice.UserID)
	if err != nil || len(got.Joined) != 2 || got.Count != 2 {
		t.Fatalf("mutual rooms: %+v, %v", got, err)
	}
	for _, r := range shared {
		if !strings.Contains(strings.Join([]string{got.Joined[0].String(), got.Joined[1].String()}, " "), r.String()) {
			t.Errorf("mutual rooms %v miss %s", got.Joined, r)
		}
	}
	if got, err := carol.GetMutualRooms(ctx, alice.UserID); err != nil || len(got.Joined) != 0 {
		t.Errorf("carol's mutual rooms with alice: %+v, %v", got, err)
	}
	_, err = bob.GetMutualRooms(ctx, bob.UserID)
	wantMatrixError(t, "mutual rooms with oneself", err, http.StatusBadRequest, "M_INVALID_PARAM")

	turn, err := alice.TurnServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expiry, user, ok := strings.Cut(turn.Username, ":")
	if !ok || user != alice.UserID.String() || turn.TTL != 3600 || len(turn.URIs) != 1 {
		t.Fatalf("turn credentials: %+v", turn)
	}
	if exp, err := strconv.ParseInt(expiry, 10, 64); err != nil || time.Unix(exp, 0).Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("turn username expiry %q is not an hour ahead", expiry)
	}
	mac := hmac.New(sha1.New, []byte("coturn-secret"))
	mac.Write([]byte(turn.Username))
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); turn.Password != want {
		t.Errorf("turn password %q, want the HMAC %q", turn.Password, want)
	}
}

// Without a TURN server configured the endpoint answers {}.
func TestTurnUnconfigured(t *testing.T) {
	hs := startStack(t)
	alice := newUser(t, hs, "alice")
	var raw map[string]any
	if _, err := alice.MakeRequest(context.Background(), http.MethodGet, alice.BuildClientURL("v3", "voip", "turnServer"), nil, &raw); err != nil || len(raw) != 0 {
		t.Errorf("unconfigured turnServer: %v, %v", raw, err)
	}
}

// TestRoomSummary: a public room's summary for anyone, unauthenticated
// too, with the requester's membership when known; a private room's only
// for its members; an alias resolves; an unknown room is not found.
func TestRoomSummary(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	public, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Lobby", Topic: "All welcome", RoomAliasName: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	private, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Den"})
	if err != nil {
		t.Fatal(err)
	}
	summary := func(cli *mautrix.Client, room string) (map[string]any, error) {
		var out map[string]any
		_, err := cli.MakeRequest(ctx, http.MethodGet, cli.BuildClientURL("v1", "room_summary", room), nil, &out)
		return out, err
	}
	got, err := summary(alice, public.RoomID.String())
	if err != nil || got["name"] != "Lobby" || got["topic"] != "All welcome" || got["join_rule"] != "public" ||
		got["num_joined_members"] != float64(1) || got["membership"] != "join" || got["room_version"] == nil {
		t.Fatalf("alice's summary of the lobby: %v, %v", got, err)
	}
	anon, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := summary(anon, "#lobby:"+serverName); err != nil || got["room_id"] != public.RoomID.String() || got["membership"] != nil {
		t.Errorf("unauthenticated summary by alias: %v, %v", got, err)
	}
	if got, err := summary(bob, public.RoomID.String()); err != nil || got["membership"] != nil {
		t.Errorf("bob's summary (not a member): %v, %v", got, err)
	}
	_, err = summary(bob, private.RoomID.String())
	wantMatrixError(t, "bob's summary of a private room", err, http.StatusNotFound, "M_NOT_FOUND")
	_, err = summary(anon, private.RoomID.String())
	wantMatrixError(t, "unauthenticated summary of a private room", err, http.StatusNotFound, "M_NOT_FOUND")
	if got, err := summary(alice, private.RoomID.String()); err != nil || got["name"] != "Den" {
		t.Errorf("alice's summary of her private room: %v, %v", got, err)
	}
	_, err = summary(alice, "!nowhere:"+serverName)
	wantMatrixError(t, "summary of an unknown room", err, http.StatusNotFound, "M_NOT_FOUND")
}
