package fedsender_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
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
}

func metric(t *testing.T, e *env, name, dest string) float64 {
	t.Helper()
	return metrics(t, e.sender)[name+`{destination="`+dest+`"}`]
}

// A server that is down gets everything once it is back: the sender backs
// off (the failures and the wait show in the metrics), the others are not
// held up, and the retry state resets when it answers.
func TestDownServerGetsEverythingOnceBack(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test"}})
	alice := e.user("alice")
	room := e.room(alice)
	r1, r2 := e.remotes["r1.test"], e.remotes["r2.test"]
	e.remoteJoin(r1, room, "rita")
	e.remoteJoin(r2, room, "rob")
	r1.down()
	ids := send(t, alice, room, 20, "while r1 is down")
	eventually(t, func() error { return wantExactlyInOrder(r2, room, ids) })
	eventually(t, func() error {
		if f := metric(t, e, "myelin_fedsender_destination_failures", r1.name); f < 2 {
			return fmt.Errorf("r1 failures %v", f)
		}
		if q := metric(t, e, "myelin_fedsender_queued_pdus", r1.name); q != 20 {
			return fmt.Errorf("r1 queue %v, want 20", q)
		}
		if age := metric(t, e, "myelin_fedsender_oldest_pending_seconds", r1.name); age <= 0 {
			return fmt.Errorf("r1 oldest pending %v", age)
		}
		return nil
	})
	if got := r1.received(room.String()); len(got) != 0 {
		t.Fatalf("r1 got %d events while down", len(got))
	}
	r1.up()
	eventually(t, func() error { return wantExactlyInOrder(r1, room, ids) })
	eventually(t, func() error {
		if f := metric(t, e, "myelin_fedsender_destination_failures", r1.name); f != 0 {
			return fmt.Errorf("r1 failures %v after it answered", f)
		}
		if q := metric(t, e, "myelin_fedsender_queued_pdus", r1.name); q != 0 {
			return fmt.Errorf("r1 queue %v", q)
		}
		return nil
	})
}

// After a long outage the sender catches up the way the spec expects:
// the transaction in flight is sent as it was, then only each room's
// newest event (the server fetches the rest with /get_missing_events),
// not the whole backlog.
func TestLongOutageCatchesUpWithNewestEvents(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}, mutate: func(c *myelin.Config) {
		c.FederationSender.CatchUpAfter = 500 * time.Millisecond
	}})
	alice := e.user("alice")
	roomA, roomB := e.room(alice), e.room(alice)
	r1 := e.remotes["r1.test"]
	e.remoteJoin(r1, roomA, "rita")
	e.remoteJoin(r1, roomB, "rita")
	r1.down()
	early := send(t, alice, roomA, 3, "early")
	eventually(t, func() error {
		if c := metric(t, e, "myelin_fedsender_catch_up", r1.name); c != 1 {
			return fmt.Errorf("r1 not catching up yet (%v)", c)
		}
		return nil
	})
	a := send(t, alice, roomA, 10, "a")
	b := send(t, alice, roomB, 10, "b")
	eventually(t, func() error {
		// The transaction in flight (the early events) and each room's
		// newest event wait; the rest went.
		if q := metric(t, e, "myelin_fedsender_queued_pdus", r1.name); q > float64(len(early))+2 {
			return fmt.Errorf("r1 queue %v, want at most %d", q, len(early)+2)
		}
		return nil
	})
	r1.up()
	eventually(t, func() error {
		gotA, gotB := r1.received(roomA.String()), r1.received(roomB.String())
		if len(gotB) != 1 || gotB[0].eventID != b[len(b)-1] {
			return fmt.Errorf("room B: got %d events, want only the newest", len(gotB))
		}
		if len(gotA) == 0 || gotA[len(gotA)-1].eventID != a[len(a)-1] {
			return fmt.Errorf("room A: got %d events, the newest not last", len(gotA))
		}
		for _, p := range gotA[:len(gotA)-1] {
			if !slices.Contains(early, p.eventID) {
				return fmt.Errorf("room A: %s is neither in flight nor the newest", p.eventID)
			}
		}
		return nil
	})
	eventually(t, func() error {
		if c := metric(t, e, "myelin_fedsender_catch_up", r1.name); c != 0 {
			return fmt.Errorf("r1 still catching up")
		}
		return nil
	})
	// Back to normal: every event goes again.
	more := send(t, alice, roomB, 3, "after")
	eventually(t, func() error {
		got := r1.received(roomB.String())
		if len(got) != 4 {
			return fmt.Errorf("room B: %d events", len(got))
		}
		for i, id := range more {
			if got[i+1].eventID != id {
				return fmt.Errorf("room B event %d", i+1)
			}
		}
		return nil
	})
}

