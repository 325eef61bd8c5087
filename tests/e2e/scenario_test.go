// Package e2e drives Myelin end to end with a real Matrix client library
// (mautrix-go) over real HTTP, in both deployment shapes.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const messageCount = 100

func TestAllInOne(t *testing.T) {
	s := allInOne(t)
	s.start(t)
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	runScenario(t, s)
}

func TestSplit(t *testing.T) {
	s := split(t)
	s.start(t)
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	runScenario(t, s)
}

// user is one registered account and the messages its /sync loop saw.
type user struct {
	cli    *mautrix.Client
	mu     sync.Mutex
	bodies []string
	since  string
}

// timelineFilter keeps the whole timeline in every sync response, so a test
// that sees `limited` knows the server dropped events on its own.
const timelineFilter = `{"room":{"timeline":{"limit":1000}}}`

func register(t *testing.T, url, name string) *user {
	t.Helper()
	cli, err := mautrix.NewClient(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "correct horse battery " + name})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return &user{cli: cli}
}

// syncLoop long-polls /sync until ctx ends, recording message bodies seen
// in room's timeline. It fails the test on a limited timeline (a gap).
func (u *user) syncLoop(ctx context.Context, t *testing.T, room id.RoomID, errs chan<- error) {
	for ctx.Err() == nil {
		resp, err := u.cli.SyncRequest(ctx, 30000, u.since, timelineFilter, false, "")
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			errs <- fmt.Errorf("%s sync: %w", u.cli.UserID, err)
			return
		}
		u.mu.Lock()
		u.since = resp.NextBatch
		if jr := resp.Rooms.Join[room]; jr != nil {
			if jr.Timeline.Limited && len(u.bodies) > 0 {
				errs <- fmt.Errorf("%s: limited timeline after %d messages", u.cli.UserID, len(u.bodies))
			}
			for _, ev := range jr.Timeline.Events {
				if ev.Type == event.EventMessage {
					u.bodies = append(u.bodies, messageBody(ev))
				}
			}
		}
		u.mu.Unlock()
	}
}

func messageBody(ev *event.Event) string {
	var c struct {
		Body string `json:"body"`
	}
	_ = json.Unmarshal(ev.Content.VeryRaw, &c)
	return c.Body
}

func (u *user) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.bodies...)
}

