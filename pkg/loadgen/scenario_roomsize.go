package loadgen

import (
	"context"
	"fmt"
	"time"
)

// Scenario roomsize (issue #20): does the size of a room change the cost
// of a message? One sender sends messages one after another into a room of
// 2 local members, then into a room of RoomSize.Members local members
// (10,000 by default). Each phase reports the send latency and the server
// CPU per message (the watched processes: myelin and its PostgreSQL); the
// large room's phase also reports the ratios to the small room's.
var roomSizeScenario = Scenario{Name: "roomsize", Title: "cost of a message by room size (one sender, 2 members vs many)", Run: runRoomSize}

// RoomSizeOptions: scenario roomsize.
type RoomSizeOptions struct {
	// Members of the large room, the sender included.
	Members int `json:"members"`
	// Messages sent into each room.
	Messages int `json:"messages"`
}

// settleAfterSends is how long the scenario waits after its last send
// before reading the server's CPU: the client-API stores and evaluates a
// message after the send is answered, and that work is part of its cost.
const settleAfterSends = time.Second

func runRoomSize(ctx context.Context, e *Env) error {
	o := e.Opts.RoomSize
	// Many users: through the appservice when there is one
	// (Registration.AppserviceToken: no password hashing), else as every
	// scenario does.
	users, err := e.newUsers(ctx, "roomsize", "rs", max(2, o.Members), e.Opts.Registration)
	if err != nil {
		return err
	}
	sender := users[0]
	rooms, err := e.CreateRooms(ctx, "roomsize", users[:1], 2)
	if err != nil {
		return err
	}
	if err := e.JoinAll(ctx, "roomsize", users[1:2], rooms[:1]); err != nil {
		return err
	}
	if err := e.JoinAll(ctx, "roomsize", users[1:], rooms[1:]); err != nil {
		return err
	}
	measure := func(room string, members int) (Phase, error) {
		time.Sleep(settleAfterSends) // the joins' processing out of the way
		cpuBefore, eachBefore := e.serverCPU()
		rec := newRecorder()
		name := fmt.Sprintf("send/members=%d", members)
		stop := startProgress(e.Opts.Progress, "roomsize: "+name, rec, o.Messages, 0)
		for i := range o.Messages {
			if ctx.Err() != nil {
				break
			}
			t := time.Now()
			_, err := sender.Send(ctx, room, fmt.Sprintf("room size %d: %d", members, i))
			rec.Observe(time.Since(t), err)
			e.waitLimited(ctx, err)
		}
		rec.Stop()
		stop()
		time.Sleep(settleAfterSends)
		cpuAfter, eachAfter := e.serverCPU()
		ph := rec.Summary("roomsize", name, map[string]any{"members": members, "messages": o.Messages})
		if ph.Extra == nil {
			ph.Extra = map[string]any{}
		}
		if cpuAfter >= 0 && cpuBefore >= 0 && ph.Count > 0 {
			ph.Extra["server_cpu_ms_per_event"] = (cpuAfter - cpuBefore) * 1000 / float64(ph.Count)
			for name, after := range eachAfter {
				ph.Extra[name+"_cpu_ms_per_event"] = (after - eachBefore[name]) * 1000 / float64(ph.Count)
			}
		}
		return ph, ctx.Err()
	}
	small, err := measure(rooms[0], 2)
	if err != nil {
		return err
	}
	e.AddPhase(small)
	large, err := measure(rooms[1], len(users))
	if err != nil {
		return err
	}
	if small.Latency.P50 > 0 {
		large.Extra["p50_ratio"] = large.Latency.P50 / small.Latency.P50
	}
	if c, ok := small.Extra["server_cpu_ms_per_event"].(float64); ok && c > 0 {
		if l, ok := large.Extra["server_cpu_ms_per_event"].(float64); ok {
			large.Extra["cpu_ratio"] = l / c
		}
	}
	e.AddPhase(large)
	return nil
}
