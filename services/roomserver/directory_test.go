package roomserver

import (
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
