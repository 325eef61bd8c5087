package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// rawSync is GET /sync decoded into generic JSON, so tests see exactly
// the fields the server sent.
func rawSync(t *testing.T, cli *mautrix.Client, query map[string]string) map[string]any {
	t.Helper()
	var out map[string]any
	u := cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, query)
	if _, err := cli.MakeRequest(context.Background(), http.MethodGet, u, nil, &out); err != nil {
		t.Fatalf("sync %v: %v", query, err)
	}
	return out
}

// path walks nested JSON objects.
func path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func eventsAt(v any, keys ...string) []map[string]any {
	list, _ := path(v, keys...).([]any)
	out := make([]map[string]any, 0, len(list))
	for _, e := range list {
		m, _ := e.(map[string]any)
		out = append(out, m)
	}
	return out
}

func typesOf(events []map[string]any) []string {
	var out []string
	for _, e := range events {
		t, _ := e["type"].(string)
		out = append(out, t)
	}
	return out
}

func filtered(t *testing.T, cli *mautrix.Client, filter string) map[string]any {
	t.Helper()
	return rawSync(t, cli, map[string]string{"filter": filter})
}

// TestSyncFilters checks each field of a sync filter through real HTTP.
func TestSyncFilters(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	r1, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "second"})
	if err != nil {
		t.Fatal(err)
	}
	room, other := r1.RoomID.String(), r2.RoomID.String()
	for _, r := range []id.RoomID{r1.RoomID, r2.RoomID} {
		if _, err := bob.JoinRoom(ctx, r.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	sendText(t, alice, r1.RoomID, "from alice")
	sendText(t, bob, r1.RoomID, "from bob")
	if _, err := alice.SendMessageEvent(ctx, r1.RoomID, event.EventMessage, map[string]any{
		"msgtype": "m.image", "body": "pic", "url": "mxc://example.test/abc",
	}); err != nil {
		t.Fatal(err)
	}
	last, err := alice.SendMessageEvent(ctx, r1.RoomID, event.NewEventType("com.example.custom"), map[string]any{"x": 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.SetAccountData(ctx, "com.example.a", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetAccountData(ctx, "com.example.b", map[string]any{"b": 1}); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetRoomAccountData(ctx, r1.RoomID, "com.example.room", map[string]any{"r": 1}); err != nil {
		t.Fatal(err)
	}
	if err := bob.AddTag(ctx, r1.RoomID, "u.work", 0.5); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, bob, r1.RoomID, last.EventID)

	timeline := func(resp map[string]any, roomID string) []map[string]any {
		return eventsAt(resp, "rooms", "join", roomID, "timeline", "events")
	}
	bodies := func(events []map[string]any) []string {
		var out []string
		for _, e := range events {
			if b, ok := path(e, "content", "body").(string); ok {
				out = append(out, b)
			}
		}
		return out
	}
	big := `"limit":50`

	t.Run("timeline types and not_types", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{`+big+`,"types":["m.room.message"]}}}`)
		if got := typesOf(timeline(resp, room)); len(got) != 3 || slices.ContainsFunc(got, func(s string) bool { return s != "m.room.message" }) {
			t.Fatalf("types: %v", got)
		}
		resp = filtered(t, bob, `{"room":{"timeline":{`+big+`,"not_types":["m.room.*"]}}}`)
		if got := typesOf(timeline(resp, room)); !slices.Equal(got, []string{"com.example.custom"}) {
			t.Fatalf("not_types with a wildcard: %v", got)
		}
	})
	t.Run("timeline senders and not_senders", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{`+big+`,"senders":["`+bob.UserID.String()+`"]}}}`)
		for _, e := range timeline(resp, room) {
			if e["sender"] != bob.UserID.String() {
				t.Fatalf("senders: event from %v", e["sender"])
			}
		}
		if got := bodies(timeline(resp, room)); !slices.Equal(got, []string{"from bob"}) {
			t.Fatalf("senders: %v", got)
		}
		resp = filtered(t, bob, `{"room":{"timeline":{`+big+`,"not_senders":["`+alice.UserID.String()+`"],"types":["m.room.message"]}}}`)
		if got := bodies(timeline(resp, room)); !slices.Equal(got, []string{"from bob"}) {
			t.Fatalf("not_senders: %v", got)
		}
	})
	t.Run("timeline contains_url", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{`+big+`,"contains_url":true}}}`)
		if got := bodies(timeline(resp, room)); !slices.Equal(got, []string{"pic"}) {
			t.Fatalf("contains_url true: %v", got)
		}
		resp = filtered(t, bob, `{"room":{"timeline":{`+big+`,"contains_url":false,"types":["m.room.message"]}}}`)
		if got := bodies(timeline(resp, room)); !slices.Equal(got, []string{"from alice", "from bob"}) {
			t.Fatalf("contains_url false: %v", got)
		}
	})
	t.Run("timeline limit counts only allowed events", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{"limit":2,"types":["m.room.message"]}}}`)
		if got := bodies(timeline(resp, room)); !slices.Equal(got, []string{"from bob", "pic"}) {
			t.Fatalf("limit 2 of messages: %v", got)
		}
		if path(resp, "rooms", "join", room, "timeline", "limited") != true {
			t.Fatal("a timeline with more allowed events before it must be limited")
		}
	})
	t.Run("timeline rooms and not_rooms", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{`+big+`,"not_rooms":["`+room+`"]}}}`)
		if n := len(timeline(resp, room)); n != 0 {
			t.Fatalf("not_rooms: %d timeline events", n)
		}
		if len(timeline(resp, other)) == 0 {
			t.Fatal("not_rooms hid the other room's timeline")
		}
		resp = filtered(t, bob, `{"room":{"timeline":{`+big+`,"rooms":["`+other+`"]}}}`)
		if len(timeline(resp, room)) != 0 || len(timeline(resp, other)) == 0 {
			t.Fatal("timeline rooms")
		}
	})
	t.Run("room rooms and not_rooms", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"rooms":["`+other+`"]}}`)
		if path(resp, "rooms", "join", room) != nil || path(resp, "rooms", "join", other) == nil {
			t.Fatal("room.rooms")
		}
		resp = filtered(t, bob, `{"room":{"not_rooms":["`+other+`"]}}`)
		if path(resp, "rooms", "join", room) == nil || path(resp, "rooms", "join", other) != nil {
			t.Fatal("room.not_rooms")
		}
	})
	t.Run("state filter", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{"limit":1},"state":{"types":["m.room.create","m.room.power_levels"]}}}`)
		got := typesOf(eventsAt(resp, "rooms", "join", room, "state", "events"))
		slices.Sort(got)
		if !slices.Equal(got, []string{"m.room.create", "m.room.power_levels"}) {
			t.Fatalf("state types: %v", got)
		}
		resp = filtered(t, bob, `{"room":{"timeline":{"limit":1},"state":{"not_types":["m.room.member"],"not_rooms":["`+other+`"]}}}`)
		if got := typesOf(eventsAt(resp, "rooms", "join", room, "state", "events")); len(got) == 0 || slices.Contains(got, "m.room.member") {
			t.Fatalf("state not_types: %v", got)
		}
		if n := len(eventsAt(resp, "rooms", "join", other, "state", "events")); n != 0 {
			t.Fatalf("state not_rooms: %d events", n)
		}
		resp = filtered(t, bob, `{"room":{"timeline":{"limit":1},"state":{"senders":["`+bob.UserID.String()+`"]}}}`)
		for _, e := range eventsAt(resp, "rooms", "join", room, "state", "events") {
			if e["sender"] != bob.UserID.String() {
				t.Fatalf("state senders: %v", e)
			}
		}
	})
	t.Run("room and global account data", func(t *testing.T) {
		resp := filtered(t, bob, `{"account_data":{"types":["com.example.a"]},"room":{"account_data":{"not_types":["m.tag"]}}}`)
		if got := typesOf(eventsAt(resp, "account_data", "events")); !slices.Equal(got, []string{"com.example.a"}) {
			t.Fatalf("account_data types: %v", got)
		}
		if got := typesOf(eventsAt(resp, "rooms", "join", room, "account_data", "events")); !slices.Equal(got, []string{"com.example.room"}) {
			t.Fatalf("room account_data not_types: %v", got)
		}
		resp = filtered(t, bob, `{"account_data":{"limit":1},"room":{"account_data":{"rooms":["`+other+`"]}}}`)
		if n := len(eventsAt(resp, "account_data", "events")); n != 1 {
			t.Fatalf("account_data limit 1: %d", n)
		}
		if n := len(eventsAt(resp, "rooms", "join", room, "account_data", "events")); n != 0 {
			t.Fatalf("room account_data rooms: %d", n)
		}
	})
	t.Run("event_fields", func(t *testing.T) {
		resp := filtered(t, bob, `{"event_fields":["type","content.body"],"room":{"timeline":{"limit":3,"types":["m.room.message"]}}}`)
		tl := timeline(resp, room)
		if len(tl) != 3 {
			t.Fatalf("event_fields timeline: %v", tl)
		}
		for _, e := range tl {
			content, _ := e["content"].(map[string]any)
			if len(e) != 2 || e["type"] != "m.room.message" || len(content) != 1 || content["body"] == nil {
				t.Fatalf("event_fields: %v", e)
			}
		}
	})
	t.Run("event_format", func(t *testing.T) {
		resp := filtered(t, bob, `{"event_format":"federation","room":{"timeline":{"limit":2}}}`)
		for _, e := range timeline(resp, room) {
			if e["hashes"] == nil || e["signatures"] == nil || e["room_id"] != room {
				t.Fatalf("federation format: %v", e)
			}
		}
		resp = filtered(t, bob, `{"event_format":"client","room":{"timeline":{"limit":2}}}`)
		for _, e := range timeline(resp, room) {
			if e["hashes"] != nil || e["event_id"] == nil {
				t.Fatalf("client format: %v", e)
			}
		}
	})
	t.Run("stored filter", func(t *testing.T) {
		f, err := bob.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{
			Timeline: &mautrix.FilterPart{Limit: 50, Senders: []id.UserID{bob.UserID}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		resp := rawSync(t, bob, map[string]string{"filter": f.FilterID})
		if got := bodies(timeline(resp, room)); !slices.Equal(got, []string{"from bob"}) {
			t.Fatalf("stored filter: %v", got)
		}
	})
	t.Run("bad filters", func(t *testing.T) {
		for _, f := range []string{
			`{"event_format":"xml"}`,
			`{"room":{"state":{"limit":-1}}}`,
			`{"room":{"timeline":{"types":"m.room.message"}}}`,
			`{"presence":{"limit":-3}}`,
		} {
			_, err := bob.SyncRequest(ctx, 0, "", f, false, "")
			if !errors.Is(err, mautrix.MBadJSON) {
				t.Errorf("filter %s: %v, want M_BAD_JSON", f, err)
			}
		}
	})
	t.Run("summary", func(t *testing.T) {
		resp := filtered(t, bob, `{"room":{"timeline":{"limit":1}}}`)
		heroes, _ := path(resp, "rooms", "join", room, "summary", "m.heroes").([]any)
		if !slices.Equal(heroes, []any{alice.UserID.String()}) || path(resp, "rooms", "join", room, "summary", "m.joined_member_count") != 2.0 {
			t.Fatalf("unnamed room summary: %v", path(resp, "rooms", "join", room, "summary"))
		}
		if sum := path(resp, "rooms", "join", other, "summary"); path(sum, "m.heroes") != nil || path(sum, "m.joined_member_count") != 2.0 {
			t.Fatalf("named room summary: %v", sum)
		}
	})
	t.Run("include_leave", func(t *testing.T) {
		// Sync first: a leave before an initial sync is not shown without
		// include_leave, one after it is.
		s := &syncer{t: t, cli: bob}
		s.until("an initial sync", func(*mautrix.RespSync) bool { return true })
		if _, err := bob.LeaveRoom(ctx, r2.RoomID); err != nil {
			t.Fatal(err)
		}
		s.until("bob's leave", func(r *mautrix.RespSync) bool { _, ok := r.Rooms.Leave[r2.RoomID]; return ok })
		if path(filtered(t, bob, `{}`), "rooms", "leave", other) != nil {
			t.Fatal("a room left before an initial sync is shown without include_leave")
		}
		resp := filtered(t, bob, `{"room":{"include_leave":true}}`)
		if path(resp, "rooms", "leave", other) == nil {
			t.Fatal("include_leave: the left room is missing")
		}
		resp = rawSync(t, bob, map[string]string{"filter": `{"room":{"include_leave":true}}`, "since": s.since, "full_state": "true"})
		if path(resp, "rooms", "leave", other) == nil {
			t.Fatal("include_leave with full_state: the left room is missing")
		}
		resp = rawSync(t, bob, map[string]string{"filter": `{"room":{"include_leave":true}}`, "since": s.since})
		if path(resp, "rooms", "leave", other) != nil {
			t.Fatal("an incremental sync repeats a leave the client has seen")
		}
	})
}

// memberKeys lists the state keys of the member events in a list.
func memberKeys(events []map[string]any) []string {
	var out []string
	for _, e := range events {
		if e["type"] == "m.room.member" {
			out = append(out, e["state_key"].(string))
		}
	}
	slices.Sort(out)
	return out
}

// TestSyncLazyMembers: with lazy_load_members the state carries only the
// timeline senders' and the user's own member events, and an incremental
// sync does not repeat a member the device has (unless
// include_redundant_members); the summary is present.
func TestSyncLazyMembers(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	room := roomID.String()
	users := map[string]*mautrix.Client{}
	for _, name := range []string{"bob", "carol", "dan", "erin", "viewer"} {
		users[name] = newUser(t, hs, name)
		if _, err := users[name].JoinRoom(ctx, room, nil); err != nil {
			t.Fatal(err)
		}
	}
	viewer := users["viewer"]
	bob, carol := users["bob"], users["carol"]
	sendText(t, alice, roomID, "a1")
	sendText(t, bob, roomID, "b1")
	caughtUp(t, viewer, roomID, sendText(t, bob, roomID, "b2"))

	const lazy = `{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true}}}`
	const redundant = `{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true,"include_redundant_members":true}}}`
	initial := rawSync(t, viewer, map[string]string{"filter": lazy})
	state := eventsAt(initial, "rooms", "join", room, "state", "events")
	if got, want := memberKeys(state), []string{bob.UserID.String(), viewer.UserID.String()}; !slices.Equal(got, want) {
		t.Fatalf("lazy initial state members %v, want %v", got, want)
	}
	for _, typ := range []string{"m.room.create", "m.room.power_levels", "m.room.join_rules"} {
		if !slices.Contains(typesOf(state), typ) {
			t.Fatalf("lazy initial state lacks %s: %v", typ, typesOf(state))
		}
	}
	if n := path(initial, "rooms", "join", room, "summary", "m.joined_member_count"); n != float64(6) {
		t.Fatalf("summary joined count %v", n)
	}
	if n := path(initial, "rooms", "join", room, "summary", "m.invited_member_count"); n != float64(0) {
		t.Fatalf("summary invited count %v", n)
	}
	if heroes, _ := path(initial, "rooms", "join", room, "summary", "m.heroes").([]any); len(heroes) != 5 || slices.Contains(heroes, any(viewer.UserID.String())) {
		t.Fatalf("summary heroes %v", heroes)
	}
	// Without lazy loading every member comes along.
	full := rawSync(t, viewer, map[string]string{"filter": `{"room":{"timeline":{"limit":2}}}`})
	if n := len(memberKeys(eventsAt(full, "rooms", "join", room, "state", "events"))); n != 6 {
		t.Fatalf("non-lazy state has %d members", n)
	}

	since := initial["next_batch"].(string)
	next := func(filter string, want id.EventID) map[string]any {
		t.Helper()
		for {
			resp := rawSync(t, viewer, map[string]string{"filter": filter, "since": since, "timeout": "10000"})
			since = resp["next_batch"].(string)
			for _, e := range eventsAt(resp, "rooms", "join", room, "timeline", "events") {
				if e["event_id"] == want.String() {
					return resp
				}
			}
		}
	}
	// bob again: already sent, not repeated.
	resp := next(lazy, sendText(t, bob, roomID, "b3"))
	if got := memberKeys(eventsAt(resp, "rooms", "join", room, "state", "events")); len(got) != 0 {
		t.Fatalf("incremental repeats members %v", got)
	}
	// carol is new to this device.
	resp = next(lazy, sendText(t, carol, roomID, "c1"))
	if got := memberKeys(eventsAt(resp, "rooms", "join", room, "state", "events")); !slices.Equal(got, []string{carol.UserID.String()}) {
		t.Fatalf("incremental members %v, want carol", got)
	}
	if path(resp, "rooms", "join", room, "summary", "m.joined_member_count") != float64(6) {
		t.Fatal("incremental lazy sync without summary")
	}
	// include_redundant_members sends bob (and the viewer) again.
	resp = next(redundant, sendText(t, bob, roomID, "b4"))
	if got := memberKeys(eventsAt(resp, "rooms", "join", room, "state", "events")); !slices.Equal(got, []string{bob.UserID.String(), viewer.UserID.String()}) {
		t.Fatalf("include_redundant_members: members %v, want bob and viewer", got)
	}
	// A limited incremental sync: the gap's senders are not in the
	// timeline, so only the timeline's senders come; dan is new.
	sendText(t, users["erin"], roomID, "e1")
	sendText(t, users["dan"], roomID, "d1")
	d2 := sendText(t, users["dan"], roomID, "d2")
	caughtUp(t, alice, roomID, d2) // all three are stored before the viewer syncs
	resp = next(lazy, d2)
	if path(resp, "rooms", "join", room, "timeline", "limited") != true {
		t.Fatal("expected a limited timeline")
	}
	if got := memberKeys(eventsAt(resp, "rooms", "join", room, "state", "events")); !slices.Equal(got, []string{users["dan"].UserID.String()}) {
		t.Fatalf("limited incremental members %v, want dan", got)
	}
	// full_state starts over: the whole non-member state and the user's
	// own member event although it was sent before (the timeline since
	// the last sync is empty, so there are no senders).
	resp = rawSync(t, viewer, map[string]string{"filter": lazy, "since": since, "full_state": "true"})
	state = eventsAt(resp, "rooms", "join", room, "state", "events")
	want := []string{viewer.UserID.String()}
	if got := memberKeys(state); !slices.Equal(got, want) || !slices.Contains(typesOf(state), "m.room.create") {
		t.Fatalf("lazy full_state: members %v (want %v), types %v", got, want, typesOf(state))
	}
}

// TestSendToDevice: delivery in /sync, idempotent transactions, the "*"
// wildcard, deletion once acknowledged, and a long poll woken by a
// message. alice and bob share no room: any local user may be sent to.
func TestSendToDevice(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	// bob's second device.
	bob2, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	login, err := bob2.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"},
		Password: "pw-bob", StoreCredentials: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	bob2.DeviceID = login.DeviceID

	send := func(cli *mautrix.Client, txn string, body any) error {
		_, err := cli.MakeRequest(ctx, http.MethodPut, cli.BuildClientURL("v3", "sendToDevice", "com.example.ping", txn), body, nil)
		return err
	}
	msg := func(target id.UserID, device string, n int) map[string]any {
		return map[string]any{"messages": map[string]any{target.String(): map[string]any{device: map[string]any{"n": n}}}}
	}
	// An initial long poll establishes bob's position.
	first, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	// A long poll is woken by a message.
	var wg sync.WaitGroup
	var woke *mautrix.RespSync
	var wokeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		woke, wokeErr = bob.SyncRequest(ctx, 30000, first.NextBatch, "", false, "")
	}()
	if err := send(alice, "t1", msg(bob.UserID, bob.DeviceID.String(), 1)); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if wokeErr != nil || len(woke.ToDevice.Events) != 1 {
		t.Fatalf("long poll: %v %v", woke, wokeErr)
	}
	ev := woke.ToDevice.Events[0]
	if ev.Sender != alice.UserID || ev.Type.Type != "com.example.ping" || ev.Content.Raw["n"] != float64(1) {
		t.Fatalf("to-device event %+v", ev)
	}
	// The same transaction again delivers nothing new; another does.
	if err := send(alice, "t1", msg(bob.UserID, bob.DeviceID.String(), 1)); err != nil {
		t.Fatal(err)
	}
	if err := send(alice, "t2", msg(bob.UserID, "*", 2)); err != nil {
		t.Fatal(err)
	}
	// Not acknowledged yet: syncing from the old token sees both again.
	again, err := bob.SyncRequest(ctx, 0, first.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	var ns []any
	for _, e := range again.ToDevice.Events {
		ns = append(ns, e.Content.Raw["n"])
	}
	if !slices.Equal(ns, []any{float64(1), float64(2)}) {
		t.Fatalf("unacknowledged messages %v, want [1 2]", ns)
	}
	// Acknowledged by the next since: gone, even for an initial sync.
	acked, err := bob.SyncRequest(ctx, 0, again.NextBatch, "", false, "")
	if err != nil || len(acked.ToDevice.Events) != 0 {
		t.Fatalf("after ack: %v %v", acked, err)
	}
	fresh, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil || len(fresh.ToDevice.Events) != 0 {
		t.Fatalf("initial sync after ack: %d events, %v", len(fresh.ToDevice.Events), err)
	}
	// The wildcard reached bob's other device too (only that message).
	other, err := bob2.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil || len(other.ToDevice.Events) != 1 || other.ToDevice.Events[0].Content.Raw["n"] != float64(2) {
		t.Fatalf("second device: %v %v", other, err)
	}
	// A message to a remote user is accepted (published on
	// MYELIN_TO_DEVICE_OUT for the federation sender, whose tests follow it
	// to the remote server); a malformed user ID or content is refused.
	if err := send(alice, "t3", msg("@someone:remote.example", "DEV", 3)); err != nil {
		t.Fatalf("remote target: %v", err)
	}
	if err := send(alice, "t4", msg("not-a-user", "DEV", 4)); !errors.Is(err, mautrix.MInvalidParam) {
		t.Fatalf("bad user ID: %v", err)
	}
	if err := send(alice, "t5", map[string]any{"messages": map[string]any{bob.UserID.String(): map[string]any{"X": "str"}}}); !errors.Is(err, mautrix.MBadJSON) {
		t.Fatalf("non-object content: %v", err)
	}
	if err := send(alice, "t6", map[string]any{}); !errors.Is(err, mautrix.MBadJSON) {
		t.Fatalf("missing messages: %v", err)
	}
	// Logging out deletes the device with its pending messages, and
	// messages to a device that does not exist are dropped: a new login
	// reusing the device ID starts empty.
	if err := send(alice, "t7", msg(bob.UserID, bob2.DeviceID.String(), 7)); err != nil {
		t.Fatal(err)
	}
	if _, err := bob2.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if err := send(alice, "t8", msg(bob.UserID, bob2.DeviceID.String(), 8)); err != nil {
		t.Fatal(err)
	}
	if _, err := bob2.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"},
		Password: "pw-bob", DeviceID: bob2.DeviceID, StoreCredentials: true,
	}); err != nil {
		t.Fatal(err)
	}
	if relogged, err := bob2.SyncRequest(ctx, 0, "", "", false, ""); err != nil || len(relogged.ToDevice.Events) != 0 {
		t.Fatalf("a new login on a deleted device ID: %v %v", relogged, err)
	}

	// At most 100 per response, in order; the rest come next.
	for i := range 105 {
		if err := send(alice, fmt.Sprint("bulk", i), msg(bob.UserID, bob.DeviceID.String(), 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	since := acked.NextBatch
	var got []any
	for range 3 {
		resp, err := bob.SyncRequest(ctx, 0, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.ToDevice.Events) > 100 {
			t.Fatalf("%d to-device events in one response", len(resp.ToDevice.Events))
		}
		for _, e := range resp.ToDevice.Events {
			got = append(got, e.Content.Raw["n"])
		}
		since = resp.NextBatch
	}
	if len(got) != 105 || got[0] != float64(100) || got[104] != float64(204) || !slices.IsSortedFunc(got, func(a, b any) int {
		return int(a.(float64) - b.(float64))
	}) {
		t.Fatalf("bulk delivery: %d events %v", len(got), got)
	}
}

// TestIgnoredUsers: an ignored user's messages leave /sync, /messages and
// /context, their state events stay, their invites are not shown, and
// un-ignoring shows new messages again.
func TestIgnoredUsers(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	eve := newUser(t, hs, "eve")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	for _, c := range []*mautrix.Client{bob, eve} {
		if _, err := c.JoinRoom(ctx, roomID.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := bob.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{bob.UserID.String(): map[string]any{}}}); !errors.Is(err, mautrix.MInvalidParam) {
		t.Fatalf("ignoring oneself: %v", err)
	}
	if err := bob.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{eve.UserID.String(): map[string]any{}}}); err != nil {
		t.Fatal(err)
	}
	sendText(t, eve, roomID, "spam")
	name := "Eve Renamed"
	if _, err := eve.SendStateEvent(ctx, roomID, event.StateMember, eve.UserID.String(), map[string]any{"membership": "join", "displayname": name}); err != nil {
		t.Fatal(err)
	}
	hello := sendText(t, alice, roomID, "hello")
	s := &syncer{t: t, cli: bob}
	var seen []*event.Event
	s.until("alice's message", func(r *mautrix.RespSync) bool {
		if jr := r.Rooms.Join[roomID]; jr != nil {
			seen = append(seen, jr.Timeline.Events...)
		}
		return slices.ContainsFunc(seen, func(e *event.Event) bool { return e.ID == hello })
	})
	for _, e := range seen {
		if e.Sender == eve.UserID && e.Type == event.EventMessage {
			t.Fatalf("ignored user's message in /sync: %s", e.ID)
		}
	}
	if !slices.ContainsFunc(seen, func(e *event.Event) bool {
		return e.Sender == eve.UserID && e.Type == event.StateMember && e.Content.Raw["displayname"] == name
	}) {
		t.Fatal("the ignored user's state event is missing from /sync")
	}
	// Initial sync, /messages and /context leave the message out too.
	initial, err := bob.SyncRequest(ctx, 0, "", `{"room":{"timeline":{"limit":50}}}`, false, "")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	c, err := bob.Context(ctx, roomID, hello, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	for where, list := range map[string][]*event.Event{
		"initial sync": initial.Rooms.Join[roomID].Timeline.Events, "messages": msgs.Chunk, "context": c.EventsBefore,
	} {
		for _, e := range list {
			if bodyOf(e) == "spam" {
				t.Fatalf("ignored user's message in %s", where)
			}
		}
	}
	// Alice still sees it.
	am, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil || !slices.ContainsFunc(am.Chunk, func(e *event.Event) bool { return bodyOf(e) == "spam" }) {
		t.Fatalf("alice lost eve's message: %v", err)
	}

	// Aggregations and /relations leave eve's thread reply out.
	root := sendText(t, alice, roomID, "root")
	sendRelated(t, eve, roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "eve in thread", "m.relates_to": relatesTo("m.thread", root)})
	mine := sendRelated(t, alice, roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "alice in thread", "m.relates_to": relatesTo("m.thread", root)})
	caughtUp(t, alice, roomID, mine)
	th, _ := relationsOf(rawGet(t, bob, "v3", "rooms", roomID, "event", root))["m.thread"].(map[string]any)
	if latest, _ := th["latest_event"].(map[string]any); th["count"] != 1.0 || latest["event_id"] != mine.String() {
		t.Fatalf("thread bundle with an ignored participant: %v", th)
	}
	if th, _ := relationsOf(rawGet(t, alice, "v3", "rooms", roomID, "event", root))["m.thread"].(map[string]any); th["count"] != 2.0 {
		t.Fatalf("alice's thread bundle: %v", th)
	}
	rels, err := bob.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{})
	if err != nil || len(rels.Chunk) != 1 || rels.Chunk[0].ID != mine {
		t.Fatalf("relations with an ignored sender: %v %v", rels, err)
	}

	// Invites: eve's is not shown, alice's is.
	evesRoom, err := eve.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	alicesRoom, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	s.until("alice's invite", func(r *mautrix.RespSync) bool {
		if _, ok := r.Rooms.Invite[evesRoom.RoomID]; ok {
			t.Fatal("an invite from an ignored user is shown")
		}
		_, ok := r.Rooms.Invite[alicesRoom.RoomID]
		return ok
	})
	if initial, err := bob.SyncRequest(ctx, 0, "", "", false, ""); err != nil {
		t.Fatal(err)
	} else if _, ok := initial.Rooms.Invite[evesRoom.RoomID]; ok {
		t.Fatal("an invite from an ignored user is shown in an initial sync")
	}

	// Un-ignore: new messages show again.
	if err := bob.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	back := sendText(t, eve, roomID, "back")
	s.until("eve's message after un-ignoring", func(r *mautrix.RespSync) bool {
		jr := r.Rooms.Join[roomID]
		return jr != nil && slices.ContainsFunc(jr.Timeline.Events, func(e *event.Event) bool { return e.ID == back })
	})
}
