package loadgen

import (
	"context"
	"fmt"
	"time"
)

// Scenario 4: big account sync. One user in Rooms rooms of Members members
// each (the other members are Members-1 users who join every room), with
// Messages messages in each room. Then
// the user's initial /sync with timeline limits 1, 5 and 20 and
// lazy-loaded members, one initial /sync without lazy loading for
// comparison, and incremental /syncs.
var bigSyncScenario = Scenario{Name: "bigsync", Title: "big account initial and incremental /sync", Run: runBigSync}

func runBigSync(ctx context.Context, e *Env) error {
	o := e.Opts.BigSync
	users, err := e.NewUsers(ctx, "bigsync", "member", o.Members)
	if err != nil {
		return err
	}
	main := users[0]
	// The big account creates every room; the others join them all.
	rooms, err := e.CreateRooms(ctx, "bigsync", users[:1], o.Rooms)
	if err != nil {
		return err
	}
	if err := e.JoinAll(ctx, "bigsync", users[1:], rooms); err != nil {
		return err
	}
	// Messages after the joins, so that the timeline limits choose between
	// messages rather than between the membership events at the end.
	if o.Messages > 0 {
		rec := newRecorder()
		total := o.Rooms * o.Messages
		stop := startProgress(e.Opts.Progress, "bigsync: messages", rec, total, 0)
		err := e.parallel(ctx, total, func(i int) error {
			t := time.Now()
			err := e.retryLimited(ctx, func() error {
				_, err := users[i%len(users)].Send(ctx, rooms[i%len(rooms)], fmt.Sprintf("history %d", i))
				return err
			})
			rec.Observe(time.Since(t), err)
			return err
		})
		rec.Stop()
		stop()
		e.AddPhase(rec.Summary("bigsync", "setup/messages", map[string]any{"messages": total}))
		if err != nil {
			return err
		}
	}
	params := map[string]any{"rooms": o.Rooms, "members": o.Members, "messages_per_room": o.Messages}

	var since string
	for _, tc := range []struct {
		limit int
		lazy  bool
	}{{1, true}, {5, true}, {20, true}, {20, false}} {
		filter := fmt.Sprintf(`{"room":{"timeline":{"limit":%d},"state":{"lazy_load_members":%t}}}`, tc.limit, tc.lazy)
		name := fmt.Sprintf("initial/timeline=%d", tc.limit)
		if tc.lazy {
			name += "/lazy_members"
		} else {
			name += "/all_members"
		}
		rec := newRecorder()
		stop := startProgress(e.Opts.Progress, "bigsync: "+name, rec, o.Repeats, 0)
		var last *SyncResponse
		for range o.Repeats {
			t := time.Now()
			r, err := main.Sync(ctx, "", filter, 0)
			rec.Observe(time.Since(t), err)
			e.waitLimited(ctx, err)
			if err == nil {
				last = r
			}
		}
		rec.Stop()
		stop()
		p := rec.Summary("bigsync", name, merge(params, map[string]any{"timeline_limit": tc.limit, "lazy_load_members": tc.lazy}))
		if last != nil {
			p.Extra = describeSync(last, o.Rooms)
			since = last.NextBatch
		}
		e.AddPhase(p)
	}
	if since == "" {
		return fmt.Errorf("no initial /sync succeeded")
	}

	// Incremental /sync with nothing new: the cost of an idle poll.
	rec := newRecorder()
	stop := startProgress(e.Opts.Progress, "bigsync: incremental/idle", rec, o.Incremental, 0)
	for range o.Incremental {
		t := time.Now()
		r, err := main.Sync(ctx, since, "", 0)
		rec.Observe(time.Since(t), err)
		e.waitLimited(ctx, err)
		if err == nil {
			since = r.NextBatch
		}
	}
	rec.Stop()
	stop()
	e.AddPhase(rec.Summary("bigsync", "incremental/idle", params))

	// Incremental /sync carrying one new message: a member sends, then the
	// big account long-polls until the message is there. The latency is
	// that of the /sync call that returned it.
	rec = newRecorder()
	stop = startProgress(e.Opts.Progress, "bigsync: incremental/one_new_event", rec, o.Incremental, 0)
	for i := range o.Incremental {
		sender := users[1+i%max(1, len(users)-1)]
		if len(users) == 1 {
			sender = main
		}
		id, err := sender.Send(ctx, rooms[i%len(rooms)], fmt.Sprintf("incremental %d", i))
		if err != nil {
			rec.Observe(0, err)
			e.waitLimited(ctx, err)
			continue
		}
		for attempt := 0; ; attempt++ {
			t := time.Now()
			r, err := main.Sync(ctx, since, "", 5*time.Second)
			d := time.Since(t)
			if err != nil {
				rec.Observe(d, err)
				break
			}
			since = r.NextBatch
			if hasEvent(r, id) {
				rec.Observe(d, nil)
				break
			}
			if attempt == 3 {
				rec.Observe(d, &MatrixError{Errcode: "NOT_DELIVERED"})
				break
			}
		}
	}
	rec.Stop()
	stop()
	e.AddPhase(rec.Summary("bigsync", "incremental/one_new_event", params))
	return nil
}

// describeSync reports an initial /sync's size and how many distinct
// member events it carried, which shows whether lazy loading was honoured.
func describeSync(r *SyncResponse, wantRooms int) map[string]any {
	members, stateEvents := 0, 0
	for _, room := range r.Rooms.Join {
		// An event may come in both state and timeline (some servers repeat
		// lazy-loaded senders' members in state): count it once.
		seen := map[string]bool{}
		for _, ev := range append(room.State.Events, room.Timeline.Events...) {
			if ev.StateKey == nil || seen[ev.EventID] {
				continue
			}
			seen[ev.EventID] = true
			stateEvents++
			if ev.Type == "m.room.member" {
				members++
			}
		}
	}
	rooms := max(1, len(r.Rooms.Join))
	return map[string]any{
		"bytes":                  r.Bytes,
		"joined_rooms":           len(r.Rooms.Join),
		"expected_rooms":         wantRooms,
		"member_events":          members,
		"member_events_per_room": float64(members) / float64(rooms),
		"state_events_per_room":  float64(stateEvents) / float64(rooms),
	}
}

func hasEvent(r *SyncResponse, id string) bool {
	for _, room := range r.Rooms.Join {
		for _, ev := range room.Timeline.Events {
			if ev.EventID == id {
				return true
			}
		}
	}
	return false
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
