package appservice_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// A room directory alias in an appservice's aliases namespace makes the
// room interesting to it (spec: "the room has an alias in the
// namespace"), though the room's m.room.canonical_alias does not name it;
// once the alias is deleted the room is of no more interest. The alias
// stream and the room events are separate streams, so the test sends
// until the change shows. A room of a watched user is the marker that the
// appservice had its turn.
func TestDirectoryAliasInterest(t *testing.T) {
	e := newEnv(t, false, asSpec{id: "dir", namespaces: "  aliases:\n    - exclusive: false\n      regex: '#dir_.*:as\\.test'\n" +
		users(`@watched_.*:as\.test`, false)})
	ctx := context.Background()
	alice, bob := e.user("alice"), e.user("watched_bob")
	r := e.recv["dir"]
	room := e.room(alice, nil)
	marker := e.room(bob, nil)
	// delivered sends a message to room, then one to the marker room, and
	// reports whether the first reached the appservice by the time the
	// marker did.
	n := 0
	delivered := func() bool {
		t.Helper()
		n++
		sent := send(t, alice, room, 1, fmt.Sprint("probe ", n))[0]
		mark := send(t, bob, marker, 1, fmt.Sprint("marker ", n))[0]
		testkit.Eventually(t, 30*time.Second, func() error {
			if !slices.Contains(r.eventIDs(marker, "m.room.message"), mark) {
				return fmt.Errorf("marker %d not delivered", n)
			}
			return nil
		})
		return slices.Contains(r.eventIDs(room, "m.room.message"), sent)
	}
	if delivered() {
		t.Fatal("a room without an alias in the namespace was delivered")
	}
	alias := id.RoomAlias("#dir_chan:as.test")
	if _, err := alice.CreateAlias(ctx, alias, room); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if !delivered() {
			return fmt.Errorf("room with the directory alias %s not delivered yet", alias)
		}
		return nil
	})
	if !delivered() {
		t.Fatal("the room stopped being delivered")
	}
	if _, err := alice.DeleteAlias(ctx, alias); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if delivered() {
			return fmt.Errorf("room still delivered after its alias %s was deleted", alias)
		}
		return nil
	})
	if delivered() {
		t.Fatal("the room is delivered again without its alias")
	}
}