// A destination's queue is bounded: past max_queued_pdus it switches to
// catch-up (each room's newest PDU) before its outage is long.
func TestQueueIsBounded(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}, mutate: func(c *myelin.Config) {
		c.FederationSender.MaxQueuedPDUs = 50
	}})
	alice := e.user("alice")
	room := e.room(alice)
	r1 := e.remotes["r1.test"]
	e.remoteJoin(r1, room, "rita")
	r1.down()
	ids := send(t, alice, room, 1, "first")
	eventually(t, func() error {
		if f := metric(t, e, "myelin_fedsender_destination_failures", r1.name); f < 1 {
			return fmt.Errorf("no failure yet")
		}
		return nil
	})
	ids = append(ids, send(t, alice, room, 70, "more")...)
	eventually(t, func() error {
		if c := metric(t, e, "myelin_fedsender_catch_up", r1.name); c != 1 {
			return fmt.Errorf("not catching up (%v)", c)
		}
		// The one in flight and the newest.
		if q := metric(t, e, "myelin_fedsender_queued_pdus", r1.name); q != 2 {
			return fmt.Errorf("queue %v, want 2", q)
		}
		return nil
	})
	r1.up()
	eventually(t, func() error { return wantExactlyInOrder(r1, room, []string{ids[0], ids[len(ids)-1]}) })
}

// A slow server and one that answers garbage hold up only themselves;
// each gets everything once it answers properly.
func TestSlowAndBrokenServersDoNotBlockOthers(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test", "r3.test", "r4.test"}, mutate: func(c *myelin.Config) {
		c.FederationSender.RequestTimeout = time.Second
	}})
	alice := e.user("alice")
	room := e.room(alice)
	slow, garbage, failing, fine := e.remotes["r1.test"], e.remotes["r2.test"], e.remotes["r3.test"], e.remotes["r4.test"]
	for _, r := range []*remote{slow, garbage, failing, fine} {
		e.remoteJoin(r, room, "someone")
	}
	slow.setMode(modeSlow)
	garbage.setMode(modeGarbage)
	failing.setMode(modeError)
	ids := send(t, alice, room, 15, "msg")
	eventually(t, func() error { return wantExactlyInOrder(fine, room, ids) })
	eventually(t, func() error {
		for _, r := range []*remote{slow, garbage, failing} {
			if f := metric(t, e, "myelin_fedsender_destination_failures", r.name); f < 2 {
				return fmt.Errorf("%s: %v failures", r.name, f)
			}
		}
		return nil
	})
	for _, r := range []*remote{slow, garbage, failing} {
		r.setMode(modeUp)
	}
	slow.release()
	for _, r := range []*remote{slow, garbage, failing} {
		eventually(t, func() error { return wantExactlyInOrder(r, room, ids) })
	}
}

// A restart of the sender (its own process) with events queued, one
// transaction held by the destination while it stops, events the sender
// had fetched from the stream but not applied, and events committed while
// it is down, loses and duplicates nothing.
func TestSenderRestartLosesAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}, split: true})
	ctx := context.Background()
	alice := e.user("alice")
	room := e.room(alice)
	r1 := e.remotes["r1.test"]
	e.remoteJoin(r1, room, "rita")
	// r1 takes the first transaction and holds its answer.
	r1.setMode(modeSlow)
	ids := send(t, alice, room, 30, "before")
	eventually(t, func() error {
		if n := len(r1.received(room.String())); n == 0 {
			return fmt.Errorf("r1 has no transaction yet")
		}
		return nil
	})
	// The room consumer's position row is locked: the next events are
	// fetched from the stream but cannot be applied.
	conn, err := pgx.Connect(ctx, e.cfg.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := tx.QueryRow(ctx, `SELECT 1 FROM fedsender.consumer_positions WHERE consumer = 'fedsender-rooms' FOR UPDATE`).Scan(&one); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, send(t, alice, room, 10, "fetched, not applied")...)
	eventually(t, func() error {
		var waiting bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%consumer_positions%')`).Scan(&waiting)
		if err == nil && !waiting {
			err = fmt.Errorf("the consumer is not waiting for the position row")
		}
		return err
	})
	e.sender.Stop()
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, send(t, alice, room, 10, "while the sender is down")...)
	r1.setMode(modeUp)
	r1.release()
	e.fs = nil
	e.startSender()
	eventually(t, func() error { return wantExactlyInOrder(r1, room, ids) })
}

