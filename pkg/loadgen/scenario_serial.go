package loadgen

import (
	"context"
	"fmt"
	"time"
)

// Scenario 1: one client sends messages one after another into one room;
// the latency of a single send with no competing load.
var serialScenario = Scenario{Name: "serial", Title: "serial send latency (one client, one room)", Run: runSerial, Portable: true}

func runSerial(ctx context.Context, e *Env) error {
	users, err := e.NewUsers(ctx, "serial", "serial", 1)
	if err != nil {
		return err
	}
	rooms, err := e.CreateRooms(ctx, "serial", users, 1)
	if err != nil {
		return err
	}
	n := e.Opts.Serial.Messages
	rec := newRecorder()
	walBefore := readWAL(ctx, e.Opts.DatabaseURL)
	stop := startProgress(e.Opts.Progress, "serial: send", rec, n, 0)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		t := time.Now()
		_, err := users[0].Send(ctx, rooms[0], fmt.Sprintf("serial %d", i))
		rec.Observe(time.Since(t), err)
		e.waitLimited(ctx, err)
	}
	rec.Stop()
	stop()
	ph := rec.Summary("serial", "send", map[string]any{"messages": n})
	// One send at a time: the WAL syncs per event are the flushes a send
	// and its delivery wait for, one after another.
	ph.Extra = map[string]any{}
	readWAL(ctx, e.Opts.DatabaseURL).perEvent(walBefore, ph.Count, ph.Extra)
	e.AddPhase(ph)
	return ctx.Err()
}
