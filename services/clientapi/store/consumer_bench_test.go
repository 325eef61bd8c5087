package store

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// BenchmarkApplyWithNotifications stores batches shaped like the
// closed-loop bench's (32 rooms of 33 members, 14 messages per batch in 14
// rooms, each notifying the 32 other members) and reports, per batch, the
// CPU of this process (Go) and of the PostgreSQL cluster's processes.
func BenchmarkApplyWithNotifications(b *testing.B) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(b), 4)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const rooms, members, perBatch = 32, 33, 14
	roomID := func(r int) string { return fmt.Sprintf("!room%02dabcdefghijkl:localhost", r) }
	userID := func(r, m int) string { return fmt.Sprintf("@lg1763900000-member%d:localhost", r*members+m) }
	for r := range rooms {
		var in []Input
		state := func(id, typ, key, membership string) Input {
			js := []byte(`{"type":"` + typ + `","sender":"` + userID(r, 0) + `","content":{}}`)
			return Input{
				Event: Event{EventID: id, RoomID: roomID(r), Type: typ, StateKey: &key, Sender: userID(r, 0), Membership: membership, JSON: js},
				Added: []StateEvent{{EventID: id, Type: typ, StateKey: key, Sender: userID(r, 0), Membership: membership, JSON: js}},
			}
		}
		in = append(in, state(fmt.Sprintf("$create%d", r), "m.room.create", "", ""))
		for m := range members {
			in = append(in, state(fmt.Sprintf("$join%d-%d", r, m), "m.room.member", userID(r, m), MembershipJoin))
		}
		in = append(in, state(fmt.Sprintf("$pl%d", r), "m.room.power_levels", "", ""))
		if _, err := st.Apply(ctx, in); err != nil {
			b.Fatal(err)
		}
	}
	eval := func(_ context.Context, _ Reader, a Applied, pc PushContext) (PushOutcome, error) {
		ev := a.Event
		out := PushOutcome{OwnRead: &OwnRead{UserID: ev.Sender, RoomID: ev.RoomID, ThreadID: "main"}}
		for _, u := range pc.Members {
			if u != ev.Sender {
				out.Notifications = append(out.Notifications, Notification{UserID: u, RoomID: ev.RoomID, EventID: ev.EventID,
					ThreadID: "main", Pos: a.Pos, Actions: []byte(`["notify"]`), TS: 1763900000000})
			}
		}
		return out, nil
	}
	var pid int
	if err := st.db.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		b.Fatal(err)
	}
	postmaster := parentOf(b, pid)
	next := 0
	batch := func() []Input {
		in := make([]Input, perBatch)
		for k := range in {
			r := (next*perBatch + k) % rooms
			id := fmt.Sprintf("$msg%d-%d", next, k)
			sender := userID(r, 1+k%3)
			in[k] = Input{Event: Event{EventID: id, RoomID: roomID(r), Type: "m.room.message", Sender: sender,
				JSON: []byte(`{"type":"m.room.message","sender":"` + sender + `","origin_server_ts":1763900000000,"content":{"msgtype":"m.text","body":"hello"}}`)}}
		}
		next++
		return in
	}
	for range 50 { // warm up: tables with some history
		if _, err := st.ApplyWith(ctx, batch(), eval); err != nil {
			b.Fatal(err)
		}
	}
	pg0, go0 := clusterCPU(b, postmaster), selfCPU()
	b.ResetTimer()
	for range b.N {
		if _, err := st.ApplyWith(ctx, batch(), eval); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	pg1, go1 := clusterCPU(b, postmaster), selfCPU()
	b.ReportMetric(float64((pg1-pg0).Microseconds())/1000/float64(b.N), "pg-cpu-ms/batch")
	b.ReportMetric(float64((go1-go0).Microseconds())/1000/float64(b.N), "go-cpu-ms/batch")
}

// parentOf is a process's parent.
func parentOf(b *testing.B, pid int) int {
	f := procStat(b, pid)
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		b.Fatal(err)
	}
	return ppid
}

// procStat is /proc/pid/stat's fields after the command name (state first).
func procStat(b *testing.B, pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Skip("no /proc: ", err)
	}
	s := string(raw)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// clusterCPU is the user and system CPU of postmaster's children so far.
func clusterCPU(b *testing.B, postmaster int) time.Duration {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		b.Skip("no /proc: ", err)
	}
	var ticks int64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(raw)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 || f[1] != strconv.Itoa(postmaster) {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ = 100
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
