package clientapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi"
)

// search runs POST /search for room events through mautrix.
func search(t *testing.T, cli *mautrix.Client, req mautrix.ReqSearch) *mautrix.RespSearch {
	t.Helper()
	resp, err := cli.Search(context.Background(), &req)
	if err != nil {
		t.Fatalf("%s searches %q: %v", cli.UserID, req.SearchTerm, err)
	}
	return resp
}

// resultIDs are the event IDs of a page of results, in order.
func resultIDs(r *mautrix.RespSearch) []id.EventID {
	var out []id.EventID
	for _, res := range r.Results {
		out = append(out, res.Event.ID)
	}
	return out
}

// searchAll follows next_batch to the end and returns every result ID.
func searchAll(t *testing.T, cli *mautrix.Client, req mautrix.ReqSearch) []id.EventID {
	t.Helper()
	var out []id.EventID
	for range 100 {
		r := search(t, cli, req)
		out = append(out, resultIDs(r)...)
		if r.NextBatch == "" {
			return out
		}
		req.NextBatch = r.NextBatch
	}
	t.Fatal("pagination does not end")
	return nil
}

func limitFilter(n int) *mautrix.FilterPart { return &mautrix.FilterPart{Limit: n} }

func TestSearch(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	if err := alice.SetDisplayName(ctx, "Alice A"); err != nil {
		t.Fatal(err)
	}
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Martian HQ", Topic: "Landing site of the martians"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	other, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []id.RoomID{room, other.RoomID} {
		if _, err := bob.JoinRoom(ctx, r.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	triple := sendText(t, alice, room, "martian martian martian")
	var reports []id.EventID
	for i := range 12 {
		reports = append(reports, sendText(t, alice, room, fmt.Sprintf("a martian report number %d", i)))
	}
	nothing := sendText(t, alice, room, "nothing to see here")
	fromBob := sendText(t, bob, room, "bob saw the Martians too")
	inOther := sendText(t, alice, other.RoomID, "martians in the other room")
	last := sendText(t, alice, room, "end")
	caughtUp(t, bob, room, last)
	caughtUp(t, bob, other.RoomID, inOther)

	allMessages := slices.Concat([]id.EventID{triple}, reports, []id.EventID{fromBob, inOther})

	t.Run("recent order, count, highlights and pagination", func(t *testing.T) {
		r := search(t, bob, mautrix.ReqSearch{SearchTerm: "martians", OrderBy: "recent", Keys: []string{"content.body"}, Filter: limitFilter(5)})
		if r.Count != len(allMessages) {
			t.Fatalf("count %d, want %d", r.Count, len(allMessages))
		}
		if got := resultIDs(r); len(got) != 5 || got[0] != inOther || got[1] != fromBob || got[2] != reports[11] {
			t.Fatalf("first page by recency: %v", got)
		}
		if r.NextBatch == "" {
			t.Fatal("no next_batch with more results")
		}
		if !slices.Contains(r.Highlights, "martian") && !slices.Contains(r.Highlights, "Martians") {
			t.Fatalf("highlights %v", r.Highlights)
		}
		for _, res := range r.Results {
			if res.Event.RoomID == "" || res.Event.Sender == "" {
				t.Fatalf("result without room or sender: %+v", res.Event)
			}
		}
		all := searchAll(t, bob, mautrix.ReqSearch{SearchTerm: "martians", OrderBy: "recent", Keys: []string{"content.body"}, Filter: limitFilter(5)})
		want := slices.Clone(allMessages)
		slices.Reverse(want)
		if !slices.Equal(all, want) {
			t.Fatalf("all pages by recency:\n got %v\nwant %v", all, want)
		}
	})

	t.Run("rank order", func(t *testing.T) {
		r := search(t, bob, mautrix.ReqSearch{SearchTerm: "martian", Keys: []string{"content.body"}})
		if len(r.Results) == 0 || r.Results[0].Event.ID != triple {
			t.Fatalf("by rank, the message with the word three times comes first: %v", resultIDs(r))
		}
		for i := 1; i < len(r.Results); i++ {
			if r.Results[i].Rank > r.Results[i-1].Rank {
				t.Fatalf("ranks not descending: %v > %v", r.Results[i].Rank, r.Results[i-1].Rank)
			}
		}
		all := searchAll(t, bob, mautrix.ReqSearch{SearchTerm: "martian", Keys: []string{"content.body"}, Filter: limitFilter(4)})
		if len(all) != len(allMessages) || !sameSet(all, allMessages) {
			t.Fatalf("rank pages: got %v, want the set %v", all, allMessages)
		}
	})

	t.Run("keys", func(t *testing.T) {
		byName := search(t, bob, mautrix.ReqSearch{SearchTerm: "martian", Keys: []string{"content.name"}})
		if len(byName.Results) != 1 || byName.Results[0].Event.Type != event.StateRoomName {
			t.Fatalf("content.name: %v", resultIDs(byName))
		}
		byTopic := search(t, bob, mautrix.ReqSearch{SearchTerm: "landing", Keys: []string{"content.topic"}})
		if len(byTopic.Results) != 1 || byTopic.Results[0].Event.Type != event.StateTopic {
			t.Fatalf("content.topic: %v", resultIDs(byTopic))
		}
		if r := search(t, bob, mautrix.ReqSearch{SearchTerm: "landing", Keys: []string{"content.body"}}); len(r.Results) != 0 {
			t.Fatalf("a topic found through content.body: %v", resultIDs(r))
		}
		// Default: all keys.
		if r := search(t, bob, mautrix.ReqSearch{SearchTerm: "martian", Filter: limitFilter(100)}); r.Count != len(allMessages)+2 {
			t.Fatalf("all keys: count %d, want %d", r.Count, len(allMessages)+2)
		}
	})

	t.Run("filter", func(t *testing.T) {
		onlyOther := search(t, bob, mautrix.ReqSearch{SearchTerm: "martians", Filter: &mautrix.FilterPart{Rooms: []id.RoomID{other.RoomID}}})
		if got := resultIDs(onlyOther); !slices.Equal(got, []id.EventID{inOther}) {
			t.Fatalf("rooms filter: %v", got)
		}
		notRoom := search(t, bob, mautrix.ReqSearch{SearchTerm: "martians", Filter: &mautrix.FilterPart{NotRooms: []id.RoomID{room}}})
		if got := resultIDs(notRoom); !slices.Equal(got, []id.EventID{inOther}) {
			t.Fatalf("not_rooms filter: %v", got)
		}
		bobs := search(t, bob, mautrix.ReqSearch{SearchTerm: "martians", Filter: &mautrix.FilterPart{Senders: []id.UserID{bob.UserID}}})
		if got := resultIDs(bobs); !slices.Equal(got, []id.EventID{fromBob}) || bobs.Count != 1 {
			t.Fatalf("senders filter: %v (count %d)", got, bobs.Count)
		}
		notAlice := search(t, bob, mautrix.ReqSearch{SearchTerm: "martians", Filter: &mautrix.FilterPart{NotSenders: []id.UserID{alice.UserID}}})
		if got := resultIDs(notAlice); !slices.Equal(got, []id.EventID{fromBob}) {
			t.Fatalf("not_senders filter: %v", got)
		}
		names := search(t, bob, mautrix.ReqSearch{SearchTerm: "martian", Filter: &mautrix.FilterPart{Types: []event.Type{event.StateRoomName}}})
		if len(names.Results) != 1 || names.Results[0].Event.Type != event.StateRoomName {
			t.Fatalf("types filter: %v", resultIDs(names))
		}
		noMessages := search(t, bob, mautrix.ReqSearch{SearchTerm: "martian", Filter: &mautrix.FilterPart{NotTypes: []event.Type{event.EventMessage}}})
		if len(noMessages.Results) != 2 {
			t.Fatalf("not_types filter: %v", resultIDs(noMessages))
		}
	})

	t.Run("groups", func(t *testing.T) {
		r := search(t, bob, mautrix.ReqSearch{
			SearchTerm: "martians", OrderBy: "recent", Keys: []string{"content.body"}, Filter: limitFilter(3),
			Groupings: mautrix.SearchGroupings{GroupBy: []mautrix.SearchGroup{{Key: "room_id"}, {Key: "sender"}}},
		})
		rooms := r.Groups["room_id"]
		if len(rooms) != 2 || rooms[other.RoomID.String()].Order != 1 || rooms[room.String()].Order != 2 {
			t.Fatalf("room groups: %+v", rooms)
		}
		if g := rooms[other.RoomID.String()]; !slices.Equal(g.Results, []string{inOther.String()}) || g.NextBatch != "" {
			t.Fatalf("the other room's group: %+v", g)
		}
		main := rooms[room.String()]
		if !slices.Equal(main.Results, []string{fromBob.String(), reports[11].String()}) || main.NextBatch == "" {
			t.Fatalf("the main room's group: %+v", main)
		}
		senders := r.Groups["sender"]
		if g := senders[bob.UserID.String()]; g.Results == nil || !slices.Equal(g.Results, []string{fromBob.String()}) || g.NextBatch != "" {
			t.Fatalf("bob's sender group: %+v", senders)
		}
		if g := senders[alice.UserID.String()]; len(g.Results) != 2 || g.NextBatch == "" {
			t.Fatalf("alice's sender group: %+v", senders)
		}
		// The room group's next_batch continues within that room only.
		rest := searchAll(t, bob, mautrix.ReqSearch{
			SearchTerm: "martians", OrderBy: "recent", Keys: []string{"content.body"}, Filter: limitFilter(3), NextBatch: main.NextBatch,
		})
		want := slices.Clone(reports[:11])
		want = append([]id.EventID{triple}, want...)
		slices.Reverse(want)
		if !slices.Equal(rest, want) {
			t.Fatalf("room group pagination:\n got %v\nwant %v", rest, want)
		}
		// The sender group's next_batch continues with that sender only.
		more := searchAll(t, bob, mautrix.ReqSearch{
			SearchTerm: "martians", OrderBy: "recent", Keys: []string{"content.body"}, Filter: limitFilter(3),
			NextBatch: senders[alice.UserID.String()].NextBatch,
		})
		wantAlice := slices.Clone(want)
		wantAlice = slices.DeleteFunc(wantAlice, func(e id.EventID) bool { return e == reports[11] })
		if !slices.Equal(more, wantAlice) {
			t.Fatalf("sender group pagination:\n got %v\nwant %v", more, wantAlice)
		}
	})

	t.Run("query syntax", func(t *testing.T) {
		for _, c := range []struct {
			term string
			want []id.EventID
		}{
			{`"martian report" number`, reports},
			{"martian -report", []id.EventID{triple, fromBob, inOther}},
			{"nothing or end", []id.EventID{last, nothing}},
			{"MARTIAN report 11", []id.EventID{reports[11]}},
		} {
			got := searchAll(t, bob, mautrix.ReqSearch{SearchTerm: c.term, Keys: []string{"content.body"}})
			if !sameSet(got, c.want) {
				t.Fatalf("%q: got %v, want %v", c.term, got, c.want)
			}
		}
	})

	t.Run("context, profiles and state", func(t *testing.T) {
		var raw struct {
			SearchCategories struct {
				RoomEvents struct {
					Results []struct {
						Result  event.Event `json:"result"`
						Context struct {
							Start        string                       `json:"start"`
							End          string                       `json:"end"`
							ProfileInfo  map[string]map[string]string `json:"profile_info"`
							EventsBefore []event.Event                `json:"events_before"`
							EventsAfter  []event.Event                `json:"events_after"`
						} `json:"context"`
					} `json:"results"`
					State map[string][]event.Event `json:"state"`
				} `json:"room_events"`
			} `json:"search_categories"`
		}
		_, err := bob.MakeRequest(ctx, http.MethodPost, bob.BuildClientURL("v3", "search"), map[string]any{
			"search_categories": map[string]any{"room_events": map[string]any{
				"search_term": "number 5", "keys": []string{"content.body"}, "order_by": "recent",
				"event_context": map[string]any{"before_limit": 2, "after_limit": 1, "include_profile": true},
				"include_state": true,
			}},
		}, &raw)
		if err != nil {
			t.Fatal(err)
		}
		results := raw.SearchCategories.RoomEvents.Results
		if len(results) != 1 || results[0].Result.ID != reports[5] {
			t.Fatalf("results: %+v", results)
		}
		c := results[0].Context
		if len(c.EventsBefore) != 2 || c.EventsBefore[0].ID != reports[4] || c.EventsBefore[1].ID != reports[3] {
			t.Fatalf("events_before: %+v", c.EventsBefore)
		}
		if len(c.EventsAfter) != 1 || c.EventsAfter[0].ID != reports[6] {
			t.Fatalf("events_after: %+v", c.EventsAfter)
		}
		if c.Start == "" || c.End == "" {
			t.Fatalf("context tokens: %q %q", c.Start, c.End)
		}
		// The context's tokens continue in /messages.
		more, err := bob.Messages(ctx, room, c.Start, "", mautrix.DirectionBackward, nil, 1)
		if err != nil || len(more.Chunk) != 1 || more.Chunk[0].ID != reports[2] {
			t.Fatalf("/messages from the context's start: %v %v", more, err)
		}
		if p := c.ProfileInfo[alice.UserID.String()]; p["displayname"] != "Alice A" {
			t.Fatalf("profile_info: %+v", c.ProfileInfo)
		}
		state := raw.SearchCategories.RoomEvents.State[room.String()]
		if !slices.ContainsFunc(state, func(e event.Event) bool { return e.Type == event.StateCreate }) {
			t.Fatalf("state of the room: %+v", raw.SearchCategories.RoomEvents.State)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		for name, body := range map[string]any{
			"no categories": map[string]any{},
			"no term":       map[string]any{"search_categories": map[string]any{"room_events": map[string]any{}}},
			"bad order":     map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "order_by": "oldest"}}},
			"bad key":       map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "keys": []string{"content.foo"}}}},
			"bad group":     map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "groupings": map[string]any{"group_by": []any{map[string]any{"key": "type"}}}}}},
		} {
			_, err := bob.MakeRequest(ctx, http.MethodPost, bob.BuildClientURL("v3", "search"), body, nil)
			var herr mautrix.HTTPError
			if !errors.As(err, &herr) || herr.IsStatus(http.StatusBadRequest) == false {
				t.Fatalf("%s: %v", name, err)
			}
		}
		_, err := bob.Search(ctx, &mautrix.ReqSearch{SearchTerm: "x", NextBatch: "garbage"})
		if !errors.Is(err, mautrix.MInvalidParam) {
			t.Fatalf("bad next_batch: %v", err)
		}
		// Punctuation and stop words only: no results, no error.
		if r := search(t, bob, mautrix.ReqSearch{SearchTerm: `the ' \ " & | !`}); len(r.Results) != 0 || r.Count != 0 {
			t.Fatalf("stop words: %v", resultIDs(r))
		}
	})
}

