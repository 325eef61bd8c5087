package roomserver

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// BenchmarkSendEvent measures SendEvent of one message at a time into one
// room, through the real stack (gRPC, signing with the key held from the
// key-server, PostgreSQL, publishing to JetStream). Besides ns/op and
// allocations it reports CPU
// time per event: of this process (room-server, key-server, the gRPC
// client; cpu-µs/op) and of the room-server's PostgreSQL backends
// (pg-cpu-µs/op). CPU time is what to compare on a shared machine:
// wall-clock time depends on what else runs. Run it with `make bench-go`.
func BenchmarkSendEvent(b *testing.B) {
	h := newHarness(b, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	tmpl := message(b, "hello, this is a benchmark message")
	send := func(i int) {
		_, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: tmpl,
			TransactionId: &roomserverv1.TransactionID{DeviceId: "BENCH", TxnId: fmt.Sprintf("b%d-%d", b.N, i)}})
		if err != nil {
			b.Fatal(err)
		}
	}
	for i := range 50 { // warm the caches and the pool's prepared statements
		send(-i - 1)
	}
	pids := h.backendPIDs()
	self0, pg0 := processCPU(os.Getpid()), 0.0
	for _, p := range pids {
		pg0 += processCPU(p)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		send(i)
	}
	b.StopTimer()
	self1, pg1 := processCPU(os.Getpid()), 0.0
	for _, p := range pids {
		pg1 += processCPU(p)
	}
	b.ReportMetric((self1-self0)*1e6/float64(b.N), "cpu-µs/op")
	b.ReportMetric((pg1-pg0)*1e6/float64(b.N), "pg-cpu-µs/op")
}

// backendPIDs lists the PostgreSQL backends of the room-server's pool.
func (h *harness) backendPIDs() []int {
	rows, err := h.svc.store.Pool().Query(h.ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, pid)
	}
	return out
}

// processCPU is a process's user+system CPU time in seconds (from
// /proc/<pid>/stat; 0 when it is gone).
func processCPU(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): utime and
	// stime are fields 14 and 15 of the whole line.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+2:])
	f := strings.Fields(rest)
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / clockTicks
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100
