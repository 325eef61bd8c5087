package fedsender_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
)

// Local events reach every remote server in the room exactly once and in
// order, in transactions of at most 50 PDUs; a server that joins later
// gets the events from its join on; other servers' events are never sent
// back; every request verifies at the receiving side.
func TestEventsReachEveryServerOnceInOrder(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test", "r3.test"}})
	alice := e.user("alice")
	room := e.room(alice)
	r1, r2, r3 := e.remotes["r1.test"], e.remotes["r2.test"], e.remotes["r3.test"]
	e.remoteJoin(r1, room, "rita")
	e.remoteJoin(r2, room, "rob")

	first := send(t, alice, room, 120, "before r3")
	e.remoteJoin(r3, room, "rhea")
	second := send(t, alice, room, 10, "after r3")
	all := append(append([]string{}, first...), second...)

	eventually(t, func() error {
		if err := wantExactlyInOrder(r1, room, all); err != nil {
			return err
		}
		if err := wantExactlyInOrder(r2, room, all); err != nil {
			return err
		}
		return wantExactlyInOrder(r3, room, second)
	})
	for _, r := range []*remote{r1, r2, r3} {
		maxPDUs, _, authFailures := r.stats()
		if maxPDUs > 50 || maxPDUs == 0 {
			t.Errorf("%s: largest transaction had %d PDUs", r.name, maxPDUs)
		}
		if authFailures != 0 {
			t.Errorf("%s: %d requests failed X-Matrix verification", r.name, authFailures)
		}
	}
	// A remote server's own events (its joins, a message) never come back.
	resp, err := alice.SendText(context.Background(), room, "last")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		return wantExactlyInOrder(r1, room, append(all, resp.EventID.String()))
	})
	_ = mautrix.Client{}
}