func sameSet(a, b []id.EventID) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestSearchVisibilityAndRedaction(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	before := sendText(t, alice, room, "secret before bob joined")
	private, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := sendText(t, alice, private.RoomID, "secret in a room bob is not in")
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	during := sendText(t, alice, room, "secret while bob is here")
	doomed := sendText(t, alice, room, "secret to be redacted")
	caughtUp(t, bob, room, doomed)

	// Alice finds all four; bob only what he may see.
	if got := searchAll(t, alice, mautrix.ReqSearch{SearchTerm: "secret"}); !sameSet(got, []id.EventID{before, elsewhere, during, doomed}) {
		t.Fatalf("alice: %v", got)
	}
	r := search(t, bob, mautrix.ReqSearch{SearchTerm: "secret", OrderBy: "recent"})
	if got := resultIDs(r); !slices.Equal(got, []id.EventID{doomed, during}) || r.Count != 2 {
		t.Fatalf("bob: %v (count %d)", got, r.Count)
	}

	// A redacted event is no longer found, by anyone.
	if _, err := alice.RedactEvent(ctx, room, doomed); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := resultIDs(search(t, bob, mautrix.ReqSearch{SearchTerm: "redacted"})); len(got) != 0 {
			return fmt.Errorf("still found: %v", got)
		}
		return nil
	})
	if got := searchAll(t, alice, mautrix.ReqSearch{SearchTerm: "secret"}); slices.Contains(got, doomed) {
		t.Fatalf("alice finds the redacted event: %v", got)
	}

	// After bob leaves, later messages are not found; earlier ones are.
	if _, err := bob.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	afterLeave := sendText(t, alice, room, "secret after bob left")
	caughtUp(t, alice, room, afterLeave)
	if got := searchAll(t, bob, mautrix.ReqSearch{SearchTerm: "secret"}); !slices.Equal(got, []id.EventID{during}) {
		t.Fatalf("bob after leaving: %v", got)
	}
}

