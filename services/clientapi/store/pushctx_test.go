package store

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// The push context found for each event: its thread through up to
// maxThreadHops relations, as of the event (a parent stored later in the
// same batch does not count), and the room's members and power levels,
// whether the batch stores the events in one run or one by one.
func TestApplyWithPushContext(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const room, alice, bob = "!r:x", "@alice:x", "@bob:x"
	empty := ""
	msg := func(id, relType, relTo string) Input {
		return Input{Event: Event{EventID: id, RoomID: room, Type: "m.room.message", Sender: alice,
			JSON: []byte(`{"type":"m.room.message","content":{}}`), RelatesTo: relTo, RelType: relType}}
	}
	state := func(id, typ, key, membership string) Input {
		js := []byte(`{"type":"` + typ + `","content":{}}`)
		return Input{
			Event: Event{EventID: id, RoomID: room, Type: typ, StateKey: &key, Sender: alice, Membership: membership, JSON: js},
			Added: []StateEvent{{EventID: id, Type: typ, StateKey: key, Sender: alice, Membership: membership, JSON: js}},
		}
	}
	inputs := []Input{
		state("$create", "m.room.create", empty, ""),
		state("$alice", "m.room.member", alice, MembershipJoin),
		msg("$root", "", ""),
		msg("$reply", "m.thread", "$root"),
		msg("$react", "m.annotation", "$reply"), // thread, one hop up
		msg("$ref", "m.reference", "$react"),    // thread, two hops up
		msg("$far", "m.reference", "$ref"),      // three hops: too far
		msg("$early", "m.reference", "$late"),   // its parent comes later
		msg("$late", "m.thread", "$root"),
		state("$pl", "m.room.power_levels", empty, ""),
		state("$bob", "m.room.member", bob, MembershipJoin),
		msg("$after", "m.annotation", "$late"),
	}
	want := map[string]string{"$reply": "$root", "$react": "$root", "$ref": "$root", "$late": "$root", "$after": "$root"}
	got := map[string]PushContext{}
	eval := func(_ context.Context, _ Reader, a Applied, pc PushContext) (PushOutcome, error) {
		got[a.Event.EventID] = pc
		return PushOutcome{}, nil
	}
	if _, err := st.ApplyWith(ctx, inputs, eval); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(inputs) {
		t.Fatalf("evaluated %d of %d events", len(got), len(inputs))
	}
	for id, pc := range got {
		if pc.Thread != want[id] {
			t.Errorf("%s: thread %q, want %q", id, pc.Thread, want[id])
		}
	}
	// Members lists only those that may differ from the default outcome:
	// none here (no stored rules, pushers or mentions).
	if pc := got["$root"]; len(pc.Members) != 0 || pc.MemberCount != 1 || pc.PowerLevels != nil || pc.Create == nil {
		t.Errorf("$root: %+v", got["$root"])
	}
	if pc := got["$after"]; pc.MemberCount != 2 || pc.PowerLevels == nil {
		t.Errorf("$after: %+v", got["$after"])
	}
	// Redelivered: nothing is stored or evaluated again.
	clear(got)
	applied, err := st.ApplyWith(ctx, inputs, eval)
	if err != nil || len(applied) != 0 || len(got) != 0 {
		t.Fatalf("redelivery: applied %d, evaluated %d, %v", len(applied), len(got), err)
	}
}

// A run of messages in several rooms (read together, in one statement
// per kind) gives each event its own room's members, rule positions,
// create and power levels.
func TestApplyWithPushContextRooms(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	empty := ""
	state := func(room, id, typ, key, membership string) Input {
		js := []byte(`{"type":"` + typ + `","content":{"r":"` + room + `"}}`)
		return Input{
			Event: Event{EventID: id, RoomID: room, Type: typ, StateKey: &key, Sender: "@alice:x", Membership: membership, JSON: js},
			Added: []StateEvent{{EventID: id, Type: typ, StateKey: key, Sender: "@alice:x", Membership: membership, JSON: js}},
		}
	}
	msg := func(room, id string) Input {
		return Input{Event: Event{EventID: id, RoomID: room, Type: "m.room.message", Sender: "@alice:x",
			JSON: []byte(`{"type":"m.room.message","content":{}}`)}}
	}
	// $m3 mentions bob (joined to !a:x) and dave (who left).
	mention := msg("!a:x", "$m3")
	mention.Event.JSON = []byte(`{"type":"m.room.message","content":{"m.mentions":{"user_ids":["@bob:x","@dave:x",7]}}}`)
	setup := []Input{
		state("!a:x", "$ca", "m.room.create", empty, ""),
		state("!a:x", "$a1", "m.room.member", "@alice:x", MembershipJoin),
		state("!a:x", "$a2", "m.room.member", "@bob:x", MembershipJoin),
		state("!a:x", "$pa", "m.room.power_levels", empty, ""),
		state("!b:x", "$cb", "m.room.create", empty, ""),
		state("!b:x", "$b1", "m.room.member", "@alice:x", MembershipJoin),
		state("!b:x", "$b2", "m.room.member", "@carol:x", MembershipJoin),
		state("!b:x", "$b3", "m.room.member", "@dave:x", MembershipLeave),
	}
	if _, err := st.Apply(ctx, setup); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutAccountData(ctx, "@carol:x", "", PushRulesType, []byte(`{"global":{}}`)); err != nil {
		t.Fatal(err)
	}
	got := map[string]PushContext{}
	eval := func(_ context.Context, _ Reader, a Applied, pc PushContext) (PushOutcome, error) {
		got[a.Event.EventID] = pc
		return PushOutcome{}, nil
	}
	if _, err := st.ApplyWith(ctx, []Input{msg("!a:x", "$m1"), msg("!b:x", "$m2"), mention}, eval); err != nil {
		t.Fatal(err)
	}
	// Members are those that may differ from the default outcome: carol
	// (stored rules) in !b:x, bob where mentioned.
	for id, want := range map[string][]string{"$m1": nil, "$m3": {"@bob:x"}} {
		pc := got[id]
		slices.Sort(pc.Members)
		if !slices.Equal(pc.Members, want) || len(pc.RulesPos) != 0 || pc.MemberCount != 2 ||
			!strings.Contains(string(pc.Create), "!a:x") || !strings.Contains(string(pc.PowerLevels), "!a:x") {
			t.Errorf("%s: %+v", id, pc)
		}
	}
	pc := got["$m2"]
	slices.Sort(pc.Members)
	if !slices.Equal(pc.Members, []string{"@carol:x"}) || pc.RulesPos["@carol:x"] == 0 || len(pc.RulesPos) != 1 || pc.MemberCount != 2 ||
		!strings.Contains(string(pc.Create), "!b:x") || pc.PowerLevels != nil {
		t.Errorf("$m2: %+v", pc)
	}
}
