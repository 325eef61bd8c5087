package presence_test

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestTypingStartStopAndExpiry(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	alice, bob, carol := e.register("alice"), e.register("bob"), e.register("carol")
	room := sharedRoom(t, alice, bob)
	bob.sync(0, event.PresenceOffline)

	if _, err := alice.UserTyping(ctx, room, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	bob.syncUntil("alice typing", func(r *mautrix.RespSync) bool {
		users, ok := typingIn(r, room)
		return ok && slices.Equal(users, []string{alice.UserID.String()})
	})
	// Stopping is a change too: the list becomes empty.
	if _, err := alice.UserTyping(ctx, room, false, 0); err != nil {
		t.Fatal(err)
	}
	bob.syncUntil("typing stopped", func(r *mautrix.RespSync) bool {
		users, ok := typingIn(r, room)
		return ok && len(users) == 0
	})

	// Expiry: the notification ends when the clock passes its timeout.
	if _, err := alice.UserTyping(ctx, room, true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.UserTyping(ctx, room, true, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	bob.syncUntil("both typing", func(r *mautrix.RespSync) bool {
		users, ok := typingIn(r, room)
		return ok && len(users) == 2
	})
	e.clock.Advance(6 * time.Second)
	bob.syncUntil("alice's typing expired, bob's not", func(r *mautrix.RespSync) bool {
		users, ok := typingIn(r, room)
		return ok && slices.Equal(users, []string{bob.UserID.String()})
	})
	// A fresh initial sync shows the current list.
	carolView := e.register("dave")
	if _, err := carolView.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	// (The join may reach the client-API's /sync copy after the first
	// sync: then the room arrives, newly joined, in a later one, also with
	// its current typing list.)
	carolView.syncUntil("current typing list on joining", func(r *mautrix.RespSync) bool {
		if r.Rooms.Join[room] == nil {
			return false
		}
		users, ok := typingIn(r, room)
		if !ok || !slices.Equal(users, []string{bob.UserID.String()}) {
			t.Fatalf("typing on joining = %v %v", users, ok)
		}
		return true
	})

	// Leaving the room ends a notification.
	if _, err := carolView.UserTyping(ctx, room, true, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	bob.syncUntil("dave typing", func(r *mautrix.RespSync) bool {
		users, ok := typingIn(r, room)
		return ok && slices.Contains(users, carolView.UserID.String())
	})
	if _, err := carolView.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	bob.syncUntil("dave's typing ended by leaving", func(r *mautrix.RespSync) bool {
		users, ok := typingIn(r, room)
		return ok && slices.Equal(users, []string{bob.UserID.String()})
	})

	// Permissions: not joined, or typing as someone else.
	_, err := carol.UserTyping(ctx, room, true, time.Second)
	matrixErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	_, err = alice.MakeRequest(ctx, http.MethodPut, alice.BuildClientURL("v3", "rooms", room, "typing", bob.UserID), map[string]any{"typing": true}, nil)
	matrixErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	_, err = alice.MakeRequest(ctx, http.MethodPut, alice.BuildClientURL("v3", "rooms", room, "typing", alice.UserID), map[string]any{"timeout": 5}, nil)
	matrixErr(t, err, http.StatusBadRequest, "M_BAD_JSON")
}

func TestLongPollWokenByTyping(t *testing.T) {
	e := newEnv(t)
	alice, bob := e.register("alice"), e.register("bob")
	room := sharedRoom(t, alice, bob)
	alice.sync(0, event.PresenceOffline)
	bob.sync(0, event.PresenceOffline)

	// Bob long-polls with the longest timeout the server allows; the
	// request context is far shorter, so only a wake-up can answer it.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	done := make(chan result, 1)
	started := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		since := bob.since
		close(started)
		for {
			resp, err := bob.SyncRequest(ctx, 300000, since, "", false, event.PresenceOffline)
			if err != nil {
				done <- result{err: err}
				return
			}
			if _, ok := typingIn(resp, room); ok {
				done <- result{resp: resp}
				return
			}
			since = resp.NextBatch // woken by something else: wait again
		}
	}()
	<-started
	if _, err := alice.UserTyping(context.Background(), room, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("long poll: %v", r.err)
	}
	if users, _ := typingIn(r.resp, room); !slices.Equal(users, []string{alice.UserID.String()}) {
		t.Fatalf("typing = %v", users)
	}
}

func TestReceipts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	alice, bob, carol := e.register("alice"), e.register("bob"), e.register("carol")
	room := sharedRoom(t, alice, bob)
	msg, err := alice.SendText(ctx, room, "hello")
	if err != nil {
		t.Fatal(err)
	}
	ev := msg.EventID
	alice.sync(0, event.PresenceOffline)
	bob.sync(0, event.PresenceOffline)

	if err := alice.SendReceipt(ctx, room, ev, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.SendReceipt(ctx, room, ev, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.SendReceipt(ctx, room, ev, event.ReceiptTypeRead, map[string]string{"thread_id": "main"}); err != nil {
		t.Fatal(err)
	}
	aliceRead := receipt{EventID: ev.String(), Type: "m.read", UserID: alice.UserID.String()}
	bobPrivate := receipt{EventID: ev.String(), Type: "m.read.private", UserID: bob.UserID.String()}
	bobThreaded := receipt{EventID: ev.String(), Type: "m.read", UserID: bob.UserID.String(), ThreadID: "main"}

	// Bob sees alice's public receipt and his own private one.
	bob.syncUntil("receipts", func(r *mautrix.RespSync) bool {
		got := receiptsIn(r, room)
		return slices.Contains(got, aliceRead) && slices.Contains(got, bobPrivate)
	})
	// Alice sees bob's threaded receipt but never his private one.
	alice.syncUntil("bob's threaded receipt", func(r *mautrix.RespSync) bool {
		got := receiptsIn(r, room)
		if slices.Contains(got, bobPrivate) {
			t.Fatalf("alice saw bob's private receipt: %v", got)
		}
		return slices.Contains(got, bobThreaded)
	})
	// Initial syncs: the room's current receipts, private ones only to their owner.
	aliceInit := e.again(alice).sync(0, event.PresenceOffline)
	got := receiptsIn(aliceInit, room)
	if !slices.Contains(got, aliceRead) || !slices.Contains(got, bobThreaded) || slices.Contains(got, bobPrivate) {
		t.Fatalf("alice initial receipts = %v", got)
	}
	got = receiptsIn(e.again(bob).sync(0, event.PresenceOffline), room)
	if !slices.Contains(got, bobPrivate) {
		t.Fatalf("bob initial receipts = %v", got)
	}

	// read_markers: m.fully_read is the owner's room account data; m.read
	// in the body is a receipt.
	msg2, err := bob.SendText(ctx, room, "second")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SetReadMarkers(ctx, room, &mautrix.ReqSetReadMarkers{FullyRead: msg2.EventID, Read: msg2.EventID}); err != nil {
		t.Fatal(err)
	}
	alice.syncUntil("fully_read marker", func(r *mautrix.RespSync) bool {
		jr := r.Rooms.Join[room]
		if jr == nil {
			return false
		}
		for _, ad := range jr.AccountData.Events {
			if ad.Type.Type == "m.fully_read" && string(ad.Content.VeryRaw) == `{"event_id":"`+msg2.EventID.String()+`"}` {
				return true
			}
		}
		return false
	})
	// The marker is also readable as room account data, by its owner only.
	var marker struct {
		EventID string `json:"event_id"`
	}
	if err := alice.GetRoomAccountData(ctx, room, "m.fully_read", &marker); err != nil || marker.EventID != msg2.EventID.String() {
		t.Fatalf("GET m.fully_read = %+v, %v; want %s", marker, err, msg2.EventID)
	}
	if err := bob.GetRoomAccountData(ctx, room, "m.fully_read", &marker); err == nil {
		t.Fatal("bob's own m.fully_read exists though bob never set one")
	}
	bob.syncUntil("alice's m.read from read_markers", func(r *mautrix.RespSync) bool {
		if jr := r.Rooms.Join[room]; jr != nil {
			for _, ad := range jr.AccountData.Events {
				if ad.Type.Type == "m.fully_read" {
					t.Fatal("bob saw alice's read marker")
				}
			}
		}
		return slices.Contains(receiptsIn(r, room), receipt{EventID: msg2.EventID.String(), Type: "m.read", UserID: alice.UserID.String()})
	})

	// Refusals.
	matrixErr(t, carol.SendReceipt(ctx, room, ev, event.ReceiptTypeRead, nil), http.StatusForbidden, "M_FORBIDDEN")
	matrixErr(t, alice.SendReceipt(ctx, room, ev, event.ReceiptType("m.bogus"), nil), http.StatusBadRequest, "M_INVALID_PARAM")
	matrixErr(t, alice.SendReceipt(ctx, room, ev, event.ReceiptTypeRead, map[string]string{"thread_id": "nonsense"}), http.StatusBadRequest, "M_INVALID_PARAM")
	matrixErr(t, alice.SendReceipt(ctx, room, ev, event.ReceiptType("m.fully_read"), map[string]string{"thread_id": "main"}), http.StatusBadRequest, "M_INVALID_PARAM")
}

func TestPresenceVisibilityAndIdleTimers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	alice, bob, carol := e.register("alice"), e.register("bob"), e.register("carol")
	sharedRoom(t, alice, bob)
	bob.sync(0, event.PresenceOffline)

	// Alice's sync (set_presence defaults to online) makes her online.
	alice.sync(0, "")
	p, err := alice.GetPresence(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Presence != event.PresenceOnline || !p.CurrentlyActive {
		t.Fatalf("alice's own presence = %+v", p)
	}
	bob.syncUntil("alice online", func(r *mautrix.RespSync) bool {
		c := presenceIn(r)[alice.UserID.String()]
		return c != nil && c["presence"] == "online" && c["currently_active"] == true
	})
	if p, err := bob.GetPresence(ctx, alice.UserID); err != nil || p.Presence != event.PresenceOnline {
		t.Fatalf("bob sees alice as %+v, %v", p, err)
	}
	// Carol shares no room with alice: refused.
	_, err = carol.GetPresence(ctx, alice.UserID)
	matrixErr(t, err, http.StatusForbidden, "M_FORBIDDEN")
	// Nobody sets another user's presence.
	err = bob.MakeRequestPresence(ctx, alice.UserID)
	matrixErr(t, err, http.StatusForbidden, "M_FORBIDDEN")

	// Status message.
	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "lunch"}); err != nil {
		t.Fatal(err)
	}
	bob.syncUntil("status message", func(r *mautrix.RespSync) bool {
		c := presenceIn(r)[alice.UserID.String()]
		return c != nil && c["status_msg"] == "lunch"
	})

	// Idle: no sync for idle_timeout makes alice unavailable, then offline.
	e.clock.Advance(testIdle + time.Second)
	bob.syncUntil("alice unavailable", func(r *mautrix.RespSync) bool {
		c := presenceIn(r)[alice.UserID.String()]
		return c != nil && c["presence"] == "unavailable" && c["currently_active"] == false
	})
	if p, err := bob.GetPresence(ctx, alice.UserID); err != nil || p.Presence != event.PresenceUnavailable || p.StatusMsg != "lunch" {
		t.Fatalf("after idle: %+v, %v", p, err)
	}
	e.clock.Advance(testOffline)
	bob.syncUntil("alice offline", func(r *mautrix.RespSync) bool {
		c := presenceIn(r)[alice.UserID.String()]
		return c != nil && c["presence"] == "offline"
	})
	// A sync brings her back online; set_presence=unavailable is honoured.
	alice.sync(0, "")
	if p, _ := bob.GetPresence(ctx, alice.UserID); p == nil || p.Presence != event.PresenceOnline {
		t.Fatalf("after sync: %+v", p)
	}
	alice.sync(0, event.PresenceUnavailable)
	bob.syncUntil("alice unavailable by set_presence", func(r *mautrix.RespSync) bool {
		c := presenceIn(r)[alice.UserID.String()]
		return c != nil && c["presence"] == "unavailable"
	})
}

// MakeRequestPresence tries to set u's presence as c.
func (c *client) MakeRequestPresence(ctx context.Context, u id.UserID) error {
	_, err := c.MakeRequest(ctx, http.MethodPut, c.BuildClientURL("v3", "presence", u, "status"), map[string]any{"presence": "online"}, nil)
	return err
}
