package clientapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func sendRelated(t *testing.T, cli *mautrix.Client, roomID id.RoomID, evType event.Type, content map[string]any) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, evType, content)
	if err != nil {
		t.Fatalf("%s sends %v: %v", cli.UserID, content, err)
	}
	return resp.EventID
}

func relatesTo(relType string, parent id.EventID) map[string]any {
	return map[string]any{"rel_type": relType, "event_id": parent.String()}
}

// rawGet fetches a client-API URL as a JSON object.
func rawGet(t *testing.T, cli *mautrix.Client, path ...any) map[string]any {
	t.Helper()
	var out map[string]any
	if _, err := cli.MakeRequest(context.Background(), http.MethodGet, cli.BuildClientURL(path...), nil, &out); err != nil {
		t.Fatalf("GET %v: %v", path, err)
	}
	return out
}

// relationsOf returns unsigned."m.relations" of a raw event.
func relationsOf(ev any) map[string]any {
	m, _ := ev.(map[string]any)
	u, _ := m["unsigned"].(map[string]any)
	r, _ := u["m.relations"].(map[string]any)
	return r
}

func TestRelationsAndThreads(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	outsider := newUser(t, hs, "outsider")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoom(ctx, roomID.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	msg := event.EventMessage
	root := sendText(t, alice, roomID, "original")
	t1 := sendRelated(t, bob, roomID, msg, map[string]any{"msgtype": "m.text", "body": "t1", "m.relates_to": relatesTo("m.thread", root)})
	t2 := sendRelated(t, alice, roomID, msg, map[string]any{"msgtype": "m.text", "body": "t2", "m.relates_to": relatesTo("m.thread", root)})
	ref := sendRelated(t, alice, roomID, msg, map[string]any{"msgtype": "m.text", "body": "ref", "m.relates_to": relatesTo("m.reference", root)})
	edit := func(cli *mautrix.Client, body string) id.EventID {
		return sendRelated(t, cli, roomID, msg, map[string]any{"msgtype": "m.text", "body": "* " + body,
			"m.new_content": map[string]any{"msgtype": "m.text", "body": body}, "m.relates_to": relatesTo("m.replace", root)})
	}
	edit1 := edit(alice, "first edit")
	edit2 := edit(alice, "second edit")
	bobEdit := edit(bob, "not bob's to edit") // invalid: another sender
	t2Edit := sendRelated(t, alice, roomID, msg, map[string]any{"msgtype": "m.text", "body": "* t2 edited",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "t2 edited"}, "m.relates_to": relatesTo("m.replace", t2)})
	reaction := sendRelated(t, carol, roomID, event.EventReaction, map[string]any{"m.relates_to": map[string]any{
		"rel_type": "m.annotation", "event_id": t1.String(), "key": "👍"}})
	caughtUp(t, alice, roomID, reaction)

	all, err := carol.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{})
	if err != nil {
		t.Fatal(err)
	}
	wantAll := []id.EventID{bobEdit, edit2, edit1, ref, t2, t1}
	if len(all.Chunk) != len(wantAll) {
		t.Fatalf("relations: %d events, want %d", len(all.Chunk), len(wantAll))
	}
	for i, e := range all.Chunk {
		if e.ID != wantAll[i] {
			t.Fatalf("relations[%d] = %s, want %s", i, e.ID, wantAll[i])
		}
	}
	thread, err := carol.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread, EventType: msg})
	if err != nil || len(thread.Chunk) != 2 || thread.Chunk[0].ID != t2 || thread.Chunk[1].ID != t1 {
		t.Fatalf("thread relations: %+v %v", thread, err)
	}
	// Pagination: one at a time, forwards.
	var paged []id.EventID
	from := ""
	for range 10 {
		page, err := carol.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{Dir: mautrix.DirectionForward, Limit: 2, From: from})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Chunk {
			paged = append(paged, e.ID)
		}
		if page.NextBatch == "" {
			break
		}
		from = page.NextBatch
	}
	if len(paged) != 6 || paged[0] != t1 || paged[5] != bobEdit {
		t.Fatalf("forward pages %v", paged)
	}
	// Recursion reaches the reaction to a thread reply.
	rec, err := carol.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{Recurse: true})
	if err != nil || len(rec.Chunk) != 8 || rec.Chunk[0].ID != reaction || rec.RecursionDepth == 0 {
		t.Fatalf("recursive relations: %d events, depth %d, %v", len(rec.Chunk), rec.RecursionDepth, err)
	}
	// A user who may not see the parent gets 404.
	if _, err := outsider.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{}); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("outsider relations: %v", err)
	}

	// Bundled aggregations on the root.
	ev := rawGet(t, alice, "v3", "rooms", roomID, "event", root)
	if body := ev["content"].(map[string]any)["body"]; body != "original" {
		t.Fatalf("original content replaced: %v", body)
	}
	rels := relationsOf(ev)
	th, _ := rels["m.thread"].(map[string]any)
	if th == nil || th["count"] != 2.0 || th["current_user_participated"] != true {
		t.Fatalf("m.thread bundle %v", rels["m.thread"])
	}
	latest, _ := th["latest_event"].(map[string]any)
	if latest["event_id"] != t2.String() {
		t.Fatalf("thread latest_event %v", th["latest_event"])
	}
	// The latest event carries its own aggregations: its edit.
	if rp, _ := relationsOf(latest)["m.replace"].(map[string]any); rp["event_id"] != t2Edit.String() {
		t.Fatalf("latest_event's m.replace %v, want %s", relationsOf(latest), t2Edit)
	}
	if rp, _ := rels["m.replace"].(map[string]any); rp["event_id"] != edit2.String() {
		t.Fatalf("m.replace bundle %v, want %s", rels["m.replace"], edit2)
	}
	refs, _ := rels["m.reference"].(map[string]any)
	if chunk, _ := refs["chunk"].([]any); len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != ref.String() {
		t.Fatalf("m.reference bundle %v", rels["m.reference"])
	}
	// Carol never took part in the thread.
	if th := relationsOf(rawGet(t, carol, "v3", "rooms", roomID, "event", root))["m.thread"].(map[string]any); th["current_user_participated"] != false {
		t.Fatalf("carol participated? %v", th)
	}

	// /threads lists the root; include=participated depends on the user.
	threads := rawGet(t, bob, "v1", "rooms", roomID, "threads")
	if chunk, _ := threads["chunk"].([]any); len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != root.String() ||
		relationsOf(chunk[0])["m.thread"] == nil {
		t.Fatalf("threads %v", threads)
	}
	var part map[string]any
	if _, err := carol.MakeRequest(ctx, http.MethodGet, carol.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "rooms", roomID, "threads"},
		map[string]string{"include": "participated"}), nil, &part); err != nil {
		t.Fatal(err)
	}
	if chunk, _ := part["chunk"].([]any); len(chunk) != 0 {
		t.Fatalf("carol's participated threads %v", part)
	}

	// Redacting the latest edit falls back to the previous one.
	if _, err := alice.RedactEvent(ctx, roomID, edit2); err != nil {
		t.Fatal(err)
	}
	last := sendText(t, alice, roomID, "done")
	caughtUp(t, alice, roomID, last)
	msgs, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 20)
	if err != nil {
		t.Fatal(err)
	}
	bundledInMessages := false
	for _, e := range msgs.Chunk {
		if e.ID == root && e.Unsigned.Relations != nil {
			_, bundledInMessages = e.Unsigned.Relations.Raw["m.thread"]
		}
	}
	if !bundledInMessages {
		t.Fatal("/messages does not bundle the root's thread")
	}
	if rp, _ := relationsOf(rawGet(t, alice, "v3", "rooms", roomID, "event", root))["m.replace"].(map[string]any); rp["event_id"] != edit1.String() {
		t.Fatalf("m.replace after redacting the latest edit: %v, want %s", rp, edit1)
	}
}