// adminUser registers an admin through shared-secret registration.
func adminUser(t *testing.T, hs, secret, username string) *mautrix.Client {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if _, err := cli.MakeRequest(ctx, http.MethodGet, hs+"/_synapse/admin/v1/register", nil, &nonce); err != nil {
		t.Fatal(err)
	}
	password := "pw-" + username
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(nonce.Nonce + "\x00" + username + "\x00" + password + "\x00admin"))
	var resp mautrix.RespRegister
	_, err = cli.MakeRequest(ctx, http.MethodPost, hs+"/_synapse/admin/v1/register", map[string]any{
		"nonce": nonce.Nonce, "username": username, "password": password, "admin": true, "mac": hex.EncodeToString(mac.Sum(nil)),
	}, &resp)
	if err != nil {
		t.Fatal(err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	return cli
}

func TestReports(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Registration.SharedSecret = "report-secret"
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	admin := adminUser(t, hs, "report-secret", "admin")
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Reported room"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	hidden := sendText(t, alice, room, "before bob")
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	bad := sendText(t, alice, room, "something offensive")
	caughtUp(t, bob, room, bad)

	// Success, and the spec's 404s.
	if err := bob.ReportEvent(ctx, room, bad, "offensive"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"not joined":     carol.ReportEvent(ctx, room, bad, "x"),
		"unknown event":  bob.ReportEvent(ctx, room, "$nope", "x"),
		"not visible":    bob.ReportEvent(ctx, room, hidden, "x"),
		"unknown room":   bob.ReportEvent(ctx, "!nope:"+serverName, bad, "x"),
		"room not found": carol.ReportRoom(ctx, "!nope:"+serverName, "x"),
	} {
		if !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Rooms and users may be reported without being joined.
	if err := carol.ReportRoom(ctx, room, "spam room"); err != nil {
		t.Fatal(err)
	}
	userReport := func(cli *mautrix.Client, user string, body any) error {
		_, err := cli.MakeRequest(ctx, http.MethodPost, cli.BuildClientURL("v3", "users", user, "report"), body, nil)
		return err
	}
	if err := userReport(carol, alice.UserID.String(), map[string]any{"reason": "spammer"}); err != nil {
		t.Fatal(err)
	}
	if err := userReport(carol, "@ghost:"+serverName, map[string]any{"reason": "x"}); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	var herr mautrix.HTTPError
	if err := userReport(carol, alice.UserID.String(), map[string]any{}); !errors.As(err, &herr) || herr.RespError == nil || herr.RespError.ErrCode != "M_MISSING_PARAM" {
		t.Fatalf("user report without reason: %v", err)
	}

	// The admin API: admins only.
	reportsURL := hs + "/_synapse/admin/v1/event_reports"
	if _, err := bob.MakeRequest(ctx, http.MethodGet, reportsURL, nil, nil); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("non-admin listing reports: %v", err)
	}
	var list struct {
		EventReports []struct {
			ID      int64  `json:"id"`
			EventID string `json:"event_id"`
			RoomID  string `json:"room_id"`
			UserID  string `json:"user_id"`
			Sender  string `json:"sender"`
			Reason  string `json:"reason"`
			Name    string `json:"name"`
		} `json:"event_reports"`
		Total int `json:"total"`
	}
	if _, err := admin.MakeRequest(ctx, http.MethodGet, reportsURL, nil, &list); err != nil {
		t.Fatal(err)
	}
	if list.Total != 1 || len(list.EventReports) != 1 {
		t.Fatalf("reports: %+v", list)
	}
	rep := list.EventReports[0]
	if rep.EventID != bad.String() || rep.RoomID != room.String() || rep.UserID != bob.UserID.String() ||
		rep.Sender != alice.UserID.String() || rep.Reason != "offensive" || rep.Name != "Reported room" {
		t.Fatalf("report: %+v", rep)
	}
	var one struct {
		ID        int64 `json:"id"`
		EventJSON struct {
			EventID string `json:"event_id"`
			Type    string `json:"type"`
			Content struct {
				Body string `json:"body"`
			} `json:"content"`
		} `json:"event_json"`
	}
	if _, err := admin.MakeRequest(ctx, http.MethodGet, fmt.Sprintf("%s/%d", reportsURL, rep.ID), nil, &one); err != nil {
		t.Fatal(err)
	}
	if one.ID != rep.ID || one.EventJSON.Type != "m.room.message" || one.EventJSON.Content.Body != "something offensive" {
		t.Fatalf("report details: %+v", one)
	}
	if _, err := bob.MakeRequest(ctx, http.MethodGet, fmt.Sprintf("%s/%d", reportsURL, rep.ID), nil, nil); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("non-admin reading a report: %v", err)
	}
	if _, err := admin.MakeRequest(ctx, http.MethodGet, reportsURL+"/99999", nil, nil); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("unknown report: %v", err)
	}
	if _, err := admin.MakeRequest(ctx, http.MethodGet, reportsURL+"/abc", nil, nil); !errors.Is(err, mautrix.MInvalidParam) {
		t.Fatalf("bad report ID: %v", err)
	}
	// Filters.
	if _, err := admin.MakeRequest(ctx, http.MethodGet, reportsURL+"?user_id="+carol.UserID.String(), nil, &list); err != nil || list.Total != 0 {
		t.Fatalf("filtered by another reporter: %+v %v", list, err)
	}
	if _, err := admin.MakeRequest(ctx, http.MethodDelete, fmt.Sprintf("%s/%d", reportsURL, rep.ID), nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.MakeRequest(ctx, http.MethodGet, reportsURL, nil, &list); err != nil || list.Total != 0 {
		t.Fatalf("after delete: %+v %v", list, err)
	}
}
