package store_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

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

// TestSyncLookupsFromChanges: the incremental /sync lookups that start from
// what changed give what their definitions give, for every user and every
// range between the marks of a membership and presence history:
// VisiblePresenceChanges is PresenceOf(VisibleUsers + the user), and
// NewlySharing is the self-join of all memberships it replaced.
func TestSyncLookupsFromChanges(t *testing.T) {
	ctx := context.Background()
	url := testkit.Postgres(t)
	st, err := store.Open(ctx, url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	next := func() (int64, error) { return st.NextPosition(ctx) }
	// ApplyMemberships keeps the newest room-server position; give every
	// change a higher one.
	streamPos := int64(0)
	applyAt := func(room, user, membership string) int64 {
		t.Helper()
		streamPos++
		_, pos, err := st.ApplyMemberships(ctx, streamPos, []store.MembershipChange{{RoomID: room, UserID: user, Membership: membership}}, next)
		if err != nil {
			t.Fatal(err)
		}
		return pos
	}
	setPresence := func(user, state string) int64 {
		t.Helper()
		pos, err := st.PutPresence(ctx, store.Presence{UserID: user, State: state, Origin: "x"})
		if err != nil {
			t.Fatal(err)
		}
		return pos
	}
	const a, b, c, d = "@a:x", "@b:x", "@c:x", "@d:x"
	var marks []int64 // positions to query between
	mark := func() {
		p, err := st.NextPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		marks = append(marks, p)
	}
	mark()
	applyAt("!r1:x", a, "join")
	applyAt("!r1:x", b, "join")
	applyAt("!r2:x", c, "join")
	mark()
	setPresence(a, "online")
	setPresence(b, "online")
	setPresence(c, "online") // c shares no room with a
	mark()
	applyAt("!r2:x", a, "join") // a now shares r2 with c
	setPresence(c, "unavailable")
	applyAt("!r1:x", b, "leave") // b no longer shares a room with a
	setPresence(b, "unavailable")
	mark()
	applyAt("!r3:x", d, "join")
	applyAt("!r3:x", a, "invite")
	setPresence(d, "online") // d: invited is not joined
	applyAt("!r1:x", c, "join")
	mark()

	for i := range marks {
		for j := i; j < len(marks); j++ {
			after, upto := marks[i], marks[j]
			for _, user := range []string{a, b, c, d} {
				visible, err := st.VisibleUsers(ctx, user)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(visible, user) {
					visible = append(visible, user)
				}
				want, err := st.PresenceOf(ctx, visible, after, upto)
				if err != nil {
					t.Fatal(err)
				}
				got, err := st.VisiblePresenceChanges(ctx, user, after, upto)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.EqualFunc(got, want, func(x, y store.Presence) bool { return x.UserID == y.UserID && x.Pos == y.Pos }) {
					t.Errorf("presence visible to %s in (%d, %d]: %+v, want %+v", user, after, upto, got, want)
				}
			}
		}
	}
	// NewlySharing against its definition, the join of every member of
	// the user's rooms that it replaced.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	nonEmpty := 0
	for i := range marks {
		for j := i; j < len(marks); j++ {
			after, upto := marks[i], marks[j]
			for _, user := range []string{a, b, c, d} {
				rows, err := conn.Query(ctx, `SELECT DISTINCT m2.user_id FROM presence.memberships m1
					JOIN presence.memberships m2 ON m2.room_id = m1.room_id
					WHERE m1.user_id = $1 AND m1.membership = 'join' AND m2.membership = 'join'
					  AND ((m1.joined_pos > $2 AND m1.joined_pos <= $3) OR (m2.joined_pos > $2 AND m2.joined_pos <= $3))
					ORDER BY 1`, user, after, upto)
				if err != nil {
					t.Fatal(err)
				}
				want, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				got, err := st.NewlySharing(ctx, user, after, upto)
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Errorf("newly sharing with %s in (%d, %d]: %v, want %v", user, after, upto, got, want)
				}
				if len(want) > 0 {
					nonEmpty++
				}
			}
		}
	}
	if nonEmpty < 5 {
		t.Fatalf("only %d non-empty cases: the history does not exercise NewlySharing", nonEmpty)
	}
}
