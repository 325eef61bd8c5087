package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// The room-wide default outcome with per-member exceptions (#20) gives
// every member the unread counts, highlights, GET /notifications listing
// (events, actions, read flags) and pusher wake-ups that evaluating each
// member's own rules one by one gives (refModel below: the behaviour before
// #20, kept here as the reference). Random rooms: local members with
// default rules, keyword, display name, sender, room-mute, master and
// disabled-default rules (changed as the rooms go), pushers, a remote
// member; random events: messages and notices with body keywords, display
// names, m.mentions of users and of the room, threads, reactions, invites,
// joins and leaves; random receipts (threaded and not, some before their
// event) and redelivered batches.
func TestRoomWideOutcomesMatchPerMember(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { roomWideMatchesPerMember(t, seed) })
	}
}

// ruleVariants are stored m.push_rules contents (nil: the defaults).
var ruleVariants = []string{
	``,
	`{"global":{"content":[{"rule_id":"kw","pattern":"apple","enabled":true,"actions":["notify",{"set_tweak":"highlight"}]}]}}`,
	`{"global":{"override":[{"rule_id":"dn","enabled":true,"conditions":[{"kind":"contains_display_name"}],"actions":["notify",{"set_tweak":"highlight"},{"set_tweak":"sound","value":"default"}]}]}}`,
	`{"global":{"room":[{"rule_id":"!r0:x","enabled":true,"actions":["dont_notify"]}]}}`,
	`{"global":{"override":[{"rule_id":".m.rule.master","enabled":true,"actions":[]}]}}`,
	`{"global":{"underride":[{"rule_id":".m.rule.message","enabled":false,"actions":["notify"]}]}}`,
	`{"global":{"sender":[{"rule_id":"@u1:x","enabled":true,"actions":["notify",{"set_tweak":"sound","value":"ping"}]}]}}`,
	`{"global":{"override":[{"rule_id":".m.rule.is_user_mention","enabled":false,"actions":[]}]}}`,
	// Stored, but the same outcome as the defaults.
	`{"global":{"override":[{"rule_id":".m.rule.suppress_notices","enabled":true,"actions":[]}]}}`,
}

type refNote struct {
	user, room, thread, eventID string
	pos                         int64
	actions                     string // normalised JSON
	highlight                   bool
}

type refReceipt struct {
	eventID string
	epos    int64
}

// refModel is the per-member reference: what every member's own rules
// say, kept per member.
type refModel struct {
	svc      *Service
	members  map[string]map[string]string // room -> user -> membership
	joinPos  map[[2]string]int64          // (room, user) -> position of the current join
	names    map[[2]string]string         // (room, user) -> display name
	creator  map[string]string
	rules    map[string]string // user -> stored rules
	pushers  map[string]bool
	posOf    map[string]int64 // event ID -> position
	threadOf map[string]string
	notes    []refNote
	ownRead  map[[3]string]int64       // (user, room, thread)
	receipts map[[4]string]refReceipt  // (user, room, thread, type)
	woken    map[int64]map[string]bool // pos -> users the consumer would wake
}

// outcome evaluates the event for one user with their full rules.
func (m *refModel) outcome(user, room string, js []byte) *compiledRule {
	pe, err := newPushEvent(js, room)
	if err != nil {
		panic(err)
	}
	joined := 0
	for _, ms := range m.members[room] {
		if ms == store.MembershipJoin {
			joined++
		}
	}
	create, _ := json.Marshal(map[string]any{"type": "m.room.create", "sender": m.creator[room], "content": map[string]any{"room_version": "10"}})
	level, notify := powerFor(create, nil, pe.sender)
	pr := pushRoom{memberCount: joined, senderLevel: level, notifyLevels: notify,
		displayName: func() string { return m.names[[2]string{room, user}] }}
	merged := mergeRules(user, []byte(m.rules[user]))
	r := compileRules(&merged).evaluate(pe, &pr, nil)
	if r == nil || !r.notify {
		return nil
	}
	return r
}

