package fedsender_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"google.golang.org/grpc/codes"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// The queries of other servers, each with its failure cases.
func TestQueries(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test"}})
	ctx := context.Background()
	r1, r2 := e.remotes["r1.test"], e.remotes["r2.test"]
	fs := e.senderClient()
	rita := r1.user("rita")
	r1.mu.Lock()
	r1.profiles[rita] = map[string]string{"displayname": "Rita", "avatar_url": "mxc://r1.test/abc"}
	r1.devices[rita] = []map[string]any{{"device_id": "DEV1", "keys": map[string]any{"user_id": rita, "device_id": "DEV1"}}}
	r1.mu.Unlock()
	room := r1.newRoom("10", "public")
	r1.mu.Lock()
	r1.aliases["#lobby:r1.test"] = room.roomID
	r1.mu.Unlock()

	t.Run("profile", func(t *testing.T) {
		resp, err := fs.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: rita})
		if err != nil {
			t.Fatal(err)
		}
		var p map[string]string
		if json.Unmarshal(resp.GetProfile(), &p) != nil || p["displayname"] != "Rita" || p["avatar_url"] != "mxc://r1.test/abc" {
			t.Fatalf("profile %s", resp.GetProfile())
		}
		resp, err = fs.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: rita, Field: "displayname"})
		if err != nil || string(resp.GetProfile()) != `{"displayname":"Rita"}` {
			t.Fatalf("displayname: %s %v", resp.GetProfile(), err)
		}
		_, err = fs.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: r1.user("nobody")})
		wantStatus(t, err, codes.NotFound, "M_NOT_FOUND")
		_, err = fs.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: "@alice:" + ourName})
		wantStatus(t, err, codes.InvalidArgument, "")
		_, err = fs.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: rita, Field: "password"})
		wantStatus(t, err, codes.InvalidArgument, "")
		_, err = fs.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: "@someone:unknown.test"})
		wantStatus(t, err, codes.Unavailable, "")
	})

	t.Run("directory", func(t *testing.T) {
		resp, err := fs.QueryDirectory(ctx, &fedsenderv1.QueryDirectoryRequest{RoomAlias: "#lobby:r1.test"})
		if err != nil || resp.GetRoomId() != room.roomID || len(resp.GetServers()) != 1 || resp.GetServers()[0] != r1.name {
			t.Fatalf("directory: %v %v", resp, err)
		}
		_, err = fs.QueryDirectory(ctx, &fedsenderv1.QueryDirectoryRequest{RoomAlias: "#none:r1.test"})
		wantStatus(t, err, codes.NotFound, "M_NOT_FOUND")
		_, err = fs.QueryDirectory(ctx, &fedsenderv1.QueryDirectoryRequest{RoomAlias: "lobby"})
		wantStatus(t, err, codes.InvalidArgument, "")
	})

	t.Run("public rooms", func(t *testing.T) {
		resp, err := fs.QueryPublicRooms(ctx, &fedsenderv1.QueryPublicRoomsRequest{ServerName: r1.name, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		var pr struct {
			Chunk []struct {
				RoomID string `json:"room_id"`
			} `json:"chunk"`
		}
		if json.Unmarshal(resp.GetResponse(), &pr) != nil || len(pr.Chunk) != 1 || pr.Chunk[0].RoomID != room.roomID {
			t.Fatalf("public rooms (GET): %s", resp.GetResponse())
		}
		resp, err = fs.QueryPublicRooms(ctx, &fedsenderv1.QueryPublicRoomsRequest{ServerName: r1.name, Filter: []byte(`{"generic_search_term":"nothing matches this"}`)})
		if err != nil || json.Unmarshal(resp.GetResponse(), &pr) != nil || len(pr.Chunk) != 0 {
			t.Fatalf("public rooms (POST with a filter): %s %v", resp.GetResponse(), err)
		}
		if r1.called("/_matrix/federation/v1/publicRooms") != 2 {
			t.Fatal("not asked by GET and POST")
		}
		_, err = fs.QueryPublicRooms(ctx, &fedsenderv1.QueryPublicRoomsRequest{ServerName: r1.name, Filter: []byte(`"x"`)})
		wantStatus(t, err, codes.InvalidArgument, "")
		r2.down()
		_, err = fs.QueryPublicRooms(ctx, &fedsenderv1.QueryPublicRoomsRequest{ServerName: r2.name})
		wantStatus(t, err, codes.Unavailable, "")
		r2.up()
	})

	t.Run("hierarchy", func(t *testing.T) {
		resp, err := fs.QueryHierarchy(ctx, &fedsenderv1.QueryHierarchyRequest{RoomId: room.roomID, ServerNames: []string{r2.name, r1.name}})
		if err != nil || resp.GetServerName() != r1.name {
			t.Fatalf("hierarchy: %v %v", resp, err)
		}
		var h struct {
			Room struct {
				RoomID string `json:"room_id"`
			} `json:"room"`
		}
		if json.Unmarshal(resp.GetResponse(), &h) != nil || h.Room.RoomID != room.roomID {
			t.Fatalf("hierarchy %s", resp.GetResponse())
		}
		_, err = fs.QueryHierarchy(ctx, &fedsenderv1.QueryHierarchyRequest{RoomId: room.roomID, ServerNames: []string{r2.name}})
		wantStatus(t, err, codes.NotFound, "M_NOT_FOUND")
	})

	t.Run("keys", func(t *testing.T) {
		resp, err := fs.QueryUserDevices(ctx, &fedsenderv1.QueryUserDevicesRequest{UserId: rita})
		if err != nil {
			t.Fatal(err)
		}
		var devs struct {
			UserID  string `json:"user_id"`
			Devices []struct {
				DeviceID string `json:"device_id"`
			} `json:"devices"`
		}
		if json.Unmarshal(resp.GetResponse(), &devs) != nil || devs.UserID != rita || len(devs.Devices) != 1 {
			t.Fatalf("devices %s", resp.GetResponse())
		}
		_, err = fs.QueryUserDevices(ctx, &fedsenderv1.QueryUserDevicesRequest{UserId: r1.user("nobody")})
		wantStatus(t, err, codes.NotFound, "M_NOT_FOUND")

		// Two servers asked at once; one down is a failure, not an error.
		r2.down()
		defer r2.up()
		qk, err := fs.QueryKeys(ctx, &fedsenderv1.QueryKeysRequest{DeviceKeys: []byte(`{"` + rita + `":[],"` + r2.user("rob") + `":["X"]}`), TimeoutMs: 3000})
		if err != nil {
			t.Fatal(err)
		}
		var keys struct {
			DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
		}
		if json.Unmarshal(qk.GetResponse(), &keys) != nil || len(keys.DeviceKeys[rita]) != 1 || len(keys.DeviceKeys) != 1 {
			t.Fatalf("keys query %s %v", qk.GetResponse(), qk.GetFailures())
		}
		if _, ok := qk.GetFailures()[r2.name]; !ok || len(qk.GetFailures()) != 1 {
			t.Fatalf("failures %v", qk.GetFailures())
		}
		ck, err := fs.ClaimKeys(ctx, &fedsenderv1.ClaimKeysRequest{OneTimeKeys: []byte(`{"` + rita + `":{"DEV1":"signed_curve25519"}}`)})
		if err != nil {
			t.Fatal(err)
		}
		var claimed struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		if json.Unmarshal(ck.GetResponse(), &claimed) != nil || len(claimed.OneTimeKeys[rita]["DEV1"]) != 1 || len(ck.GetFailures()) != 0 {
			t.Fatalf("claim %s %v", ck.GetResponse(), ck.GetFailures())
		}
		_, err = fs.QueryKeys(ctx, &fedsenderv1.QueryKeysRequest{DeviceKeys: []byte(`{"@alice:` + ourName + `":[]}`)})
		wantStatus(t, err, codes.InvalidArgument, "")
		_, err = fs.ClaimKeys(ctx, &fedsenderv1.ClaimKeysRequest{OneTimeKeys: []byte(`[]`)})
		wantStatus(t, err, codes.InvalidArgument, "")
		r1.mu.Lock()
		r1.refuse["/_matrix/federation/v1/user/keys/query"] = refusal{http.StatusForbidden, "M_FORBIDDEN"}
		r1.mu.Unlock()
		qk, err = fs.QueryKeys(ctx, &fedsenderv1.QueryKeysRequest{DeviceKeys: []byte(`{"` + rita + `":[]}`)})
		if err != nil || !json.Valid(qk.GetFailures()[r1.name]) {
			t.Fatalf("a refusing server is a failure: %v %v", qk, err)
		}
	})
}

// Backfill asks a server in the room for history before the join and
// hands it to the room-server, fetching the state before the oldest
// event; failures are clear.
func TestBackfill(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test"}})
	ctx := context.Background()
	r1, r2 := e.remotes["r1.test"], e.remotes["r2.test"]
	fs := e.senderClient()
	alice := e.user("alice")
	rr := r1.newRoom("10", "public")
	var history []string
	for i := 0; i < 30; i++ {
		ev := r1.send(rr, rr.creator, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "old"})
		history = append(history, ev.EventID())
	}
	jr, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: rr.roomID, UserId: userIDOf(alice), ServerNames: []string{r1.name}})
	if err != nil {
		t.Fatal(err)
	}
	// The servers in the room are asked by default (r1); limit 20 gets
	// the newest 19 messages before the join.
	resp, err := fs.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: rr.roomID, EventIds: []string{jr.GetEventId()}, Limit: 20})
	if err != nil {
		t.Fatalf("Backfill: %v", err)
	}
	if resp.GetServerName() != r1.name || resp.GetReceived() != 20 || resp.GetNotStored() != 0 {
		t.Fatalf("backfill: %v", resp)
	}
	if r1.called("/_matrix/federation/v1/state/{roomID}") == 0 {
		t.Fatal("the state before the oldest backfilled event was not fetched")
	}
	got, err := e.rs.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: history[len(history)-19:]})
	if err != nil || len(got.GetEvents()) != 19 {
		t.Fatalf("backfilled history in the room-server: %v %d", err, len(got.GetEvents()))
	}
	for _, ev := range got.GetEvents() {
		if ev.GetOutlier() || ev.GetRejected() {
			t.Fatalf("%s stored as outlier or rejected", ev.GetEventId())
		}
	}
	// Further back, through servers given (r2 does not know the room).
	resp, err = fs.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: rr.roomID, EventIds: []string{history[len(history)-19]}, Limit: 5,
		ServerNames: []string{r2.name, r1.name}})
	if err != nil || resp.GetServerName() != r1.name || len(resp.GetEventIds()) != 5 {
		t.Fatalf("backfill further: %v %v", resp, err)
	}
	_, err = fs.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: rr.roomID, EventIds: []string{jr.GetEventId()}, ServerNames: []string{r2.name}})
	wantStatus(t, err, codes.NotFound, "M_NOT_FOUND")
	_, err = fs.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: "!unknown:r1.test", EventIds: []string{jr.GetEventId()}})
	wantStatus(t, err, codes.NotFound, "")
	_, err = fs.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: rr.roomID})
	wantStatus(t, err, codes.InvalidArgument, "")
	r1.mu.Lock()
	r1.refuse["/_matrix/federation/v1/backfill/"] = refusal{http.StatusForbidden, "M_FORBIDDEN"}
	r1.mu.Unlock()
	_, err = fs.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: rr.roomID, EventIds: []string{jr.GetEventId()}})
	wantStatus(t, err, codes.PermissionDenied, "M_FORBIDDEN")
}
