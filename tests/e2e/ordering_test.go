package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

const (
	orderingSenders  = 8
	orderingMessages = 500
)

// concurrentOrdering: 8 members of one room send 500 messages at once.
// Every member's long-polling /sync and a full backwards /messages
// pagination must show the same total order, each message exactly once,
// and each sender's messages in the order they were sent.
func concurrentOrdering(t *testing.T, url string) {
	ctx := context.Background()
	users := make([]*user, orderingSenders)
	for i := range users {
		users[i] = register(t, url, fmt.Sprintf("order%d", i))
	}
	created, err := users[0].cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	for _, u := range users[1:] {
		if _, err := u.cli.JoinRoomByID(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	// Every member has seen every join before the burst, so the loops
	// below start from a point that includes the whole membership.
	for _, u := range users {
		testkit.Eventually(t, 30*time.Second, func() error {
			joined, err := u.cli.JoinedMembers(ctx, room)
			if err != nil {
				return err
			}
			if len(joined.Joined) != orderingSenders {
				return fmt.Errorf("%s sees %d members", u.cli.UserID, len(joined.Joined))
			}
			resp, err := u.cli.SyncRequest(ctx, 0, u.since, timelineFilter, false, "")
			if err != nil {
				return err
			}
			u.since = resp.NextBatch
			return nil
		})
	}

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	errs := make(chan error, 64)
	var loops sync.WaitGroup
	for _, u := range users {
		loops.Add(1)
		go func() { defer loops.Done(); u.syncLoop(loopCtx, t, room, errs) }()
	}

	// The senders send concurrently, each its share in order.
	var senders sync.WaitGroup
	for i, u := range users {
		n := orderingMessages / orderingSenders
		if i < orderingMessages%orderingSenders {
			n++
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			for j := range n {
				if _, err := u.cli.SendText(ctx, room, fmt.Sprintf("order %d %03d", i, j)); err != nil {
					errs <- fmt.Errorf("sender %d message %d: %w", i, j, err)
					return
				}
			}
		}()
	}
	senders.Wait()
	testkit.Eventually(t, 60*time.Second, func() error {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		for _, u := range users {
			if got := len(orderingBodies(u.seen())); got < orderingMessages {
				return fmt.Errorf("%s has %d of %d messages", u.cli.UserID, got, orderingMessages)
			}
		}
		return nil
	})
	stopLoops()
	loops.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	paged := orderingBodies(history(t, users[0].cli, room))
	checkOrder(t, "/messages", paged)
	for _, u := range users {
		assertExactly(t, u.cli.UserID.String()+" /sync", orderingBodies(u.seen()), paged)
	}
}

// orderingBodies keeps the bodies this test sent.
func orderingBodies(bodies []string) []string {
	var out []string
	for _, b := range bodies {
		if strings.HasPrefix(b, "order ") {
			out = append(out, b)
		}
	}
	return out
}

// checkOrder: all messages, each once, every sender's in sending order.
func checkOrder(t *testing.T, where string, bodies []string) {
	t.Helper()
	if len(bodies) != orderingMessages {
		t.Fatalf("%s: %d messages, want %d", where, len(bodies), orderingMessages)
	}
	next := map[int]int{}
	for _, b := range bodies {
		var sender, n int
		if _, err := fmt.Sscanf(b, "order %d %d", &sender, &n); err != nil {
			t.Fatalf("%s: unexpected body %q", where, b)
		}
		if n != next[sender] {
			t.Fatalf("%s: sender %d's message %d where %d was due", where, sender, n, next[sender])
		}
		next[sender]++
	}
}
