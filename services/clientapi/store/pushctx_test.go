package store

import (
	"context"
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
	if m := got["$root"].Members; len(m) != 1 || m[0] != alice || got["$root"].PowerLevels != nil || got["$root"].Create == nil {
		t.Errorf("$root: %+v", got["$root"])
	}
	if m := got["$after"].Members; len(m) != 2 || got["$after"].PowerLevels == nil {
		t.Errorf("$after: %+v", got["$after"])
	}
	// Redelivered: nothing is stored or evaluated again.
	clear(got)
	applied, err := st.ApplyWith(ctx, inputs, eval)
	if err != nil || len(applied) != 0 || len(got) != 0 {
		t.Fatalf("redelivery: applied %d, evaluated %d, %v", len(applied), len(got), err)
	}
}
