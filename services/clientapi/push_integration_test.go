package clientapi_test

// Push rules, notification counts, /notifications and pushers through real
// HTTP with mautrix-go, against the whole process (every service,
// including the presence service that owns receipts) on real PostgreSQL
// and NATS, with a push gateway the test runs (net/http/httptest).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

var mMissingParam = mautrix.RespError{ErrCode: "M_MISSING_PARAM", StatusCode: http.StatusBadRequest}

// startPushStack runs every service in one process, with push retries
// fast enough for a test (1 ms backoff, 4 attempts).
func startPushStack(t *testing.T) string {
	t.Helper()
	return startPushStackWith(t, nil)
}

// startPushStackWith is startPushStack with its configuration changed by
// edit.
func startPushStackWith(t *testing.T, edit func(*myelin.Config)) string {
	t.Helper()
	cfg := myelin.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Database.URL = testkit.Postgres(t)
	cfg.NATS.URL = testkit.NATS(t)
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.ClientAPI.Push.InitialBackoff = time.Millisecond
	cfg.ClientAPI.Push.MaxBackoff = 4 * time.Millisecond
	cfg.ClientAPI.Push.MaxAttempts = 4
	if edit != nil {
		edit(&cfg)
	}
	return stack.StartWithConfig(t, cfg).URL()
}

// gateway is a push gateway: it records every /notify request, answers
// 500 to the first request for failOnce's pushkey and rejects rejectKey.
type gateway struct {
	srv       *httptest.Server
	mu        sync.Mutex
	requests  []gatewayRequest
	failOnce  string
	failed    bool
	rejectKey string
}

type gatewayRequest struct {
	status int
	body   map[string]any
}

func newGateway(t *testing.T, failOnce, rejectKey string) *gateway {
	g := &gateway{failOnce: failOnce, rejectKey: rejectKey}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		if r.Method != http.MethodPost || r.URL.Path != "/_matrix/push/v1/notify" || json.Unmarshal(raw, &body) != nil {
			t.Errorf("gateway: bad request %s %s %s", r.Method, r.URL.Path, raw)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		key := pushkeyOf(body)
		g.mu.Lock()
		defer g.mu.Unlock()
		switch {
		case key == g.failOnce && !g.failed:
			g.failed = true
			g.requests = append(g.requests, gatewayRequest{status: 500, body: body})
			w.WriteHeader(http.StatusInternalServerError)
			return
		case key == g.rejectKey:
			g.requests = append(g.requests, gatewayRequest{status: 200, body: body})
			_, _ = w.Write([]byte(`{"rejected":["` + key + `"]}`))
			return
		}
		g.requests = append(g.requests, gatewayRequest{status: 200, body: body})
		_, _ = w.Write([]byte(`{"rejected":[]}`))
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) url() string { return g.srv.URL + "/_matrix/push/v1/notify" }

func pushkeyOf(body map[string]any) string {
	n, _ := body["notification"].(map[string]any)
	devs, _ := n["devices"].([]any)
	if len(devs) != 1 {
		return ""
	}
	d, _ := devs[0].(map[string]any)
	k, _ := d["pushkey"].(string)
	return k
}

// delivered returns the notification bodies the gateway accepted for a pushkey.
func (g *gateway) delivered(key string) []map[string]any {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []map[string]any
	for _, r := range g.requests {
		if r.status == 200 && pushkeyOf(r.body) == key {
			out = append(out, r.body["notification"].(map[string]any))
		}
	}
	return out
}

func (g *gateway) statuses(key string) []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []int
	for _, r := range g.requests {
		if pushkeyOf(r.body) == key {
			out = append(out, r.status)
		}
	}
	return out
}

// rawSyncer follows one user's /sync as plain JSON (unread counts by thread).
type rawSyncer struct {
	t      *testing.T
	cli    *mautrix.Client
	since  string
	filter string
}

func (s *rawSyncer) sync() map[string]any {
	s.t.Helper()
	q := map[string]string{"timeout": "5000"}
	if s.since != "" {
		q["since"] = s.since
	}
	if s.filter != "" {
		q["filter"] = s.filter
	}
	var resp map[string]any
	u := s.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q)
	_, err := s.cli.MakeRequest(context.Background(), http.MethodGet, u, nil, &resp)
	must(s.t, "sync", err)
	s.since = resp["next_batch"].(string)
	return resp
}

// untilRoom syncs until the room appears with fields satisfying cond.
func (s *rawSyncer) untilRoom(roomID id.RoomID, what string, cond func(jr map[string]any) error) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		resp := s.sync()
		join, _ := resp["rooms"].(map[string]any)["join"].(map[string]any)
		if jr, ok := join[roomID.String()].(map[string]any); ok {
			if last = cond(jr); last == nil {
				return jr
			}
		}
	}
	s.t.Fatalf("%s: not seen in /sync: %v", what, last)
	return nil
}

