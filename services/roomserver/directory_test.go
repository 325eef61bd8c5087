package roomserver

import (
	"encoding/json"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

func TestDirectoryAndAliasListing(t *testing.T) {
	h := newHarness(t, nil)
	first := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	second := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()

	for _, a := range []string{"#b:" + testServer, "#a:" + testServer} {
		if _, err := h.rs.SetRoomAlias(h.ctx, &roomserverv1.SetRoomAliasRequest{Alias: a, RoomId: first, Creator: alice}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := h.rs.ListRoomAliases(h.ctx, &roomserverv1.ListRoomAliasesRequest{RoomId: first})
	if err != nil || !slices.Equal(list.GetAliases(), []string{"#a:" + testServer, "#b:" + testServer}) {
		t.Fatalf("aliases %v %v", list.GetAliases(), err)
	}
	got, err := h.rs.GetRoomAlias(h.ctx, &roomserverv1.GetRoomAliasRequest{Alias: "#a:" + testServer})
	if err != nil || got.GetCreator() != alice {
		t.Fatalf("alias creator %+v %v", got, err)
	}
	if list, _ := h.rs.ListRoomAliases(h.ctx, &roomserverv1.ListRoomAliasesRequest{RoomId: second}); len(list.GetAliases()) != 0 {
		t.Fatalf("second room aliases %v", list.GetAliases())
	}

	vis, err := h.rs.GetRoomVisibility(h.ctx, &roomserverv1.GetRoomVisibilityRequest{RoomId: first})
	if err != nil || !vis.GetRoomExists() || vis.GetVisibility() != "private" {
		t.Fatalf("default visibility %+v %v", vis, err)
	}
	for _, room := range []string{second, first} {
		if _, err := h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: room, Visibility: "public"}); err != nil {
			t.Fatal(err)
		}
	}
	// Publishing twice is harmless and keeps the original position.
	if _, err := h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: second, Visibility: "public"}); err != nil {
		t.Fatal(err)
	}
	pub, err := h.rs.ListPublicRooms(h.ctx, &roomserverv1.ListPublicRoomsRequest{})
	if err != nil || !slices.Equal(pub.GetRoomIds(), []string{second, first}) {
		t.Fatalf("public rooms %v %v", pub.GetRoomIds(), err)
	}
	if _, err := h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: second, Visibility: "private"}); err != nil {
		t.Fatal(err)
	}
	pub, _ = h.rs.ListPublicRooms(h.ctx, &roomserverv1.ListPublicRoomsRequest{})
	if !slices.Equal(pub.GetRoomIds(), []string{first}) {
		t.Fatalf("public rooms after unpublishing %v", pub.GetRoomIds())
	}

	_, err = h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: first, Visibility: "hidden"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: "!nope:" + testServer, Visibility: "public"})
	wantCode(t, err, codes.NotFound)
	vis, err = h.rs.GetRoomVisibility(h.ctx, &roomserverv1.GetRoomVisibilityRequest{RoomId: "!nope:" + testServer})
	if err != nil || vis.GetRoomExists() {
		t.Fatalf("unknown room visibility %+v %v", vis, err)
	}
}

// An application service's network directories are apart from the
// server's: each lists only its own rooms, include_all_networks lists
// every directory's rooms once.
func TestNetworkDirectories(t *testing.T) {
	h := newHarness(t, nil)
	main := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	irc := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	both := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	publish := func(room, as, network, vis string) {
		t.Helper()
		if _, err := h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: room, Visibility: vis, AppserviceId: as, NetworkId: network}); err != nil {
			t.Fatal(err)
		}
	}
	list := func(req *roomserverv1.ListPublicRoomsRequest) []string {
		t.Helper()
		resp, err := h.rs.ListPublicRooms(h.ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetRoomIds()
	}
	publish(main, "", "", "public")
	publish(irc, "bridge", "irc", "public")
	publish(both, "bridge", "irc", "public")
	publish(both, "", "", "public")
	publish(both, "bridge", "irc", "public") // twice is harmless

	if got := list(&roomserverv1.ListPublicRoomsRequest{}); !slices.Equal(got, []string{main, both}) {
		t.Fatalf("server directory %v", got)
	}
	if got := list(&roomserverv1.ListPublicRoomsRequest{AppserviceId: "bridge", NetworkId: "irc"}); !slices.Equal(got, []string{irc, both}) {
		t.Fatalf("irc directory %v", got)
	}
	if got := list(&roomserverv1.ListPublicRoomsRequest{AppserviceId: "bridge", NetworkId: "slack"}); len(got) != 0 {
		t.Fatalf("slack directory %v", got)
	}
	if got := list(&roomserverv1.ListPublicRoomsRequest{IncludeAllNetworks: true}); !slices.Equal(got, []string{main, irc, both}) {
		t.Fatalf("all networks %v", got)
	}
	// The network listing does not make the room public in the server's
	// directory.
	if vis, _ := h.rs.GetRoomVisibility(h.ctx, &roomserverv1.GetRoomVisibilityRequest{RoomId: irc}); vis.GetVisibility() != "private" {
		t.Fatalf("irc room visibility %q", vis.GetVisibility())
	}
	publish(irc, "bridge", "irc", "private")
	if got := list(&roomserverv1.ListPublicRoomsRequest{AppserviceId: "bridge", NetworkId: "irc"}); !slices.Equal(got, []string{both}) {
		t.Fatalf("irc directory after unpublishing %v", got)
	}
	_, err := h.rs.SetRoomVisibility(h.ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: irc, Visibility: "public", AppserviceId: "bridge"})
	wantCode(t, err, codes.InvalidArgument)
}

// An event template's origin_server_ts (an application service's ts) is the
// built event's; one out of canonical JSON's range is refused.
func TestSendWithOriginServerTS(t *testing.T) {
	h := newHarness(t, nil)
	room := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	ts := int64(1_234_567_890_123)
	id := h.mustSend(room, alice, &roomserverv1.EventTemplate{Type: "m.room.message", Content: []byte(`{"body":"then"}`), OriginServerTs: &ts})
	var ev struct {
		OriginServerTS int64 `json:"origin_server_ts"`
	}
	if err := json.Unmarshal(h.event(id).GetEventJson(), &ev); err != nil || ev.OriginServerTS != ts {
		t.Fatalf("origin_server_ts %d %v", ev.OriginServerTS, err)
	}
	key := ""
	id = h.mustSend(room, alice, &roomserverv1.EventTemplate{Type: "m.room.topic", StateKey: &key, Content: []byte(`{"topic":"then"}`), OriginServerTs: &ts})
	if err := json.Unmarshal(h.event(id).GetEventJson(), &ev); err != nil || ev.OriginServerTS != ts {
		t.Fatalf("state origin_server_ts %d %v", ev.OriginServerTS, err)
	}
	bad := int64(1 << 53)
	_, err := h.send(room, alice, &roomserverv1.EventTemplate{Type: "m.room.message", Content: []byte(`{"body":"x"}`), OriginServerTs: &bad})
	wantCode(t, err, codes.InvalidArgument)
}
