package store_test

import (
	"context"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/presence/store"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// TestMembershipCopyIsIdempotent: redelivered and out-of-order messages of
// the room-server stream leave the newest membership in place, and only a
// real join takes an ephemeral position.
func TestMembershipCopyIsIdempotent(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	next := func() (int64, error) { return st.NextPosition(ctx) }
	const room = "!r:x"
	join := []store.MembershipChange{{RoomID: room, UserID: "@a:x", Membership: "join"}, {RoomID: room, UserID: "@b:x", Membership: "join"}}
	joined, pos, err := st.ApplyMemberships(ctx, 10, join, next)
	if err != nil || len(joined) != 2 || pos == 0 {
		t.Fatalf("first apply: %v %d %v", joined, pos, err)
	}
	// The same message again: nothing changes, no position.
	if joined, pos2, err := st.ApplyMemberships(ctx, 10, join, next); err != nil || len(joined) != 0 || pos2 != 0 {
		t.Fatalf("redelivery: %v %d %v", joined, pos2, err)
	}
	// b leaves at 12; an older message (11) arriving late must not undo it.
	if _, _, err := st.ApplyMemberships(ctx, 12, []store.MembershipChange{{RoomID: room, UserID: "@b:x", Membership: "leave"}}, next); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.ApplyMemberships(ctx, 11, []store.MembershipChange{{RoomID: room, UserID: "@b:x", Membership: "join"}}, next); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.IsJoined(ctx, room, "@b:x"); err != nil || ok {
		t.Fatalf("b joined after a stale redelivery: %v %v", ok, err)
	}
	if ok, _ := st.ShareRoom(ctx, "@a:x", "@b:x"); ok {
		t.Fatal("a and b still share the room")
	}
	if vis, _ := st.VisibleUsers(ctx, "@a:x"); !slices.Equal(vis, []string{"@a:x"}) {
		t.Fatalf("visible to a: %v", vis)
	}
	// Newly sharing: c joins after the position a saw.
	_, cpos, err := st.ApplyMemberships(ctx, 13, []store.MembershipChange{{RoomID: room, UserID: "@c:x", Membership: "join"}}, next)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := st.NewlySharing(ctx, "@a:x", pos, cpos)
	if err != nil || !slices.Contains(fresh, "@c:x") || slices.Contains(fresh, "@b:x") {
		t.Fatalf("newly sharing with a after %d: %v %v", pos, fresh, err)
	}
}