func unread(jr map[string]any) (notify, highlight int) {
	u, _ := jr["unread_notifications"].(map[string]any)
	n, _ := u["notification_count"].(float64)
	h, _ := u["highlight_count"].(float64)
	return int(n), int(h)
}

func wantCounts(notify, highlight int) func(map[string]any) error {
	return func(jr map[string]any) error {
		if n, h := unread(jr); n != notify || h != highlight {
			return fmt.Errorf("counts %d/%d, want %d/%d", n, h, notify, highlight)
		}
		return nil
	}
}

func sendContent(t *testing.T, cli *mautrix.Client, roomID id.RoomID, content map[string]any) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.EventMessage, content)
	must(t, "send", err)
	return resp.EventID
}

func text(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }

type notificationsResp struct {
	NextToken     string `json:"next_token"`
	Notifications []struct {
		Actions []any          `json:"actions"`
		Event   map[string]any `json:"event"`
		Read    bool           `json:"read"`
		RoomID  string         `json:"room_id"`
		TS      int64          `json:"ts"`
	} `json:"notifications"`
}

func getNotifications(t *testing.T, cli *mautrix.Client, q map[string]string) notificationsResp {
	t.Helper()
	var out notificationsResp
	u := cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "notifications"}, q)
	_, err := cli.MakeRequest(context.Background(), http.MethodGet, u, nil, &out)
	must(t, "notifications", err)
	return out
}

// getPushers is GET /pushers (mautrix v0.31.0's GetPushers sends POST,
// which the spec does not define).
func getPushers(t *testing.T, cli *mautrix.Client) (*mautrix.RespPushers, error) {
	t.Helper()
	var out mautrix.RespPushers
	err := raw(t, cli, http.MethodGet, nil, &out, "pushers")
	return &out, err
}

func setPusher(t *testing.T, cli *mautrix.Client, p map[string]any) error {
	t.Helper()
	return raw(t, cli, http.MethodPost, p, nil, "pushers", "set")
}

func httpPusher(key, gatewayURL string, extra map[string]any) map[string]any {
	data := map[string]any{"url": gatewayURL}
	for k, v := range extra {
		data[k] = v
	}
	return map[string]any{
		"kind": "http", "app_id": "org.example.app", "pushkey": key, "app_display_name": "Example",
		"device_display_name": "Phone", "lang": "en", "data": data,
	}
}