// A second sender replica is a standby: when the sending one stops while
// events flow (some of them fetched by it but not applied), the standby
// takes over and every event arrives once, in order.
func TestStandbySenderTakesOver(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}, split: true})
	alice := e.user("alice")
	room := e.room(alice)
	r1 := e.remotes["r1.test"]
	e.remoteJoin(r1, room, "rita")
	first := e.sender
	e.fs = nil
	e.startSender() // the standby
	ids := send(t, alice, room, 20, "one")
	eventually(t, func() error { return wantExactlyInOrder(r1, room, ids) })
	done := make(chan []string)
	go func() { done <- send(t, alice, room, 40, "two") }()
	eventually(t, func() error {
		if n := len(r1.received(room.String())); n < 25 {
			return fmt.Errorf("%d events so far", n)
		}
		return nil
	})
	first.Stop()
	ids = append(ids, <-done...)
	eventually(t, func() error { return wantExactlyInOrder(r1, room, ids) })
}

// A transaction carries at most 100 EDUs; PDUs a server answers with an
// error are logged and counted, not sent again.
func TestTransactionLimitsAndPDUErrors(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}})
	ctx := context.Background()
	alice := e.user("alice")
	room := e.room(alice)
	r1 := e.remotes["r1.test"]
	e.remoteJoin(r1, room, "rita")
	r1.down()
	for i := 0; i < 130; i++ {
		body := map[string]any{"messages": map[string]any{r1.user("rita"): map[string]any{"DEV": map[string]any{"n": i}}}}
		if _, err := alice.MakeRequest(ctx, "PUT", alice.BuildClientURL("v3", "sendToDevice", "m.test", fmt.Sprintf("t%d", i)), body, nil); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() error {
		if q := metric(t, e, "myelin_fedsender_queued_edus", r1.name); q != 130 {
			return fmt.Errorf("queue %v", q)
		}
		return nil
	})
	r1.mu.Lock()
	r1.pduError = true
	r1.mu.Unlock()
	r1.up()
	eventually(t, func() error {
		if n := len(r1.receivedEDUs("m.direct_to_device")); n != 130 {
			return fmt.Errorf("%d to-device EDUs", n)
		}
		return nil
	})
	if _, maxEDUs, _ := r1.stats(); maxEDUs != 100 {
		t.Fatalf("largest transaction had %d EDUs, want 100", maxEDUs)
	}
	ids := send(t, alice, room, 3, "refused")
	eventually(t, func() error {
		if n := metrics(t, e.sender)["myelin_fedsender_pdu_errors_total"]; n < 3 {
			return fmt.Errorf("%v PDU errors counted", n)
		}
		return wantExactlyInOrder(r1, room, ids)
	})
	// Nothing is sent again: a later event comes alone.
	more := send(t, alice, room, 1, "later")
	eventually(t, func() error { return wantExactlyInOrder(r1, room, append(ids, more...)) })
}

// A local user's leave (rescinding an invite) of a remote user whose
// server is not in the room goes to that server too; the servers in the
// room get everything, the invitee's server nothing else.
func TestRescindedInviteReachesTheInviteesServer(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r4.test"}})
	ctx := context.Background()
	alice := e.user("alice")
	room := e.room(alice)
	r1, r4 := e.remotes["r1.test"], e.remotes["r4.test"]
	e.remoteJoin(r1, room, "rita")
	rex := id.UserID(r4.user("rex"))
	invite, err := alice.SendStateEvent(ctx, room, event.StateMember, rex.String(), map[string]any{"membership": "invite"})
	if err != nil {
		t.Fatal(err)
	}
	leave, err := alice.SendStateEvent(ctx, room, event.StateMember, rex.String(), map[string]any{"membership": "leave"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		return wantExactlyInOrder(r1, room, []string{invite.EventID.String(), leave.EventID.String()})
	})
	eventually(t, func() error { return wantExactlyInOrder(r4, room, []string{leave.EventID.String()}) })
}
