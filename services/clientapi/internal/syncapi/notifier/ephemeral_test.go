package notifier

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// TestNotifierEphemeralWakeups: typing in a room wakes its members only;
// a private receipt wakes its owner only; a presence change wakes everyone
// sharing a room; a change already past the waiter's position returns at
// once.
func TestNotifierEphemeralWakeups(t *testing.T) {
	const room = "!r:example.test"
	n := New(map[string][]string{room: {"@alice:x", "@bob:x"}}, nil, nil, zap.NewNop())
	ctx := context.Background()
	start := func(u string, afterE int64) chan struct{} {
		ch := make(chan struct{})
		go func() { n.WaitSync(ctx, u, SyncCursor{EPos: afterE}); close(ch) }()
		return ch
	}
	woken := func(ch chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	registered := func(users ...string) {
		testkit.Eventually(t, 10*time.Second, func() error {
			for _, u := range users {
				if !n.Waiting(u) {
					return fmt.Errorf("%s not waiting yet", u)
				}
			}
			return nil
		})
	}

	alice, bob, carol := start("@alice:x", 0), start("@bob:x", 0), start("@carol:x", 0)
	registered("@alice:x", "@bob:x", "@carol:x")
	n.EphemeralRoom(room, 1)
	<-alice
	<-bob
	if woken(carol) || !n.Waiting("@carol:x") {
		t.Fatal("carol, not in the room, was woken by its typing")
	}

	alice, bob = start("@alice:x", 1), start("@bob:x", 1)
	registered("@alice:x", "@bob:x")
	n.EphemeralUser("@bob:x", 2)
	<-bob
	if woken(alice) {
		t.Fatal("alice was woken by bob's private receipt")
	}
	n.EphemeralSharing("@bob:x", 3)
	<-alice
	if woken(carol) {
		t.Fatal("carol, sharing no room with bob, was woken by his presence")
	}
	n.EphemeralSharing("@carol:x", 4)
	<-carol

	// Already past: returns without waiting.
	done := make(chan struct{})
	go func() { n.WaitSync(ctx, "@alice:x", SyncCursor{EPos: 2}); close(done) }()
	<-done
}

// A join wakes the joiner and the joined room's members, not the joiner's
// other room-mates; presence wakes go through the rooms the batches joined
// and left (userRooms follows joined).
func TestNotifierJoinAndSharingWakeups(t *testing.T) {
	const r1, r2 = "!r1:x", "!r2:x"
	n := New(map[string][]string{r1: {"@alice:x", "@bob:x"}, r2: {"@carol:x"}}, nil, nil, zap.NewNop())
	ctx := context.Background()
	// Waits on ephemeral data only: no room position can pass 1<<40.
	start := func(u string, afterE int64) chan struct{} {
		ch := make(chan struct{})
		go func() { n.WaitSync(ctx, u, SyncCursor{Pos: 1 << 40, EPos: afterE}); close(ch) }()
		testkit.Eventually(t, 10*time.Second, func() error {
			if !n.Waiting(u) {
				return fmt.Errorf("%s not waiting yet", u)
			}
			return nil
		})
		return ch
	}
	within := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal(what)
		}
	}
	quiet := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
			t.Fatal(what)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Alice joins r2 (the ephemeral message may come before the room
	// event): alice and carol are woken, bob (her room-mate in r1) is not.
	alice, bob, carol := start("@alice:x", 0), start("@bob:x", 0), start("@carol:x", 0)
	n.EphemeralJoin(r2, "@alice:x", 1)
	within(alice, "alice was not woken by her own join")
	within(carol, "carol was not woken by alice joining her room")
	quiet(bob, "bob was woken by alice joining a room he is not in")
	// The room event consumer records the join; now alice's presence
	// reaches carol through r2 and bob through r1.
	n.Committed([]store.Applied{{Event: store.Event{EventID: "$j", RoomID: r2},
		Changes: []store.MembershipChange{{RoomID: r2, UserID: "@alice:x", Membership: store.MembershipJoin}}, Pos: 1}})
	carol = start("@carol:x", 1)
	n.EphemeralSharing("@alice:x", 2)
	within(carol, "carol, now sharing r2 with alice, was not woken by her presence")
	within(bob, "bob, sharing r1 with alice, was not woken by her presence")
	// Bob leaves r1: alice's presence no longer wakes him.
	n.Committed([]store.Applied{{Event: store.Event{EventID: "$l", RoomID: r1},
		Changes: []store.MembershipChange{{RoomID: r1, UserID: "@bob:x", Membership: store.MembershipLeave}}, Pos: 2}})
	bob = start("@bob:x", 2)
	n.EphemeralSharing("@alice:x", 3)
	quiet(bob, "bob, who left alice's only shared room, was woken by her presence")
}