// /sync timelines carry bundled aggregations, on initial and on
// incremental syncs (the latter read them with the snapshot's last batch).
func TestSyncBundlesRelations(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	if _, err := bob.JoinRoom(ctx, roomID.String(), nil); err != nil {
		t.Fatal(err)
	}
	msg := event.EventMessage
	reply := func(root id.EventID, body string) id.EventID {
		return sendRelated(t, bob, roomID, msg, map[string]any{"msgtype": "m.text", "body": body, "m.relates_to": relatesTo("m.thread", root)})
	}
	// threadOf returns the root's bundled m.thread in a raw sync response.
	threadOf := func(resp map[string]any, root id.EventID) map[string]any {
		rooms, _ := resp["rooms"].(map[string]any)
		join, _ := rooms["join"].(map[string]any)
		room, _ := join[roomID.String()].(map[string]any)
		tl, _ := room["timeline"].(map[string]any)
		events, _ := tl["events"].([]any)
		for _, e := range events {
			if e.(map[string]any)["event_id"] == root.String() {
				th, _ := relationsOf(e)["m.thread"].(map[string]any)
				return th
			}
		}
		t.Fatalf("root %s not in the sync timeline %v", root, tl)
		return nil
	}
	rawSync := func(since string) map[string]any {
		q := map[string]string{"timeout": "0"}
		if since != "" {
			q["since"] = since
		}
		var out map[string]any
		if _, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, q), nil, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	root := sendText(t, alice, roomID, "root")
	r1 := reply(root, "r1")
	caughtUp(t, alice, roomID, r1)
	initial := rawSync("")
	if th := threadOf(initial, root); th["count"] != float64(1) || th["current_user_participated"] != true {
		t.Fatalf("initial sync: root's m.thread %v, want count 1, participated (alice sent the root)", th)
	}

	root2 := sendText(t, alice, roomID, "root 2")
	r2 := reply(root2, "r2")
	r3 := reply(root2, "r3")
	caughtUp(t, alice, roomID, r3)
	th := threadOf(rawSync(initial["next_batch"].(string)), root2)
	latest, _ := th["latest_event"].(map[string]any)
	if th["count"] != float64(2) || latest["event_id"] != r3.String() {
		t.Fatalf("incremental sync: root 2's m.thread %v, want count 2 and latest %s (not %s)", th, r3, r2)
	}
}
