package appservice_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// Interest: each rule of the spec gives an appservice the room's events,
// and an appservice no rule matches gets none of them.
func TestInterestRules(t *testing.T) {
	e := newEnv(t, false,
		asSpec{id: "users", namespaces: users(`@watched_.*:as\.test`, false)},
		asSpec{id: "senders", namespaces: users(`@alice:as\.test`, false)},
		asSpec{id: "aliases", namespaces: "  aliases:\n    - exclusive: false\n      regex: '#bridged_.*:as\\.test'"},
		asSpec{id: "rooms", namespaces: "  rooms:\n    - exclusive: false\n      regex: '!.*:as\\.test'"},
		asSpec{id: "none", namespaces: users(`@nobody_.*:as\.test`, false)},
		asSpec{id: "nourl", namespaces: users(`@.*`, false), noURL: true},
	)
	ctx := context.Background()
	alice, carol, bob := e.user("alice"), e.user("carol"), e.user("watched_bob")

	// A room of carol's that bob joins: "users" sees it (a member), from
	// bob's join on; "senders" never (alice is not in it).
	memberRoom := e.room(carol, nil)
	join(t, bob, memberRoom)
	sent := send(t, carol, memberRoom, 3, "member room")
	// A room with an alias in a namespace.
	aliasRoom := e.room(carol, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "bridged_chan"})
	aliasSent := send(t, carol, aliasRoom, 2, "alias room")
	// A room alice joins: "senders" (whose namespace holds alice) sees
	// it from her join on, carol's messages too (alice is a member).
	aliceRoom := e.room(carol, nil)
	join(t, alice, aliceRoom)
	carolSent := send(t, carol, aliceRoom, 1, "carol")
	aliceSent := send(t, alice, aliceRoom, 2, "alice")
	// An invite of bob (the target) to a room he is not in.
	inviteRoom := e.room(carol, nil)
	if _, err := carol.InviteUser(ctx, inviteRoom, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	// A room nobody's namespace touches except "rooms" (every room).
	plainRoom := e.room(carol, nil)
	plainSent := send(t, carol, plainRoom, 1, "plain")

	waitEvents(t, e.recv["users"], memberRoom, sent)
	waitEvents(t, e.recv["aliases"], aliasRoom, aliasSent)
	waitEvents(t, e.recv["senders"], aliceRoom, append(append([]string{}, carolSent...), aliceSent...))
	waitEvents(t, e.recv["rooms"], plainRoom, plainSent)
	testkit.Eventually(t, 20*time.Second, func() error {
		for _, ev := range e.recv["users"].snapshot() {
			if ev["room_id"] == string(inviteRoom) && ev["type"] == "m.room.member" && ev["state_key"] == string(bob.UserID) {
				return nil
			}
		}
		return errors.New("bob's invite not delivered")
	})
	// The "rooms" appservice sees every room's messages; it is the last
	// to be sent, so once it has the plain room's, the others had their
	// chance too.
	waitEvents(t, e.recv["rooms"], aliceRoom, append(append([]string{}, carolSent...), aliceSent...))

	checks := []struct {
		as   string
		room id.RoomID
		want int
	}{
		{"users", aliasRoom, 0}, {"users", aliceRoom, 0}, {"users", plainRoom, 0},
		{"senders", memberRoom, 0}, {"senders", plainRoom, 0},
		{"aliases", memberRoom, 0}, {"aliases", plainRoom, 0},
		{"none", memberRoom, 0}, {"none", aliasRoom, 0}, {"none", aliceRoom, 0}, {"none", plainRoom, 0},
	}
	for _, c := range checks {
		if got := e.recv[c.as].eventIDs(c.room, ""); len(got) != c.want {
			t.Errorf("appservice %s got %d events of room %s, want %d", c.as, len(got), c.room, c.want)
		}
	}
	// "senders" got alice's join, sent by her, and not carol's creation of
	// the room before it.
	var sawJoin, sawCreate bool
	for _, ev := range e.recv["senders"].snapshot() {
		sawJoin = sawJoin || (ev["room_id"] == string(aliceRoom) && ev["type"] == "m.room.member" && ev["sender"] == string(alice.UserID))
		sawCreate = sawCreate || (ev["room_id"] == string(aliceRoom) && ev["type"] == "m.room.create")
	}
	if !sawJoin || sawCreate {
		t.Errorf("senders: alice's join seen %v (want true), the room's creation seen %v (want false)", sawJoin, sawCreate)
	}
	for name, r := range e.recv {
		r.mu.Lock()
		attempts, badAuth := r.attempts, r.badAuth
		r.mu.Unlock()
		if name == "nourl" && attempts != 0 {
			t.Errorf("the appservice without url was called %d times", attempts)
		}
		if badAuth != 0 {
			t.Errorf("%s: %d requests without its hs_token", name, badAuth)
		}
	}
	// Events come in the client format, with room_id.
	for _, ev := range e.recv["users"].snapshot() {
		for _, k := range []string{"event_id", "room_id", "sender", "type", "content", "origin_server_ts"} {
			if _, ok := ev[k]; !ok {
				t.Fatalf("event without %s: %v", k, ev)
			}
		}
		if _, ok := ev["auth_events"]; ok {
			t.Fatalf("event in federation format: %v", ev)
		}
	}
}