func runScenario(t *testing.T, s *server) {
	ctx := context.Background()
	alice := register(t, s.url, "alice")
	bob := register(t, s.url, "bob")

	// Alice creates a private room, inviting Bob, who joins.
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat", Name: "E2E", Topic: "end to end",
		Invite: []id.UserID{bob.cli.UserID}, RoomAliasName: "e2e",
	})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	room := created.RoomID

	// Bob sees the invite in /sync before joining.
	testkit.Eventually(t, 20*time.Second, func() error {
		resp, err := bob.cli.SyncRequest(ctx, 5000, bob.since, timelineFilter, false, "")
		if err != nil {
			return err
		}
		bob.since = resp.NextBatch
		if _, ok := resp.Rooms.Invite[room]; !ok {
			return errors.New("no invite yet")
		}
		return nil
	})
	if _, err := bob.cli.JoinRoomByID(ctx, room); err != nil {
		t.Fatalf("bob join: %v", err)
	}
	alias, err := bob.cli.ResolveAlias(ctx, id.RoomAlias("#e2e:localhost"))
	if err != nil || alias.RoomID != room {
		t.Fatalf("resolve alias: %v %+v", err, alias)
	}

	// Both users long-poll /sync from the current point on.
	for _, u := range []*user{alice, bob} {
		resp, err := u.cli.SyncRequest(ctx, 0, u.since, timelineFilter, false, "")
		if err != nil {
			t.Fatal(err)
		}
		u.since = resp.NextBatch
	}
	loopCtx, stopLoops := context.WithCancel(ctx)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for _, u := range []*user{alice, bob} {
		wg.Add(1)
		go func() { defer wg.Done(); u.syncLoop(loopCtx, t, room, errs) }()
	}

	// They exchange 100 messages, alternating.
	var want []string
	for i := 0; i < messageCount; i++ {
		sender := alice
		if i%2 == 1 {
			sender = bob
		}
		body := fmt.Sprintf("message %03d from %s", i, sender.cli.UserID)
		if _, err := sender.cli.SendText(ctx, room, body); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		want = append(want, body)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		for _, u := range []*user{alice, bob} {
			if got := len(u.seen()); got < messageCount {
				return fmt.Errorf("%s has %d of %d messages", u.cli.UserID, got, messageCount)
			}
		}
		return nil
	})
	stopLoops()
	wg.Wait()
	for _, u := range []*user{alice, bob} {
		assertExactly(t, u.cli.UserID.String(), u.seen(), want)
	}

	t.Run("long-poll wakes on commit", func(t *testing.T) {
		// A /sync with a long timeout returns as soon as the event commits,
		// not when the timeout ends.
		type result struct {
			resp *mautrix.RespSync
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, err := bob.cli.SyncRequest(ctx, 120000, bob.since, timelineFilter, false, "")
			done <- result{resp, err}
		}()
		time.Sleep(300 * time.Millisecond) // let the request reach its wait
		if _, err := alice.cli.SendText(ctx, room, "wake up"); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			bob.since = r.resp.NextBatch
		case <-time.After(60 * time.Second):
			t.Fatal("long-poll /sync did not wake on a new event")
		}
		want = append(want, "wake up")
	})

	t.Run("long-poll wakes on typing", func(t *testing.T) { typingWakes(t, alice, bob, room) })
	t.Run("ephemeral and presence filters", func(t *testing.T) { ephemeralFilters(t, alice, bob, room) })

	t.Run("bad input", func(t *testing.T) { badInput(t, s, alice, room) })
	t.Run("rooms and directory", func(t *testing.T) { roomsAndDirectory(t, alice.cli, bob.cli) })
	t.Run("history", func(t *testing.T) { historyScenario(t, alice.cli, bob.cli) })
	t.Run("media", func(t *testing.T) { mediaScenario(t, s, alice.cli, bob.cli) })
	t.Run("search", func(t *testing.T) { searchScenario(t, alice.cli, bob.cli) })
	t.Run("concurrent ordering", func(t *testing.T) { concurrentOrdering(t, s.url) })

	// Restart: accounts, tokens, rooms and history survive.
	s.restart(t)
	for _, u := range []*user{alice, bob} {
		who, err := u.cli.Whoami(ctx)
		if err != nil || who.UserID != u.cli.UserID {
			t.Fatalf("whoami after restart for %s: %v", u.cli.UserID, err)
		}
	}
	if got := history(t, alice.cli, room); !equal(got, want) {
		t.Fatalf("history after restart: got %d messages, want %d\nfirst got: %v", len(got), len(want), head(got))
	}
	// The old sync token still works and new events still flow.
	if _, err := bob.cli.SendText(ctx, room, "after restart"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		resp, err := alice.cli.SyncRequest(ctx, 10000, alice.since, timelineFilter, false, "")
		if err != nil {
			return err
		}
		alice.since = resp.NextBatch
		if jr := resp.Rooms.Join[room]; jr != nil {
			for _, ev := range jr.Timeline.Events {
				if ev.Type == event.EventMessage && messageBody(ev) == "after restart" {
					return nil
				}
			}
		}
		return errors.New("message sent after restart not seen yet")
	})
	// Login with the password still works after the restart.
	fresh, _ := mautrix.NewClient(s.url, "", "")
	if _, err := fresh.Login(ctx, &mautrix.ReqLogin{
		Type:       mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
		Password:   "correct horse battery alice",
	}); err != nil {
		t.Fatalf("login after restart: %v", err)
	}
}

