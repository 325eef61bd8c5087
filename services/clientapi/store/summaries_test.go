package store

import (
	"context"
	"fmt"
	"maps"
	"math/rand"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// The kept room summaries always equal aggregating current state (the
// definition), for any reader, through random joins, invites, leaves,
// profile changes (which move a member to the end of the hero order),
// names and aliases set and removed, state resets, messages, and batches
// that mix them, with and without push evaluation.
func TestRoomSummariesMatchCurrentState(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	rng := rand.New(rand.NewSource(11))
	rooms := []string{"!r1:x", "!r2:x", "!r3:x"}
	users := make([]string, 9)
	for i := range users {
		users[i] = fmt.Sprintf("@u%d:x", i)
	}
	next := 0
	// current[room][type|key] is the event ID in the state, to remove.
	current := map[string]map[string]string{}
	stateInput := func(room, typ, key, membership string) Input {
		next++
		id := fmt.Sprintf("$s%d", next)
		js := []byte(fmt.Sprintf(`{"type":%q,"state_key":%q,"content":{"membership":%q}}`, typ, key, membership))
		in := Input{
			Event: Event{EventID: id, RoomID: room, Type: typ, StateKey: &key, Sender: users[0], Membership: membership, JSON: js},
			Added: []StateEvent{{EventID: id, Type: typ, StateKey: key, Sender: users[0], Membership: membership, JSON: js}},
		}
		if current[room] == nil {
			current[room] = map[string]string{}
		}
		current[room][typ+"|"+key] = id
		return in
	}
	reset := func(room, typ, key string) Input { // the state loses the event, none replaces it
		next++
		id := fmt.Sprintf("$m%d", next)
		old := current[room][typ+"|"+key]
		delete(current[room], typ+"|"+key)
		return Input{Event: Event{EventID: id, RoomID: room, Type: "m.room.message", Sender: users[0], JSON: []byte(`{}`)},
			RemovedIDs: []string{old}}
	}
	message := func(room string) Input {
		next++
		return Input{Event: Event{EventID: fmt.Sprintf("$m%d", next), RoomID: room, Type: "m.room.message", Sender: users[0],
			JSON: []byte(`{"type":"m.room.message","content":{}}`)}}
	}
	noPush := func(context.Context, Reader, Applied, PushContext) (PushOutcome, error) { return PushOutcome{}, nil }

	check := func(step int) {
		t.Helper()
		for _, self := range []string{users[0], users[rng.Intn(len(users))], "@stranger:x"} {
			got, err := st.Reader().RoomSummaries(ctx, rooms, self)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]RoomSummary{}
			rows, err := st.db.Query(ctx, `SELECT room_id,
					count(*) FILTER (WHERE type = 'm.room.member' AND membership = 'join'),
					count(*) FILTER (WHERE type = 'm.room.member' AND membership = 'invite'),
					bool_or(type <> 'm.room.member'),
					COALESCE((array_agg(state_key ORDER BY pos, state_key) FILTER (
						WHERE type = 'm.room.member' AND membership IN ('join', 'invite') AND state_key <> $2))[1:5], '{}')
				FROM current_state
				WHERE room_id = ANY($1) AND type IN ('m.room.member', 'm.room.name', 'm.room.canonical_alias')
				GROUP BY room_id`, rooms, self)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var room string
				var s RoomSummary
				if err := rows.Scan(&room, &s.Joined, &s.Invited, &s.Named, &s.Heroes); err != nil {
					t.Fatal(err)
				}
				if len(s.Heroes) == 0 {
					s.Heroes = nil
				}
				want[room] = s
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d, for %s: kept %+v, current state says %+v", step, self, got, want)
			}
		}
	}

	memberships := []string{MembershipJoin, MembershipJoin, MembershipInvite, MembershipLeave}
	for step := 0; step < 150; step++ {
		var batch []Input
		for range 1 + rng.Intn(4) {
			room := rooms[rng.Intn(len(rooms))]
			switch op := rng.Intn(10); {
			case op < 6:
				batch = append(batch, stateInput(room, typeMember, users[rng.Intn(len(users))], memberships[rng.Intn(len(memberships))]))
			case op < 7:
				batch = append(batch, stateInput(room, []string{"m.room.name", "m.room.canonical_alias"}[rng.Intn(2)], "", ""))
			case op < 8 && len(current[room]) > 0:
				keys := slices.Sorted(maps.Keys(current[room]))
				typ, key, _ := strings.Cut(keys[rng.Intn(len(keys))], "|")
				batch = append(batch, reset(room, typ, key))
			default:
				batch = append(batch, message(room))
			}
		}
		var err error
		if rng.Intn(2) == 0 {
			_, err = st.Apply(ctx, batch)
		} else {
			_, err = st.ApplyWith(ctx, batch, noPush)
		}
		if err != nil {
			t.Fatal(err)
		}
		if rng.Intn(5) == 0 { // a redelivery changes nothing
			if _, err := st.Apply(ctx, batch); err != nil {
				t.Fatal(err)
			}
		}
		check(step)
	}
}