// An appservice that is down, answers 500, answers garbage or answers
// slowly gets everything once it recovers: once each, in order, and a
// transaction ID is never reused for other content (the receiver checks).
func TestFaultsThenRecovery(t *testing.T) {
	e := newEnv(t, false, asSpec{id: "bridge", namespaces: users(`@watched_.*:as\.test`, false)})
	alice, bob := e.user("alice"), e.user("watched_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	r := e.recv["bridge"]
	var want []string
	for _, mode := range []string{modeDown, mode500, modeGarbage, modeSlow} {
		r.setMode(mode)
		want = append(want, send(t, alice, room, 5, mode)...)
		// Let it fail a few times in this mode.
		r.mu.Lock()
		before := r.attempts
		r.mu.Unlock()
		testkit.Eventually(t, 20*time.Second, func() error {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.attempts < before+2 {
				return fmt.Errorf("%d attempts in mode %s", r.attempts-before, mode)
			}
			return nil
		})
	}
	r.setMode(modeOK)
	want = append(want, send(t, alice, room, 5, "ok")...)
	waitEvents(t, r, room, want)

	// The failures show in the admin state and the metrics.
	list, err := e.client().ListAppservices(context.Background(), &appservicev1.ListAppservicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st := list.GetAppservices()[0]
	if st.GetId() != "bridge" || st.GetFailuresTotal() < 4 || st.GetAckedTxnsTotal() == 0 || st.GetSenderUserId() != "@_bridge_bot:as.test" {
		t.Fatalf("state: %v", st)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		st, err := e.client().ListAppservices(context.Background(), &appservicev1.ListAppservicesRequest{})
		if err != nil {
			return err
		}
		if a := st.GetAppservices()[0]; a.GetQueueDepth() != 0 || a.GetConsecutiveFailures() != 0 {
			return fmt.Errorf("not drained: %v", a)
		}
		return nil
	})
	metrics := get(t, "http://"+e.main.Process.MetricsAddr()+"/metrics", "")
	for _, m := range []string{`myelin_appservice_queue_depth{appservice="bridge"} 0`, `myelin_appservice_failures_total{appservice="bridge"}`,
		`myelin_appservice_oldest_pending_seconds{appservice="bridge"} 0`, `myelin_appservice_transactions_total{appservice="bridge",result="failed"}`} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	// The admin endpoint: off without the token, the list with it.
	if code := statusOf(t, e.main.URL()+"/_myelin/admin/appservices", "wrong"); code != http.StatusForbidden {
		t.Errorf("admin list with a wrong token: %d", code)
	}
	if body := get(t, e.main.URL()+"/_myelin/admin/appservices", "admin-secret"); !strings.Contains(body, `"id":"bridge"`) ||
		!strings.Contains(body, `"failures_total"`) || strings.Contains(body, "hs-bridge") {
		t.Errorf("admin list: %s", body)
	}
}

// A restart of the appservice service in the middle of a transaction
// loses nothing: the transaction goes again with its ID and content, and
// what was sent meanwhile follows in order.
func TestRestartMidTransaction(t *testing.T) {
	e := newEnv(t, true, asSpec{id: "bridge", namespaces: users(`@watched_.*:as\.test`, false)})
	alice, bob := e.user("alice"), e.user("watched_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	r := e.recv["bridge"]
	r.setMode(modeBlock)
	want := send(t, alice, room, 3, "before")
	r.mu.Lock()
	blocked := r.blocked
	r.mu.Unlock()
	select {
	case <-blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("no transaction arrived")
	}
	e.as.Stop()
	want = append(want, send(t, alice, room, 3, "while down")...)
	r.setMode(modeOK)
	e.startAppservice(e.asGRPC)
	want = append(want, send(t, alice, room, 3, "after")...)
	waitEvents(t, r, room, want)
}

// Typing and receipts reach an appservice with receive_ephemeral for a
// room its user is in; one without it gets none.
func TestEphemeral(t *testing.T) {
	e := newEnv(t, false,
		asSpec{id: "eph", namespaces: users(`@watched_.*:as\.test`, false), ephemeral: true},
		asSpec{id: "noeph", namespaces: users(`@watched_.*:as\.test`, false)},
	)
	ctx := context.Background()
	alice, bob := e.user("alice"), e.user("watched_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	msgs := send(t, alice, room, 1, "hello")
	waitEvents(t, e.recv["eph"], room, msgs)
	if _, err := alice.UserTyping(ctx, room, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, room, id.EventID(msgs[0]), event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	r := e.recv["eph"]
	testkit.Eventually(t, 20*time.Second, func() error {
		if len(r.ephemeralOf("m.typing")) == 0 || len(r.ephemeralOf("m.receipt")) == 0 {
			return fmt.Errorf("ephemeral so far: %v", r.ephemeralOf(""))
		}
		return nil
	})
	typing := r.ephemeralOf("m.typing")[0]
	if typing["room_id"] != string(room) || !strings.Contains(fmt.Sprint(typing["content"]), string(alice.UserID)) {
		t.Errorf("typing: %v", typing)
	}
	receipt := r.ephemeralOf("m.receipt")[0]
	if receipt["room_id"] != string(room) || !strings.Contains(fmt.Sprint(receipt["content"]), msgs[0]) {
		t.Errorf("receipt: %v", receipt)
	}
	// Private receipts go only to appservices whose namespaces hold their
	// owner: bob's (watched) does, alice's does not. Presence of a
	// namespaced user goes too.
	if err := alice.SendReceipt(ctx, room, id.EventID(msgs[0]), event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.SendReceipt(ctx, room, id.EventID(msgs[0]), event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "bridging"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		var bobPrivate, presence bool
		for _, rc := range r.ephemeralOf("m.receipt") {
			c := fmt.Sprint(rc["content"])
			bobPrivate = bobPrivate || (strings.Contains(c, "m.read.private") && strings.Contains(c, string(bob.UserID)))
		}
		for _, p := range r.ephemeralOf("m.presence") {
			presence = presence || (p["sender"] == string(bob.UserID) && strings.Contains(fmt.Sprint(p["content"]), "bridging"))
		}
		if !bobPrivate || !presence {
			return fmt.Errorf("bob's private receipt %v, his presence %v", bobPrivate, presence)
		}
		return nil
	})
	for _, rc := range r.ephemeralOf("m.receipt") {
		if c := fmt.Sprint(rc["content"]); strings.Contains(c, "m.read.private") && strings.Contains(c, string(alice.UserID)) {
			t.Errorf("alice's private receipt reached the appservice: %v", rc)
		}
	}
	// Another message makes sure "noeph" has had its turn.
	more := send(t, alice, room, 1, "again")
	waitEvents(t, e.recv["noeph"], room, append(msgs, more...))
	if n := len(e.recv["noeph"].ephemeralOf("")); n != 0 {
		t.Errorf("an appservice without receive_ephemeral got %d ephemeral items", n)
	}
}

// A bad registration file refuses the start, naming the file and field.
func TestBadRegistrationRefusesStart(t *testing.T) {
	dir := t.TempDir()
	cfg := newEnvConfigOnly(t)
	good := registration(t, dir, "a", "http://127.0.0.1:1", users(`@_a_.*`, true), false)
	bad := registration(t, dir, "b", "http://127.0.0.1:1", users(`@_a_.*`, true), false)
	cfg.Appservice.ConfigFiles = []string{good, bad}
	_, err := myelin.Start(context.Background(), cfg, []string{myelin.TargetAppservice}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), bad+": namespaces.users[0].regex") {
		t.Fatalf("start with overlapping exclusive namespaces: %v", err)
	}
}

func get(t testing.TB, url, token string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return string(body)
}

func statusOf(t testing.TB, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Two appservice processes: one pushes (the lock holder), the other
// stands by; when the pusher stops, the standby takes over and the
// appservice gets the rest, in order, once.
func TestStandbyTakesOver(t *testing.T) {
	e := newEnv(t, true, asSpec{id: "bridge", namespaces: users(`@watched_.*:as\.test`, false)})
	first := e.as
	e.startAppservice("127.0.0.1:0")
	second := e.as
	alice, bob := e.user("alice"), e.user("watched_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	r := e.recv["bridge"]
	want := send(t, alice, room, 3, "before")
	waitEvents(t, r, room, want)
	const sent = `myelin_appservice_transactions_total{appservice="bridge",result="sent"}`
	pushing, standby := first, second
	testkit.Eventually(t, 10*time.Second, func() error {
		switch {
		case strings.Contains(get(t, "http://"+first.Process.MetricsAddr()+"/metrics", ""), sent):
		case strings.Contains(get(t, "http://"+second.Process.MetricsAddr()+"/metrics", ""), sent):
			pushing, standby = second, first
		default:
			return errors.New("no process counted the transactions")
		}
		return nil
	})
	if strings.Contains(get(t, "http://"+standby.Process.MetricsAddr()+"/metrics", ""), sent) {
		t.Fatal("both processes pushed")
	}
	pushing.Stop()
	want = append(want, send(t, alice, room, 3, "after")...)
	waitEvents(t, r, room, want)
	// The counter goes up after the acknowledgement is recorded, which
	// may come after the appservice has the events.
	testkit.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(get(t, "http://"+standby.Process.MetricsAddr()+"/metrics", ""), sent) {
			return errors.New("the standby did not push")
		}
		return nil
	})
}

// The consuming replica and an appservice's pusher can be different
// processes: the pusher wakes on the queue's notification. Process A
// takes the pusher lock while the test holds the consumer lock (A's
// leader_retry is long, so it does not try again); process B then takes
// the consumer lock when the test lets it go.
func TestPusherInAnotherReplica(t *testing.T) {
	ctx := context.Background()
	e := newEnvConfig(t, asSpec{id: "bridge", namespaces: users(`@watched_.*:as\.test`, false)})
	hold, err := pgx.Connect(ctx, e.cfg.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close(ctx)
	if _, err := hold.Exec(ctx, `SELECT pg_advisory_lock(hashtext('myelin.appservice.consumer'))`); err != nil {
		t.Fatal(err)
	}
	e.startMain()
	slow := e.cfg
	slow.Appservice.LeaderRetry = time.Hour
	e.cfg, slow = slow, e.cfg
	e.startAppservice(e.asGRPC) // A: the pusher
	pusherProc := e.as
	testkit.Eventually(t, 10*time.Second, func() error {
		var held bool
		if err := hold.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
			AND classid::bigint = ((hashtext($1)::bigint >> 32) & 4294967295) AND objid::bigint = (hashtext($1)::bigint & 4294967295))`,
			"myelin.appservice.pusher.bridge").Scan(&held); err != nil || !held {
			return fmt.Errorf("process A does not hold the pusher lock yet (%v)", err)
		}
		return nil
	})
	e.cfg = slow
	e.startAppservice("127.0.0.1:0") // B: waits for the consumer lock
	if _, err := hold.Exec(ctx, `SELECT pg_advisory_unlock(hashtext('myelin.appservice.consumer'))`); err != nil {
		t.Fatal(err)
	}
	alice, bob := e.user("alice"), e.user("watched_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	want := send(t, alice, room, 5, "across")
	waitEvents(t, e.recv["bridge"], room, want)
	const sent = `myelin_appservice_transactions_total{appservice="bridge",result="sent"}`
	if !strings.Contains(get(t, "http://"+pusherProc.Process.MetricsAddr()+"/metrics", ""), sent) ||
		strings.Contains(get(t, "http://"+e.as.Process.MetricsAddr()+"/metrics", ""), sent) {
		t.Fatal("the pushing was not done by process A alone")
	}
}

// The interest of an appservice in a room follows the room's members and
// aliases from event to event, although the consumer keeps each room's
// interest in memory between them: a watched user's join makes the room's
// next messages go to "users", the leave stops them, and a canonical alias
// in a namespace added later makes the next ones go to "aliases".
func TestInterestFollowsRoomChanges(t *testing.T) {
	e := newEnv(t, false,
		asSpec{id: "users", namespaces: users(`@watched_.*:as\.test`, false)},
		asSpec{id: "aliases", namespaces: "  aliases:\n    - exclusive: false\n      regex: '#bridged_.*:as\\.test'"},
		asSpec{id: "all", namespaces: "  rooms:\n    - exclusive: false\n      regex: '!.*:as\\.test'"},
	)
	ctx := context.Background()
	carol, bob := e.user("carol"), e.user("watched_bob")
	room := e.room(carol, nil)
	before := send(t, carol, room, 2, "before")
	join(t, bob, room)
	during := send(t, carol, room, 2, "member")
	if _, err := bob.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	after := send(t, carol, room, 2, "left")
	alias := id.RoomAlias("#bridged_later:" + serverName)
	if _, err := carol.CreateAlias(ctx, alias, room); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.SendStateEvent(ctx, room, event.StateCanonicalAlias, "", &event.CanonicalAliasEventContent{Alias: alias}); err != nil {
		t.Fatal(err)
	}
	aliased := send(t, carol, room, 2, "aliased")

	join(t, bob, room)
	final := send(t, carol, room, 1, "final")

	// Each pusher sends its queue in order, so once an appservice has the
	// final message it had every earlier one queued for it.
	all := append(append(append(append(append([]string{}, before...), during...), after...), aliased...), final...)
	waitEvents(t, e.recv["all"], room, all)
	waitEvents(t, e.recv["users"], room, append(append([]string{}, during...), final...))
	waitEvents(t, e.recv["aliases"], room, append(append([]string{}, aliased...), final...))
}