// history pages /messages backwards from the end and returns the message
// bodies oldest first.
func history(t *testing.T, cli *mautrix.Client, room id.RoomID) []string {
	t.Helper()
	ctx := context.Background()
	var bodies []string
	from := ""
	for page := 0; page < 100; page++ {
		resp, err := cli.Messages(ctx, room, from, "", mautrix.DirectionBackward, nil, 30)
		if err != nil {
			t.Fatalf("messages: %v", err)
		}
		for _, ev := range resp.Chunk {
			if ev.Type == event.EventMessage {
				bodies = append(bodies, messageBody(ev))
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	for i, j := 0, len(bodies)-1; i < j; i, j = i+1, j-1 {
		bodies[i], bodies[j] = bodies[j], bodies[i]
	}
	return bodies
}

func assertExactly(t *testing.T, who string, got, want []string) {
	t.Helper()
	seen := map[string]int{}
	for _, b := range got {
		seen[b]++
	}
	for b, n := range seen {
		if n > 1 {
			t.Errorf("%s received %q %d times", who, b, n)
		}
	}
	if !equal(got, want) {
		t.Fatalf("%s: got %d messages, want %d, in order\nfirst got: %v", who, len(got), len(want), head(got))
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

// badInput checks that invalid requests get the spec's errors and write
// nothing.
func badInput(t *testing.T, s *server, alice *user, room id.RoomID) {
	ctx := context.Background()
	carol := register(t, s.url, "carol")
	token := alice.cli.AccessToken
	before := history(t, alice.cli, room)
	roomPath := s.url + "/_matrix/client/v3/rooms/" + string(room)

	cases := []struct {
		name, method, url, token, body string
		status                         int
		errcode                        string
	}{
		{"non-JSON createRoom", "POST", s.url + "/_matrix/client/v3/createRoom", token, `{not json`, 400, "M_NOT_JSON"},
		{"wrong type in createRoom", "POST", s.url + "/_matrix/client/v3/createRoom", token, `{"name": 5}`, 400, "M_BAD_JSON"},
		{"non-object message content", "PUT", roomPath + "/send/m.room.message/bad1", token, `["a"]`, 400, "M_BAD_JSON"},
		{"non-JSON message", "PUT", roomPath + "/send/m.room.message/bad2", token, `hello`, 400, "M_NOT_JSON"},
		{"unknown token", "PUT", roomPath + "/send/m.room.message/bad3", "myl_not_a_token", `{"msgtype":"m.text","body":"x"}`, 401, "M_UNKNOWN_TOKEN"},
		{"missing token", "GET", s.url + "/_matrix/client/v3/account/whoami", "", ``, 401, "M_MISSING_TOKEN"},
		{"send to a room the user is not in", "PUT", roomPath + "/send/m.room.message/bad4", carol.cli.AccessToken, `{"msgtype":"m.text","body":"intruder"}`, 403, "M_FORBIDDEN"},
		{"read another user's room", "GET", roomPath + "/messages?dir=b", carol.cli.AccessToken, ``, 403, "M_FORBIDDEN"},
		{"read state of another user's room", "GET", roomPath + "/state/m.room.name/", carol.cli.AccessToken, ``, 403, "M_FORBIDDEN"},
		{"set state in another user's room", "PUT", roomPath + "/state/m.room.topic/", carol.cli.AccessToken, `{"topic":"hijack"}`, 403, "M_FORBIDDEN"},
		{"register taken username", "POST", s.url + "/_matrix/client/v3/register", "", `{"username":"alice","password":"x","auth":{"type":"m.login.dummy"}}`, 400, "M_USER_IN_USE"},
		{"unknown alias", "GET", s.url + "/_matrix/client/v3/directory/room/%23nope:localhost", token, ``, 404, "M_NOT_FOUND"},
		{"unknown endpoint", "GET", s.url + "/_matrix/client/v3/no/such/thing", token, ``, 404, "M_UNRECOGNIZED"},

		// Text no store can hold (issue #19): invalid UTF-8 is not JSON;
		// U+0000 (raw in a parameter, escaped in JSON) and unpaired
		// surrogate escapes are refused before anything is stored.
		{"invalid UTF-8 in a message", "PUT", roomPath + "/send/m.room.message/utf1", token, "{\"msgtype\":\"\xff\xfe\",\"body\":\"x\"}", 400, "M_NOT_JSON"},
		{"invalid UTF-8 in state", "PUT", roomPath + "/state/m.room.topic/", token, "{\"topic\":\"\xc3\x28\"}", 400, "M_NOT_JSON"},
		{"invalid UTF-8 in an ignored createRoom field", "POST", s.url + "/_matrix/client/v3/createRoom", token, "{\"x-ignored\":\"\xff\"}", 400, "M_NOT_JSON"},
		{"invalid UTF-8 in a filter", "POST", s.url + "/_matrix/client/v3/user/" + url.PathEscape(string(alice.cli.UserID)) + "/filter", token, "{\"room\":{\"not_types\":[\"\xff\"]}}", 400, "M_NOT_JSON"},
		{"invalid UTF-8 in registration", "POST", s.url + "/_matrix/client/v3/register", "", "{\"username\":\"\xff\",\"password\":\"x\"}", 400, "M_NOT_JSON"},
		{"escaped NUL in a message", "PUT", roomPath + "/send/m.room.message/nul1", token, `{"msgtype":"m.text","body":"a\u0000b"}`, 400, "M_BAD_JSON"},
		{"escaped NUL in a displayname", "PUT", s.url + "/_matrix/client/v3/profile/" + url.PathEscape(string(alice.cli.UserID)) + "/displayname", token, `{"displayname":"x\u0000"}`, 400, "M_BAD_JSON"},
		{"escaped NUL in a login identifier", "POST", s.url + "/_matrix/client/v3/login", "", `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"a\u0000"},"password":"x"}`, 400, "M_BAD_JSON"},
		{"escaped NUL in a filter", "GET", s.url + "/_matrix/client/v3/sync?timeout=0&filter=" + url.QueryEscape(`{"room":{"timeline":{"not_types":["\u0000"]}}}`), token, ``, 400, "M_BAD_JSON"},
		{"escaped NUL in a search term", "POST", s.url + "/_matrix/client/v3/search", token, `{"search_categories":{"room_events":{"search_term":"\u0000"}}}`, 400, "M_BAD_JSON"},
		{"lone surrogate escape", "PUT", roomPath + "/send/m.room.message/sur1", token, `{"msgtype":"m.text","body":"\ud800"}`, 400, "M_BAD_JSON"},
		{"NUL in an event ID", "GET", roomPath + "/event/%24a%00b", token, ``, 400, "M_INVALID_PARAM"},
		{"NUL in a context event ID", "GET", roomPath + "/context/%24a%00b", token, ``, 400, "M_INVALID_PARAM"},
		{"NUL in a redaction target", "PUT", roomPath + "/redact/%24a%00b/red1", token, `{}`, 400, "M_INVALID_PARAM"},
		{"NUL in a relations target", "GET", s.url + "/_matrix/client/v1/rooms/" + string(room) + "/relations/%24a%00b", token, ``, 400, "M_INVALID_PARAM"},
		{"NUL in a reported event ID", "POST", roomPath + "/report/%24a%00b", token, `{"reason":"x"}`, 400, "M_INVALID_PARAM"},
		{"NUL in a transaction ID", "PUT", roomPath + "/send/m.room.message/t%00x", token, `{"msgtype":"m.text","body":"x"}`, 400, "M_INVALID_PARAM"},
		{"NUL in an event type", "PUT", roomPath + "/send/m.room.mess%00age/t2", token, `{"msgtype":"m.text","body":"x"}`, 400, "M_INVALID_PARAM"},
		{"NUL in a state key", "PUT", roomPath + "/state/m.room.topic/a%00b", token, `{"topic":"x"}`, 400, "M_INVALID_PARAM"},
		{"invalid UTF-8 in a path parameter", "GET", roomPath + "/event/%24%FF", token, ``, 400, "M_INVALID_PARAM"},
		{"a second m.room.create", "PUT", roomPath + "/state/m.room.create/", token, `{}`, 400, "M_BAD_JSON"},
		{"an event over 65,536 bytes", "PUT", roomPath + "/send/m.room.message/big1", token, `{"msgtype":"m.text","body":"` + strings.Repeat("x", 70000) + `"}`, 413, "M_TOO_LARGE"},
		{"a state event over 65,536 bytes", "PUT", roomPath + "/state/m.room.topic/", token, `{"topic":"` + strings.Repeat("x", 70000) + `"}`, 413, "M_TOO_LARGE"},
		{"a filter naming a non-room", "POST", s.url + "/_matrix/client/v3/user/" + url.PathEscape(string(alice.cli.UserID)) + "/filter", token, `{"room":{"rooms":["not-a-room"]}}`, 400, "M_BAD_JSON"},
		{"a filter naming a non-user", "POST", s.url + "/_matrix/client/v3/user/" + url.PathEscape(string(alice.cli.UserID)) + "/filter", token, `{"room":{"timeline":{"senders":["bob"]}}}`, 400, "M_BAD_JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := do(t, c.method, c.url, c.token, []byte(c.body))
			var e struct {
				ErrCode string `json:"errcode"`
				Error   string `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("body is not a Matrix error: %s", body)
			}
			if status != c.status || e.ErrCode != c.errcode {
				t.Fatalf("got %d %s (%s), want %d %s", status, e.ErrCode, e.Error, c.status, c.errcode)
			}
		})
	}
	// Nothing was written: the room's history and Alice's room list are
	// unchanged, and the intruder's message is nowhere.
	after := history(t, alice.cli, room)
	if !equal(before, after) {
		t.Fatalf("history changed by rejected requests: before %d, after %d", len(before), len(after))
	}
	joined, err := alice.cli.JoinedRooms(ctx)
	if err == nil && len(joined.JoinedRooms) != 1 {
		t.Fatalf("rejected createRoom calls created rooms: %v", joined.JoinedRooms)
	}
	if err != nil && !strings.Contains(err.Error(), "M_UNRECOGNIZED") {
		t.Fatalf("joined_rooms: %v", err)
	}
	_ = http.StatusOK
}
