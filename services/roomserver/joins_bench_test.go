package roomserver

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// BenchmarkJoinLargeRoom measures a join into a room of 1,000, 5,000 and
// 10,000 local members as the client-API makes it: QueryRoomServers on
// the current state (is this server in the room?), then SendEvent of the
// join. Each size grows one room (untimed) and then times b.N joins. It
// reports the CPU per join of this process (cpu-µs/op) and of the
// room-server's PostgreSQL backends (pg-cpu-µs/op), and the wall time of
// the QueryRoomServers calls alone (qrs-µs/op). Run with
// go test -run '^$' -bench JoinLargeRoom -benchtime 50x ./services/roomserver.
func BenchmarkJoinLargeRoom(b *testing.B) {
	h := newHarness(b, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	members := 1
	join := func(user string) {
		tmpl := member(b, user, "join")
		if _, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: user, Event: tmpl}); err != nil {
			b.Fatal(err)
		}
		members++
	}
	for _, size := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("members=%d", size), func(b *testing.B) {
			for members < size {
				join(fmt.Sprintf("@u%d:%s", members, testServer))
			}
			pids := h.backendPIDs()
			cpu := func() (self, pg float64) {
				self = processCPU(os.Getpid())
				for _, p := range pids {
					pg += processCPU(p)
				}
				return self, pg
			}
			self0, pg0 := cpu()
			var qrs time.Duration
			b.ResetTimer()
			for range b.N {
				t := time.Now()
				resp, err := h.rs.QueryRoomServers(h.ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID})
				qrs += time.Since(t)
				if err != nil || !slices.Equal(resp.GetServerNames(), []string{testServer}) {
					b.Fatalf("QueryRoomServers: %v %v", resp.GetServerNames(), err)
				}
				join(fmt.Sprintf("@u%d:%s", members, testServer))
			}
			b.StopTimer()
			self1, pg1 := cpu()
			b.ReportMetric((self1-self0)*1e6/float64(b.N), "cpu-µs/op")
			b.ReportMetric((pg1-pg0)*1e6/float64(b.N), "pg-cpu-µs/op")
			b.ReportMetric(float64(qrs.Microseconds())/float64(b.N), "qrs-µs/op")
		})
	}
}
