package roomdir

import (
	"encoding/json"
	"testing"
)

func ev(t *testing.T, typ, stateKey string, content map[string]any, ts int64) StateEvent {
	t.Helper()
	raw, err := json.Marshal(map[string]any{"type": typ, "state_key": stateKey, "content": content, "sender": "@a:x", "origin_server_ts": ts})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := content["membership"].(string)
	return StateEvent{Type: typ, StateKey: stateKey, JSON: raw, Membership: m}
}

func TestEntryAndSummary(t *testing.T) {
	state := []StateEvent{
		ev(t, "m.room.create", "", map[string]any{"room_version": "11", "type": "m.space"}, 1),
		ev(t, "m.room.name", "", map[string]any{"name": "Space"}, 2),
		ev(t, "m.room.join_rules", "", map[string]any{"join_rule": "restricted",
			"allow": []any{map[string]any{"type": "m.room_membership", "room_id": "!a:x"}, map[string]any{"type": "other", "room_id": "!b:x"}}}, 3),
		ev(t, "m.room.history_visibility", "", map[string]any{"history_visibility": "world_readable"}, 3),
		ev(t, "m.room.member", "@a:x", map[string]any{"membership": "join"}, 4),
		ev(t, "m.room.member", "@b:x", map[string]any{"membership": "leave"}, 4),
		ev(t, SpaceChildType, "!late:x", map[string]any{"via": []any{"x"}}, 9),
		ev(t, SpaceChildType, "!early:x", map[string]any{"via": []any{"x"}}, 5),
		ev(t, SpaceChildType, "!ordered:x", map[string]any{"via": []any{"x"}, "order": "a", "suggested": true}, 10),
		ev(t, SpaceChildType, "!novia:x", map[string]any{}, 1),
		ev(t, SpaceChildType, "notaroom", map[string]any{"via": []any{"x"}}, 1),
	}
	entry, children, err := Summarize("!s:x", state, false)
	if err != nil {
		t.Fatal(err)
	}
	if entry.Name != "Space" || entry.NumJoinedMembers != 1 || !entry.WorldReadable || entry.JoinRule != "restricted" ||
		entry.RoomType == nil || *entry.RoomType != "m.space" || entry.RoomVersion != "11" || len(entry.AllowedRoomIDs) != 1 || entry.AllowedRoomIDs[0] != "!a:x" {
		t.Fatalf("entry: %+v", entry)
	}
	if len(entry.ChildrenState) != 3 {
		t.Fatalf("children_state: %d", len(entry.ChildrenState))
	}
	var got []string
	for _, c := range children {
		got = append(got, c.RoomID)
	}
	if want := []string{"!ordered:x", "!early:x", "!late:x"}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("children order %v, want %v", got, want)
	}
	if _, children, _ = Summarize("!s:x", state, true); len(children) != 1 || children[0].RoomID != "!ordered:x" {
		t.Fatalf("suggested only: %+v", children)
	}
	if e := EntryOf("!r:x", nil); e.JoinRule != "invite" {
		t.Fatalf("default join rule %q", e.JoinRule)
	}
}

func TestPage(t *testing.T) {
	entries := []Entry{{RoomID: "!b", NumJoinedMembers: 1, Name: "beta"}, {RoomID: "!a", NumJoinedMembers: 1, Topic: "alpha"}, {RoomID: "!c", NumJoinedMembers: 5}}
	two := int64(2)
	resp, err := Page(entries, Request{Limit: &two})
	if err != nil {
		t.Fatal(err)
	}
	chunk := resp["chunk"].([]Entry)
	if len(chunk) != 2 || chunk[0].RoomID != "!c" || chunk[1].RoomID != "!a" || resp["next_batch"] != "n2" || resp["total_room_count_estimate"] != 3 {
		t.Fatalf("first page: %+v", resp)
	}
	resp, _ = Page(entries, Request{Limit: &two, Since: "n2"})
	if chunk := resp["chunk"].([]Entry); len(chunk) != 1 || chunk[0].RoomID != "!b" || resp["prev_batch"] != "p0" {
		t.Fatalf("second page: %+v", resp)
	}
	req := Request{}
	req.Filter.GenericSearchTerm = "ALPHA"
	if resp, _ = Page(entries, req); len(resp["chunk"].([]Entry)) != 1 {
		t.Fatalf("search: %+v", resp)
	}
	for _, bad := range []string{"x1", "n", "n-1", "nx"} {
		if _, err := Page(entries, Request{Since: bad}); err != ErrInvalidToken {
			t.Errorf("since %q: %v", bad, err)
		}
	}
}