func normJSON(t *testing.T, b []byte) string {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("actions %s: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

func roomWideMatchesPerMember(t *testing.T, seed int64) {
	ctx := context.Background()
	st, err := store.Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	svc := New(Config{}, "x", st, nil, nil, zap.NewNop())
	rng := rand.New(rand.NewSource(seed))

	locals := []string{"@u0:x", "@u1:x", "@u2:x", "@u3:x", "@u4:x", "@u5:x", "@u6:x", "@u7:x"}
	remote := "@far:y"
	rooms := []string{"!r0:x", "!r1:x"}
	words := []string{"hello", "apple", "Alice", "Bob", "pear", "u3"}
	m := &refModel{svc: svc, members: map[string]map[string]string{}, joinPos: map[[2]string]int64{}, names: map[[2]string]string{},
		creator: map[string]string{}, rules: map[string]string{}, pushers: map[string]bool{}, posOf: map[string]int64{},
		threadOf: map[string]string{}, ownRead: map[[3]string]int64{}, receipts: map[[4]string]refReceipt{}, woken: map[int64]map[string]bool{}}

	setRules := func(u string) {
		v := ruleVariants[rng.Intn(len(ruleVariants))]
		if v == "" && m.rules[u] == "" {
			return
		}
		if v == "" {
			v = `{"global":{}}`
		}
		if _, err := st.PutAccountData(ctx, u, "", RulesType, []byte(v)); err != nil {
			t.Fatal(err)
		}
		m.rules[u] = v
	}
	for _, u := range locals {
		if rng.Intn(2) == 0 {
			setRules(u)
		}
		if rng.Intn(4) == 0 {
			if err := st.SetPusher(ctx, store.Pusher{UserID: u, AppID: "app", PushKey: "k" + u, Kind: "http", Lang: "en",
				Data: []byte(`{"url":"http://127.0.0.1:1/_matrix/push/v1/notify"}`)}, false); err != nil {
				t.Fatal(err)
			}
			m.pushers[u] = true
		}
	}

	n := 0
	newID := func() string { n++; return fmt.Sprintf("$ev%d", n) }
	var stored []store.Input
	var eventsOf = map[string][]string{} // room -> message event IDs (reaction and thread targets)
	var roots = map[string][]string{}    // room -> thread roots
	var maxPos int64

	// apply stores a batch through the evaluator under test and moves the
	// reference along.
	apply := func(batch []store.Input) {
		t.Helper()
		woken := map[string]map[string]bool{}
		eval := func(ctx context.Context, rd store.Reader, a store.Applied, pc store.PushContext) (store.PushOutcome, error) {
			out, err := svc.Evaluate(ctx, rd, a, pc)
			woken[a.Event.EventID] = map[string]bool{}
			for _, u := range Woken(out, pc) {
				woken[a.Event.EventID][u] = true
			}
			return out, err
		}
		applied, err := st.ApplyWith(ctx, batch, eval)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range applied {
			in := batch[slices.IndexFunc(batch, func(in store.Input) bool { return in.Event.EventID == a.Event.EventID })]
			ev := in.Event
			m.posOf[ev.EventID] = a.Pos
			maxPos = max(maxPos, a.Pos)
			room := ev.RoomID
			thread := ThreadMain
			switch ev.RelType {
			case "m.thread":
				thread = ev.RelatesTo
			case "m.annotation":
				thread = m.threadOf[ev.RelatesTo]
			}
			m.threadOf[ev.EventID] = thread
			// State first: evaluation sees the state after the event.
			if ev.Type == "m.room.member" {
				u := *ev.StateKey
				if m.members[room] == nil {
					m.members[room] = map[string]string{}
				}
				if ev.Membership == store.MembershipJoin && m.members[room][u] != store.MembershipJoin {
					m.joinPos[[2]string{room, u}] = a.Pos
				}
				m.members[room][u] = ev.Membership
				var c struct {
					Content struct {
						DisplayName string `json:"displayname"`
					} `json:"content"`
				}
				_ = json.Unmarshal(ev.JSON, &c)
				m.names[[2]string{room, u}] = c.Content.DisplayName
			}
			if strings.HasSuffix(ev.Sender, ":x") {
				k := [3]string{ev.Sender, room, thread}
				m.ownRead[k] = max(m.ownRead[k], a.Pos)
			}
			var recipients []string
			for u, ms := range m.members[room] {
				if ms == store.MembershipJoin && u != ev.Sender && strings.HasSuffix(u, ":x") {
					recipients = append(recipients, u)
				}
			}
			if ev.Type == "m.room.member" && ev.Membership == store.MembershipInvite && *ev.StateKey != ev.Sender {
				recipients = append(recipients, *ev.StateKey)
			}
			for _, u := range recipients {
				r := m.outcome(u, room, ev.JSON)
				if r == nil {
					continue
				}
				m.notes = append(m.notes, refNote{user: u, room: room, thread: thread, eventID: ev.EventID, pos: a.Pos,
					actions: normJSON(t, r.actionsJSON), highlight: r.highlight})
				if m.pushers[u] && !woken[ev.EventID][u] {
					t.Fatalf("%s notifies %s, who has a pusher, but the consumer would not wake them (%v)", ev.EventID, u, woken[ev.EventID])
				}
			}
		}
		stored = append(stored, batch...)
	}

	member := func(room, user, sender, membership, name string) store.Input {
		id := newID()
		content := map[string]any{"membership": membership}
		if name != "" {
			content["displayname"] = name
		}
		js, _ := json.Marshal(map[string]any{"type": "m.room.member", "state_key": user, "sender": sender, "event_id": id,
			"origin_server_ts": 1000 + n, "content": content})
		key := user
		return store.Input{
			Event: store.Event{EventID: id, RoomID: room, Type: "m.room.member", StateKey: &key, Sender: sender, Membership: membership, JSON: js},
			Added: []store.StateEvent{{EventID: id, Type: "m.room.member", StateKey: key, Sender: sender, Membership: membership, JSON: js}},
		}
	}
	// Rooms: a creator, most locals joined with display names, the remote
	// member in one.
	for i, room := range rooms {
		creator := locals[i]
		m.creator[room] = creator
		id := newID()
		js, _ := json.Marshal(map[string]any{"type": "m.room.create", "state_key": "", "sender": creator, "event_id": id,
			"content": map[string]any{"room_version": "10"}})
		empty := ""
		batch := []store.Input{{
			Event: store.Event{EventID: id, RoomID: room, Type: "m.room.create", StateKey: &empty, Sender: creator, JSON: js},
			Added: []store.StateEvent{{EventID: id, Type: "m.room.create", Sender: creator, JSON: js}},
		}}
		batch = append(batch, member(room, creator, creator, store.MembershipJoin, "Creator"))
		for j, u := range locals {
			if u != creator && rng.Intn(4) != 0 {
				batch = append(batch, member(room, u, u, store.MembershipJoin, []string{"Alice", "Bob", "", "Carol"}[j%4]))
			}
		}
		if i == 0 {
			batch = append(batch, member(room, remote, remote, store.MembershipJoin, "Far"))
		}
		apply(batch)
	}

	joinedIn := func(room string) []string {
		var out []string
		for u, ms := range m.members[room] {
			if ms == store.MembershipJoin {
				out = append(out, u)
			}
		}
		slices.Sort(out)
		return out
	}
	message := func(room string) store.Input {
		joined := joinedIn(room)
		sender := joined[rng.Intn(len(joined))]
		id := newID()
		var body []string
		for range 1 + rng.Intn(3) {
			body = append(body, words[rng.Intn(len(words))])
		}
		content := map[string]any{"msgtype": []string{"m.text", "m.text", "m.text", "m.notice"}[rng.Intn(4)], "body": strings.Join(body, " ")}
		if rng.Intn(3) == 0 {
			mentions := map[string]any{}
			var ids []any
			for range rng.Intn(3) {
				ids = append(ids, locals[rng.Intn(len(locals))])
			}
			if rng.Intn(5) == 0 {
				ids = append(ids, 42) // not a user ID
			}
			mentions["user_ids"] = ids
			if rng.Intn(3) == 0 {
				mentions["room"] = true
			}
			content["m.mentions"] = mentions
		}
		ev := store.Event{EventID: id, RoomID: room, Type: "m.room.message", Sender: sender}
		switch r := rng.Intn(6); {
		case r == 0 && len(roots[room]) > 0:
			ev.RelType, ev.RelatesTo = "m.thread", roots[room][rng.Intn(len(roots[room]))]
			content["m.relates_to"] = map[string]any{"rel_type": ev.RelType, "event_id": ev.RelatesTo}
		case r == 1 && len(eventsOf[room]) > 0:
			ev.Type = "m.reaction"
			ev.RelType, ev.RelatesTo = "m.annotation", eventsOf[room][rng.Intn(len(eventsOf[room]))]
			content = map[string]any{"m.relates_to": map[string]any{"rel_type": ev.RelType, "event_id": ev.RelatesTo, "key": "+1"}}
		}
		ev.JSON, _ = json.Marshal(map[string]any{"type": ev.Type, "sender": sender, "event_id": id, "origin_server_ts": 1000 + n, "content": content})
		if ev.Type == "m.room.message" {
			eventsOf[room] = append(eventsOf[room], id)
			if ev.RelType == "" && rng.Intn(3) == 0 {
				roots[room] = append(roots[room], id)
			}
		}
		return store.Input{Event: ev}
	}

	check := func(step int) {
		t.Helper()
		for _, u := range locals {
			upto := maxPos
			if rng.Intn(4) == 0 {
				upto = maxPos - int64(rng.Intn(5))
			}
			// The bound of a thread: the newest receipt covering it, or
			// the user's own newest event in it.
			bound := func(room, thread string) int64 {
				b := m.ownRead[[3]string{u, room, thread}]
				for k, r := range m.receipts {
					if k[0] == u && k[1] == room && (k[2] == "" || k[2] == thread) {
						if p, ok := m.posOf[r.eventID]; ok {
							b = max(b, p)
						}
					}
				}
				return b
			}
			want := map[string]store.UnreadCount{}
			for _, no := range m.notes {
				jp := m.joinPos[[2]string{no.room, u}]
				if no.user != u || m.members[no.room][u] != store.MembershipJoin || no.pos <= jp || no.pos > upto || no.pos <= bound(no.room, no.thread) {
					continue
				}
				c := want[no.room+" "+no.thread]
				c.RoomID, c.ThreadID = no.room, no.thread
				c.Notify++
				if no.highlight {
					c.Highlight++
				}
				want[no.room+" "+no.thread] = c
			}
			got, err := st.Reader().UnreadCounts(ctx, u, rooms, upto)
			if err != nil {
				t.Fatal(err)
			}
			gotMap := map[string]store.UnreadCount{}
			for _, c := range got {
				gotMap[c.RoomID+" "+c.ThreadID] = c
			}
			if fmt.Sprint(gotMap) != fmt.Sprint(want) {
				t.Fatalf("step %d: %s's counts up to %d: got %v, per member %v", step, u, upto, gotMap, want)
			}
			total, err := st.Reader().UnreadTotal(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if upto == maxPos {
				sum := 0
				for _, c := range want {
					sum += c.Notify
				}
				if total != sum {
					t.Fatalf("step %d: %s's total %d, per member %d", step, u, total, sum)
				}
			}
			// GET /notifications: every page, newest first, and the
			// pushers' read, oldest first.
			var wantList []string
			for _, no := range slices.Backward(m.notes) {
				if no.user == u {
					read := no.pos <= bound(no.room, no.thread)
					wantList = append(wantList, fmt.Sprintf("%s %s %s %v read=%v", no.eventID, no.thread, no.actions, no.highlight, read))
				}
			}
			var gotList []string
			var before int64
			for {
				rows, err := st.Reader().Notifications(ctx, store.NotificationsQuery{UserID: u, Before: before, Limit: 3})
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rows {
					gotList = append(gotList, fmt.Sprintf("%s %s %s %v read=%v", r.EventID, r.ThreadID, normJSON(t, r.Actions), r.Highlight, r.Read))
				}
				if len(rows) < 3 {
					break
				}
				before = rows[len(rows)-1].Pos
			}
			if !slices.Equal(gotList, wantList) {
				t.Fatalf("step %d: %s's notifications:\n got %q\nwant %q", step, u, gotList, wantList)
			}
			asc, err := st.Reader().Notifications(ctx, store.NotificationsQuery{UserID: u, Ascending: true, OnlyHighlight: true, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			var gotHigh, wantHigh []string
			for _, r := range asc {
				gotHigh = append(gotHigh, r.EventID)
			}
			for _, no := range m.notes {
				if no.user == u && no.highlight {
					wantHigh = append(wantHigh, no.eventID)
				}
			}
			if !slices.Equal(gotHigh, wantHigh) {
				t.Fatalf("step %d: %s's highlights oldest first: got %v, want %v", step, u, gotHigh, wantHigh)
			}
		}
	}

	epos := int64(0)
	for step := 0; step < 120; step++ {
		room := rooms[rng.Intn(len(rooms))]
		switch op := rng.Intn(20); {
		case op < 10: // a batch of messages, maybe in both rooms
			var batch []store.Input
			for range 1 + rng.Intn(3) {
				batch = append(batch, message(rooms[rng.Intn(len(rooms))]))
			}
			apply(batch)
		case op < 11 && len(stored) > 0: // a redelivery
			apply([]store.Input{stored[rng.Intn(len(stored))]})
		case op < 13: // a receipt, sometimes for an event not stored yet
			u := locals[rng.Intn(len(locals))]
			id := fmt.Sprintf("$ev%d", 1+rng.Intn(n+2))
			thread := []string{"", "", ThreadMain, "x"}[rng.Intn(4)]
			if thread == "x" {
				if len(roots[room]) == 0 {
					thread = ""
				} else {
					thread = roots[room][rng.Intn(len(roots[room]))]
				}
			}
			typ := []string{"m.read", "m.read.private"}[rng.Intn(2)]
			epos++
			if _, err := st.PutPushReceipt(ctx, store.PushReceipt{UserID: u, RoomID: room, ThreadID: thread, Type: typ, EventID: id, EPos: epos}); err != nil {
				t.Fatal(err)
			}
			m.receipts[[4]string{u, room, thread, typ}] = refReceipt{eventID: id, epos: epos}
		case op < 15: // a rule change
			setRules(locals[rng.Intn(len(locals))])
		case op < 17: // membership: invite or join someone never there, or a leave
			joined := joinedIn(room)
			u := locals[rng.Intn(len(locals))]
			switch ms := m.members[room][u]; {
			case ms == "":
				apply([]store.Input{member(room, u, joined[rng.Intn(len(joined))], store.MembershipInvite, "")})
			case ms == store.MembershipInvite:
				apply([]store.Input{member(room, u, u, store.MembershipJoin, "Bob")})
			case ms == store.MembershipJoin && len(joined) > 3 && u != m.creator[room]:
				apply([]store.Input{member(room, u, u, store.MembershipLeave, "")})
			}
		default: // a display name change (join to join)
			joined := joinedIn(room)
			u := joined[rng.Intn(len(joined))]
			if strings.HasSuffix(u, ":x") {
				apply([]store.Input{member(room, u, u, store.MembershipJoin, []string{"Alice", "Pear", "Dan"}[rng.Intn(3)])})
			}
		}
		check(step)
	}
	if len(m.notes) == 0 || !bytes.Contains([]byte(fmt.Sprint(m.notes)), []byte("true")) {
		t.Fatalf("the random rooms notified no one or highlighted nothing: %v", m.notes)
	}
}