func TestPushCountsNotificationsAndGateway(t *testing.T) {
	hs := startPushStack(t)
	ctx := context.Background()
	alice, bob := newUser(t, hs, "alice"), newUser(t, hs, "bob")
	gw := newGateway(t, "bob-full", "bob-stale")
	must(t, "display name", alice.SetDisplayName(ctx, "Alice A"))

	roomID := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Lunch room", "invite": []string{bob.UserID.String()}})
	_, err := bob.JoinRoomByID(ctx, roomID)
	must(t, "join", err)

	bs := &rawSyncer{t: t, cli: bob}
	initial := bs.sync()
	if _, ok := initial["rooms"].(map[string]any)["join"].(map[string]any)[roomID.String()]; !ok {
		bs.untilRoom(roomID, "joined room", func(map[string]any) error { return nil })
	}
	// Pushers start after the newest notification (here bob's invite,
	// which his join has read).
	must(t, "full pusher", setPusher(t, bob, httpPusher("bob-full", gw.url(), map[string]any{"custom": "x"})))
	must(t, "id-only pusher", setPusher(t, bob, httpPusher("bob-ids", gw.url(), map[string]any{"format": "event_id_only"})))
	must(t, "stale pusher", setPusher(t, bob, httpPusher("bob-stale", gw.url(), nil)))
	pushers, err := getPushers(t, bob)
	must(t, "get pushers", err)
	if len(pushers.Pushers) != 3 || pushers.Pushers[0].Data.URL() != gw.url() {
		t.Fatalf("pushers %+v", pushers.Pushers)
	}

	var rules map[string]any
	for _, ev := range initial["account_data"].(map[string]any)["events"].([]any) {
		if e := ev.(map[string]any); e["type"] == "m.push_rules" {
			rules = e["content"].(map[string]any)
		}
	}
	if over, _ := rules["global"].(map[string]any)["override"].([]any); len(over) == 0 {
		t.Fatalf("initial sync has no m.push_rules: %v", initial["account_data"])
	}

	// Three messages in a two-member room: each notifies (room_one_to_one),
	// and every /sync carrying them has the count of those seen so far.
	var msgs []id.EventID
	for i := range 3 {
		msgs = append(msgs, sendContent(t, alice, roomID, text(fmt.Sprintf("message %d", i))))
	}
	seen := 0
	bs.untilRoom(roomID, "three notifications", func(jr map[string]any) error {
		for _, ev := range jr["timeline"].(map[string]any)["events"].([]any) {
			if e := ev.(map[string]any); e["type"] == "m.room.message" && e["sender"] == alice.UserID.String() {
				seen++
			}
		}
		if n, _ := unread(jr); n != seen {
			t.Fatalf("/sync shows %d messages but a count of %d", seen, n)
		}
		return wantCounts(3, 0)(jr)
	})

	// The gateway got each notification once per pusher; the first request
	// for bob-full failed (500) and was retried.
	testkit.Eventually(t, 20*time.Second, func() error {
		if n := len(gw.delivered("bob-full")); n != 3 {
			return fmt.Errorf("bob-full got %d notifications", n)
		}
		if n := len(gw.delivered("bob-ids")); n != 3 {
			return fmt.Errorf("bob-ids got %d notifications", n)
		}
		return nil
	})
	if st := gw.statuses("bob-full"); len(st) != 4 || st[0] != 500 {
		t.Fatalf("bob-full request statuses %v, want a 500 then 3 successes", st)
	}
	full := gw.delivered("bob-full")
	for i, n := range full {
		if n["event_id"] != msgs[i].String() {
			t.Fatalf("notification %d is for %v, want %s", i, n["event_id"], msgs[i])
		}
	}
	n := full[0]
	dev := n["devices"].([]any)[0].(map[string]any)
	content, _ := n["content"].(map[string]any)
	checks := map[string]bool{
		"room_id":             n["room_id"] == roomID.String(),
		"type":                n["type"] == "m.room.message",
		"sender":              n["sender"] == alice.UserID.String(),
		"sender_display_name": n["sender_display_name"] == "Alice A",
		"room_name":           n["room_name"] == "Lunch room",
		"content":             content["body"] == "message 0",
		"prio":                n["prio"] == "high",                                   // room_one_to_one sets a sound
		"counts":              n["counts"].(map[string]any)["unread"].(float64) >= 1, // at send time: 1 to 3
		"app_id":              dev["app_id"] == "org.example.app",
		"pushkey":             dev["pushkey"] == "bob-full",
		"pushkey_ts":          dev["pushkey_ts"].(float64) > 0,
		"data without url":    fmt.Sprint(dev["data"]) == "map[custom:x]",
		"tweaks":              fmt.Sprint(dev["tweaks"]) == "map[sound:default]",
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("full notification: bad %s: %v", name, n)
		}
	}
	ids := gw.delivered("bob-ids")[2]
	for _, absent := range []string{"type", "sender", "content", "room_name", "sender_display_name"} {
		if _, ok := ids[absent]; ok {
			t.Errorf("event_id_only notification has %s: %v", absent, ids)
		}
	}
	if ids["event_id"] != msgs[2].String() || ids["room_id"] != roomID.String() || ids["counts"].(map[string]any)["unread"] != float64(3) {
		t.Errorf("event_id_only notification %v", ids)
	}
	// The gateway rejected bob-stale: its pusher is gone.
	testkit.Eventually(t, 20*time.Second, func() error {
		p, err := getPushers(t, bob)
		if err != nil {
			return err
		}
		for _, x := range p.Pushers {
			if x.PushKey == "bob-stale" {
				return fmt.Errorf("rejected pusher still there")
			}
		}
		return nil
	})
	if n := len(gw.statuses("bob-stale")); n != 1 {
		t.Fatalf("rejected pushkey got %d requests, want 1", n)
	}

	// Reading the last message resets the count.
	must(t, "receipt", bob.SendReceipt(ctx, roomID, msgs[2], event.ReceiptTypeRead, nil))
	bs.untilRoom(roomID, "count after receipt", wantCounts(0, 0))

	// A mention highlights.
	mention := sendContent(t, alice, roomID, map[string]any{"msgtype": "m.text", "body": "bob!",
		"m.mentions": map[string]any{"user_ids": []string{bob.UserID.String()}}})
	bs.untilRoom(roomID, "mention", wantCounts(1, 1))
	// bob's own message reads up to it.
	sendContent(t, bob, roomID, text("on my way"))
	bs.untilRoom(roomID, "count after own message", wantCounts(0, 0))
	// ... and alice, who read nothing, has one notification for it.
	as := &rawSyncer{t: t, cli: alice}
	as.untilRoom(roomID, "alice's count", wantCounts(1, 0))

	// /notifications: newest first, read flags, only=highlight, paging.
	// The oldest is bob's invite (.m.rule.invite_for_me), read by his join.
	all := getNotifications(t, bob, nil)
	if len(all.Notifications) != 5 || all.Notifications[4].Event["type"] != "m.room.member" || all.Notifications[0].Event["event_id"] != mention.String() || all.NextToken != "" {
		t.Fatalf("notifications %+v", all)
	}
	for _, x := range all.Notifications {
		if !x.Read || x.RoomID != roomID.String() || x.TS <= 0 || len(x.Actions) == 0 {
			t.Fatalf("notification %+v", x)
		}
	}
	hl := getNotifications(t, bob, map[string]string{"only": "highlight"})
	if len(hl.Notifications) != 1 || hl.Notifications[0].Event["event_id"] != mention.String() {
		t.Fatalf("highlights %+v", hl)
	}
	page1 := getNotifications(t, bob, map[string]string{"limit": "3"})
	page2 := getNotifications(t, bob, map[string]string{"limit": "3", "from": page1.NextToken})
	if len(page1.Notifications) != 3 || page1.NextToken == "" || len(page2.Notifications) != 2 ||
		page2.Notifications[0].Event["event_id"] != msgs[0].String() || page2.NextToken != "" {
		t.Fatalf("pages %+v / %+v", page1, page2)
	}
	unreadAlice := getNotifications(t, alice, nil)
	if len(unreadAlice.Notifications) != 1 || unreadAlice.Notifications[0].Read {
		t.Fatalf("alice's notifications %+v", unreadAlice)
	}

	// Threads: a root and two replies. With unread_thread_notifications
	// the replies count under their thread, the root in the main timeline.
	root := sendContent(t, alice, roomID, text("thread root"))
	var replies []id.EventID
	for i := range 2 {
		c := text(fmt.Sprintf("reply %d", i))
		c["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": root.String()}
		replies = append(replies, sendContent(t, alice, roomID, c))
	}
	threadCounts := func(jr map[string]any) (int, int) {
		th, _ := jr["unread_thread_notifications"].(map[string]any)[root.String()].(map[string]any)
		n, _ := th["notification_count"].(float64)
		return len(jr["unread_thread_notifications"].(map[string]any)), int(n)
	}
	ts := &rawSyncer{t: t, cli: bob, filter: `{"room":{"timeline":{"unread_thread_notifications":true}}}`}
	ts.untilRoom(roomID, "thread counts", func(jr map[string]any) error {
		main, _ := unread(jr)
		if _, ok := jr["unread_thread_notifications"].(map[string]any); !ok {
			return fmt.Errorf("no unread_thread_notifications")
		}
		if threads, n := threadCounts(jr); main != 1 || threads != 1 || n != 2 {
			return fmt.Errorf("main %d, %d threads, thread count %d", main, threads, n)
		}
		return nil
	})
	bs.untilRoom(roomID, "room total without the filter option", wantCounts(3, 0))
	// A threaded receipt reads only its thread.
	must(t, "thread receipt", bob.SendReceipt(ctx, roomID, replies[1], event.ReceiptTypeRead, &mautrix.ReqSendReceipt{ThreadID: root.String()}))
	ts.untilRoom(roomID, "thread read", func(jr map[string]any) error {
		if main, _ := unread(jr); main != 1 || jr["unread_thread_notifications"] != nil {
			return fmt.Errorf("main %d, threads %v", main, jr["unread_thread_notifications"])
		}
		return nil
	})
	// A private receipt on the main timeline reads the root.
	must(t, "main receipt", bob.SendReceipt(ctx, roomID, root, event.ReceiptTypeReadPrivate, &mautrix.ReqSendReceipt{ThreadID: "main"}))
	bs.untilRoom(roomID, "all read", wantCounts(0, 0))

	// A sender rule with no actions silences alice (checked once bob's
	// /sync has the message, so it was evaluated); deleting the rule
	// restores notifications.
	must(t, "sender rule", bob.PutPushRule(ctx, "global", pushrules.SenderRule, alice.UserID.String(),
		&mautrix.ReqPutPushRule{Actions: []*pushrules.PushAction{}}))
	silenced := sendContent(t, alice, roomID, text("silenced"))
	bs.untilRoom(roomID, "silenced message", func(jr map[string]any) error {
		for _, ev := range jr["timeline"].(map[string]any)["events"].([]any) {
			if ev.(map[string]any)["event_id"] == silenced.String() {
				if n, h := unread(jr); n != 0 || h != 0 {
					t.Fatalf("silenced message counted: %d/%d", n, h)
				}
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	must(t, "delete sender rule", bob.DeletePushRule(ctx, "global", pushrules.SenderRule, alice.UserID.String()))
	loud := sendContent(t, alice, roomID, text("loud"))
	bs.untilRoom(roomID, "only the second message notifies", wantCounts(1, 0))
	latest := getNotifications(t, bob, map[string]string{"limit": "2"})
	if latest.Notifications[0].Event["event_id"] != loud.String() || latest.Notifications[1].Event["event_id"] == silenced.String() {
		t.Fatalf("notifications after the sender rule %+v", latest)
	}
}

func TestPushRulesAPI(t *testing.T) {
	hs := startPushStack(t)
	ctx := context.Background()
	alice, bob := newUser(t, hs, "alice"), newUser(t, hs, "bob")
	notify := []*pushrules.PushAction{{Action: pushrules.ActionNotify}}

	rs, err := alice.GetPushRules(ctx)
	must(t, "get rules", err)
	if len(rs.Override) != 10 || rs.Override[0].RuleID != ".m.rule.master" || rs.Override[0].Enabled ||
		len(rs.Underride) != 5 || rs.Underride[4].RuleID != ".m.rule.encrypted" {
		t.Fatalf("default rules %+v", rs)
	}
	var all struct {
		Global map[string][]map[string]any `json:"global"`
	}
	must(t, "GET /pushrules/", raw(t, alice, http.MethodGet, nil, &all, "pushrules", ""))
	if len(all.Global["override"]) != 10 || all.Global["content"] == nil {
		t.Fatalf("GET /pushrules/ %+v", all)
	}

	as := &rawSyncer{t: t, cli: alice}
	as.sync()

	// Ordering of user rules: new rules go first, before/after place them.
	must(t, "put cake", alice.PutPushRule(ctx, "global", pushrules.ContentRule, "cake", &mautrix.ReqPutPushRule{Actions: notify, Pattern: "cake*lie"}))
	// The change reaches /sync as m.push_rules account data.
	if resp := as.sync(); !strings.Contains(fmt.Sprint(resp["account_data"]), "cake*lie") {
		t.Fatalf("incremental sync after a rule change: %v", resp["account_data"])
	}
	must(t, "put first", alice.PutPushRule(ctx, "global", pushrules.ContentRule, "first", &mautrix.ReqPutPushRule{Actions: notify, Pattern: "a"}))
	must(t, "put last", alice.PutPushRule(ctx, "global", pushrules.ContentRule, "last", &mautrix.ReqPutPushRule{Actions: notify, Pattern: "b", After: "cake"}))
	must(t, "put middle", alice.PutPushRule(ctx, "global", pushrules.ContentRule, "middle", &mautrix.ReqPutPushRule{Actions: notify, Pattern: "c", Before: "cake"}))
	rs, err = alice.GetPushRules(ctx)
	must(t, "get rules", err)
	var order []string
	for _, r := range rs.Content {
		order = append(order, r.RuleID)
	}
	if !slices.Equal(order, []string{"first", "middle", "cake", "last"}) {
		t.Fatalf("content rule order %v", order)
	}
	rule, err := alice.GetPushRule(ctx, "global", pushrules.ContentRule, "cake")
	must(t, "get cake", err)
	if rule.Pattern != "cake*lie" || !rule.Enabled || rule.Default || len(rule.Actions) != 1 {
		t.Fatalf("cake rule %+v", rule)
	}
	// Override rules with conditions; master stays first.
	must(t, "put override", alice.PutPushRule(ctx, "global", pushrules.OverrideRule, "quiet-topic", &mautrix.ReqPutPushRule{
		Actions:    []*pushrules.PushAction{},
		Conditions: []*pushrules.PushCondition{{Kind: pushrules.KindEventMatch, Key: "type", Pattern: "m.room.topic"}},
	}))
	rs, err = alice.GetPushRules(ctx)
	must(t, "get rules", err)
	if rs.Override[0].RuleID != ".m.rule.master" || rs.Override[1].RuleID != "quiet-topic" || len(rs.Override[1].Conditions) != 1 {
		t.Fatalf("override order %v, %v", rs.Override[0].RuleID, rs.Override[1].RuleID)
	}

	// enabled and actions, on a default rule too.
	must(t, "enable master", alice.SetPushRuleEnabled(ctx, "global", pushrules.OverrideRule, ".m.rule.master", true))
	var enabled struct {
		Enabled bool `json:"enabled"`
	}
	must(t, "get enabled", raw(t, alice, http.MethodGet, nil, &enabled, "pushrules", "global", "override", ".m.rule.master", "enabled"))
	if !enabled.Enabled {
		t.Fatal("master rule not enabled")
	}
	must(t, "set actions", alice.PutPushRuleActions(ctx, "global", pushrules.UnderrideRule, ".m.rule.message",
		[]*pushrules.PushAction{{Action: pushrules.ActionNotify}, {Action: pushrules.ActionSetTweak, Tweak: pushrules.TweakSound, Value: "bing"}}))
	var acts struct {
		Actions []any `json:"actions"`
	}
	must(t, "get actions", raw(t, alice, http.MethodGet, nil, &acts, "pushrules", "global", "underride", ".m.rule.message", "actions"))
	if fmt.Sprint(acts.Actions) != "[notify map[set_tweak:sound value:bing]]" {
		t.Fatalf("actions %v", acts.Actions)
	}
	// The historical "dont_notify" reads back as given (issue #19); the
	// evaluation ignores it.
	must(t, "set dont_notify", raw(t, alice, http.MethodPut, map[string]any{"actions": []string{"dont_notify"}}, nil, "pushrules", "global", "override", "hush"))
	must(t, "get dont_notify", raw(t, alice, http.MethodGet, nil, &acts, "pushrules", "global", "override", "hush", "actions"))
	if fmt.Sprint(acts.Actions) != "[dont_notify]" {
		t.Fatalf("dont_notify rule reads back %v", acts.Actions)
	}
	must(t, "delete dont_notify", raw(t, alice, http.MethodDelete, nil, nil, "pushrules", "global", "override", "hush"))
	// The change is in alice's m.push_rules account data, not bob's.
	var ad map[string]any
	must(t, "account data", raw(t, alice, http.MethodGet, nil, &ad, "user", alice.UserID, "account_data", "m.push_rules"))
	if !strings.Contains(fmt.Sprint(ad), "cake*lie") {
		t.Fatalf("m.push_rules account data %v", ad)
	}

	// Errors.
	errCases := []struct {
		name   string
		method string
		body   any
		path   []any
		want   mautrix.RespError
	}{
		{"dot rule ID", http.MethodPut, map[string]any{"actions": []string{}}, []any{"pushrules", "global", "override", ".mine"}, mautrix.MInvalidParam},
		{"slash in rule ID", http.MethodPut, map[string]any{"actions": []string{}}, []any{"pushrules", "global", "override", "a/b"}, mautrix.MInvalidParam},
		{"unknown kind", http.MethodPut, map[string]any{"actions": []string{}}, []any{"pushrules", "global", "weird", "x"}, mautrix.MInvalidParam},
		{"unknown scope", http.MethodGet, nil, []any{"pushrules", "device", "override", "x"}, mautrix.MInvalidParam},
		{"unknown action", http.MethodPut, map[string]any{"actions": []string{"blink"}}, []any{"pushrules", "global", "override", "x"}, mautrix.MInvalidParam},
		{"missing actions", http.MethodPut, map[string]any{}, []any{"pushrules", "global", "override", "x"}, mMissingParam},
		{"content without pattern", http.MethodPut, map[string]any{"actions": []string{}}, []any{"pushrules", "global", "content", "x"}, mMissingParam},
		{"room rule for a non-room", http.MethodPut, map[string]any{"actions": []string{}}, []any{"pushrules", "global", "room", "x"}, mautrix.MInvalidParam},
		{"delete a default rule", http.MethodDelete, nil, []any{"pushrules", "global", "override", ".m.rule.master"}, mautrix.MInvalidParam},
		{"get unknown rule", http.MethodGet, nil, []any{"pushrules", "global", "override", "nope"}, mautrix.MNotFound},
		{"delete unknown rule", http.MethodDelete, nil, []any{"pushrules", "global", "override", "nope"}, mautrix.MNotFound},
		{"enable unknown rule", http.MethodPut, map[string]any{"enabled": true}, []any{"pushrules", "global", "override", "nope", "enabled"}, mautrix.MNotFound},
		{"enabled missing", http.MethodPut, map[string]any{}, []any{"pushrules", "global", "override", ".m.rule.master", "enabled"}, mMissingParam},
		{"write m.push_rules as account data", http.MethodPut, map[string]any{}, []any{"user", alice.UserID, "account_data", "m.push_rules"}, mautrix.MBadJSON},
	}
	for _, c := range errCases {
		t.Run(c.name, func(t *testing.T) {
			wantErr(t, c.name, raw(t, alice, c.method, c.body, nil, c.path...), c.want)
		})
	}
	err = alice.PutPushRule(ctx, "global", pushrules.ContentRule, "x", &mautrix.ReqPutPushRule{Actions: notify, Pattern: "x", Before: "nope"})
	var re mautrix.HTTPError
	if !errors.As(err, &re) || re.RespError == nil || re.RespError.ErrCode != "M_UNKNOWN" || re.Response.StatusCode != 400 {
		t.Fatalf("before an unknown rule: %v", err)
	}
	wantErr(t, "relative to a default rule", alice.PutPushRule(ctx, "global", pushrules.OverrideRule, "x",
		&mautrix.ReqPutPushRule{Actions: notify, After: ".m.rule.master"}), mautrix.MInvalidParam)

	// Another user's rules and pushers are not reachable.
	_, err = bob.GetPushRule(ctx, "global", pushrules.ContentRule, "cake")
	wantErr(t, "bob reads alice's rule", err, mautrix.MNotFound)
	wantErr(t, "bob reads alice's m.push_rules", raw(t, bob, http.MethodGet, nil, nil, "user", alice.UserID, "account_data", "m.push_rules"), mautrix.MForbidden)
	rsBob, err := bob.GetPushRules(ctx)
	must(t, "bob's rules", err)
	if len(rsBob.Content) != 0 || rsBob.Override[0].Enabled {
		t.Fatalf("bob sees alice's rules: %+v", rsBob)
	}
	// Concurrent changes are not lost (each is a read-modify-write).
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := bob.PutPushRule(ctx, "global", pushrules.ContentRule, fmt.Sprintf("c%d", i),
				&mautrix.ReqPutPushRule{Actions: notify, Pattern: "p"}); err != nil {
				t.Errorf("concurrent put %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	rsBob, err = bob.GetPushRules(ctx)
	must(t, "bob's rules", err)
	if len(rsBob.Content) != 8 {
		t.Fatalf("after 8 concurrent puts bob has %d content rules", len(rsBob.Content))
	}
	must(t, "delete cake", alice.DeletePushRule(ctx, "global", pushrules.ContentRule, "cake"))
	_, err = alice.GetPushRule(ctx, "global", pushrules.ContentRule, "cake")
	wantErr(t, "deleted rule", err, mautrix.MNotFound)

	// Pushers: validation, per-user lists, kind null deletes, append.
	gwURL := "https://push.example.test/_matrix/push/v1/notify"
	bad := []struct {
		name string
		mod  func(p map[string]any)
		want mautrix.RespError
	}{
		{"missing lang", func(p map[string]any) { delete(p, "lang") }, mMissingParam},
		{"missing pushkey", func(p map[string]any) { delete(p, "pushkey") }, mMissingParam},
		{"missing url", func(p map[string]any) { p["data"] = map[string]any{} }, mMissingParam},
		{"wrong url path", func(p map[string]any) { p["data"] = map[string]any{"url": "https://push.example.test/notify"} }, mautrix.MInvalidParam},
		{"email kind", func(p map[string]any) { p["kind"] = "email" }, mautrix.MInvalidParam},
		{"long app_id", func(p map[string]any) { p["app_id"] = strings.Repeat("a", 65) }, mautrix.MInvalidParam},
		{"long pushkey", func(p map[string]any) { p["pushkey"] = strings.Repeat("k", 513) }, mautrix.MInvalidParam},
	}
	for _, c := range bad {
		p := httpPusher("k", gwURL, nil)
		c.mod(p)
		wantErr(t, c.name, setPusher(t, alice, p), c.want)
	}
	must(t, "alice pusher", setPusher(t, alice, httpPusher("shared", gwURL, nil)))
	if p, _ := getPushers(t, bob); len(p.Pushers) != 0 {
		t.Fatalf("bob sees pushers %+v", p.Pushers)
	}
	// bob takes the same app ID and pushkey without append: alice's goes.
	must(t, "bob pusher", setPusher(t, bob, httpPusher("shared", gwURL, nil)))
	if p, _ := getPushers(t, alice); len(p.Pushers) != 0 {
		t.Fatalf("alice's pusher survived bob's: %+v", p.Pushers)
	}
	withAppend := httpPusher("shared", gwURL, nil)
	withAppend["append"] = true
	must(t, "alice appends", setPusher(t, alice, withAppend))
	pa, _ := getPushers(t, alice)
	pb, _ := getPushers(t, bob)
	if len(pa.Pushers) != 1 || len(pb.Pushers) != 1 || pa.Pushers[0].AppDisplayName != "Example" || pa.Pushers[0].Language != "en" {
		t.Fatalf("after append: alice %+v bob %+v", pa.Pushers, pb.Pushers)
	}
	// Updating keeps one pusher; kind null deletes it.
	upd := httpPusher("shared", gwURL, nil)
	upd["device_display_name"] = "Tablet"
	upd["append"] = true
	must(t, "update", setPusher(t, alice, upd))
	pa, _ = getPushers(t, alice)
	if len(pa.Pushers) != 1 || pa.Pushers[0].DeviceDisplayName != "Tablet" {
		t.Fatalf("after update %+v", pa.Pushers)
	}
	must(t, "delete", setPusher(t, alice, map[string]any{"kind": nil, "app_id": "org.example.app", "pushkey": "shared"}))
	pa, _ = getPushers(t, alice)
	pb, _ = getPushers(t, bob)
	if len(pa.Pushers) != 0 || len(pb.Pushers) != 1 {
		t.Fatalf("after delete: alice %+v bob %+v", pa.Pushers, pb.Pushers)
	}
}

// A pusher belongs to the device that set it last and goes with it: after
// a logout, a password change that logs out the other devices, or a
// logout of every device, the gone devices' phones get no more pushes.
func TestPushersGoWithTheirDevice(t *testing.T) {
	hs := startPushStack(t)
	ctx := context.Background()
	gw := newGateway(t, "", "")
	main := newUser(t, hs, "carol")
	login := func() *mautrix.Client {
		t.Helper()
		cli, err := mautrix.NewClient(hs, "", "")
		must(t, "client", err)
		_, err = cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Password: "pw-carol", StoreCredentials: true,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "carol"}})
		must(t, "login", err)
		return cli
	}
	phone, laptop := login(), login()
	must(t, "main pusher", setPusher(t, main, httpPusher("k-main", gw.url(), nil)))
	must(t, "phone pusher", setPusher(t, phone, httpPusher("k-phone", gw.url(), nil)))
	must(t, "laptop pusher", setPusher(t, laptop, httpPusher("k-laptop", gw.url(), nil)))
	// Set again from another device, a pusher moves to that device.
	must(t, "moving pusher, phone", setPusher(t, phone, httpPusher("k-moved", gw.url(), nil)))
	must(t, "moving pusher, laptop", setPusher(t, laptop, httpPusher("k-moved", gw.url(), nil)))
	keys := func(cli *mautrix.Client) []string {
		t.Helper()
		ps, err := getPushers(t, cli)
		must(t, "get pushers", err)
		var out []string
		for _, p := range ps.Pushers {
			out = append(out, p.PushKey)
		}
		slices.Sort(out)
		return out
	}
	expect := func(what string, cli *mautrix.Client, want ...string) {
		t.Helper()
		if got := keys(cli); !slices.Equal(got, want) {
			t.Fatalf("%s: pushers %v, want %v", what, got, want)
		}
	}
	expect("all set", main, "k-laptop", "k-main", "k-moved", "k-phone")

	_, err := phone.Logout(ctx)
	must(t, "phone logout", err)
	expect("after the phone logged out", main, "k-laptop", "k-main", "k-moved")

	must(t, "password change", raw(t, main, http.MethodPost, map[string]any{
		"new_password": "pw-carol", "logout_devices": true,
		"auth": map[string]any{"type": "m.login.password", "password": "pw-carol",
			"identifier": map[string]any{"type": "m.id.user", "user": "carol"}},
	}, nil, "account", "password"))
	expect("after a password change logged out the laptop", main, "k-main")

	_, err = main.LogoutAll(ctx)
	must(t, "logout all", err)
	expect("after every device logged out", login())
}

// Notifications older than push.notification_retention are deleted by the
// consumer-lock holder every push.prune_interval; unread counts count the
// notifications that are kept (counted when read, #20).
func TestNotificationsPrunedAfterRetention(t *testing.T) {
	hs := startPushStackWith(t, func(cfg *myelin.Config) {
		cfg.ClientAPI.Push.NotificationRetention = 2 * time.Second
		cfg.ClientAPI.Push.PruneInterval = 100 * time.Millisecond
	})
	ctx := context.Background()
	alice, bob := newUser(t, hs, "alice"), newUser(t, hs, "bob")
	roomID := createRoom(t, alice, map[string]any{"preset": "private_chat", "invite": []string{bob.UserID.String()}})
	_, err := bob.JoinRoomByID(ctx, roomID)
	must(t, "join", err)
	bs := &rawSyncer{t: t, cli: bob}
	bs.untilRoom(roomID, "joined", func(map[string]any) error { return nil })
	msg := sendContent(t, alice, roomID, text("soon forgotten"))
	bs.untilRoom(roomID, "the notification counted", wantCounts(1, 0))
	// Bob's notifications: the message, and his invite before it.
	if got := getNotifications(t, bob, nil).Notifications; len(got) == 0 || got[0].Event["event_id"] != msg.String() {
		t.Fatalf("notifications within the retention: %+v", got)
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		if got := getNotifications(t, bob, nil).Notifications; len(got) != 0 {
			return fmt.Errorf("%d notifications left after the retention", len(got))
		}
		return nil
	})
	// A fresh initial sync no longer counts the pruned message.
	fresh := &rawSyncer{t: t, cli: bob}
	fresh.untilRoom(roomID, "the count after pruning", wantCounts(0, 0))
}
