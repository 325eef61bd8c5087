package fedsender_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// BenchmarkRoomServers measures the two ways of finding the servers an
// event goes to, for a room of 100 members on 11 servers: the room-server's
// QueryRoomServers at the event (a gRPC call per event) and the sender's
// membership copy (one lookup for an event that changes no membership,
// inside the transaction that queues the event, which the sender uses). Run with
// go test -run '^$' -bench RoomServers ./services/fedsender.
func BenchmarkRoomServers(b *testing.B) {
	e := newEnv(b, envOpts{remotes: []string{"r1.test", "r2.test", "r3.test", "r4.test", "r5.test", "r6.test", "r7.test", "r8.test", "r9.test", "r10.test"}})
	ctx := context.Background()
	alice := e.user("alice")
	room := e.room(alice)
	for i := 0; i < 50; i++ {
		if _, err := e.rs.SendEvent(ctx, &roomserverv1.SendEventRequest{RoomId: room.String(), Sender: fmt.Sprintf("@u%d:%s", i, ourName),
			Event: &roomserverv1.EventTemplate{Type: "m.room.member", StateKey: ptr(fmt.Sprintf("@u%d:%s", i, ourName)), Content: []byte(`{"membership":"join"}`)}}); err != nil {
			b.Fatal(err)
		}
	}
	for i := 1; i <= 10; i++ {
		r := e.remotes[fmt.Sprintf("r%d.test", i)]
		for j := 0; j < 5; j++ {
			e.remoteJoin(r, room, fmt.Sprintf("m%d", j))
		}
	}
	last := send(b, alice, room, 1, "x")[0]
	b.Run("QueryRoomServers", func(b *testing.B) {
		for b.Loop() {
			resp, err := e.rs.QueryRoomServers(ctx, &roomserverv1.QueryRoomServersRequest{RoomId: room.String(), EventId: last})
			if err != nil || len(resp.GetServerNames()) != 11 {
				b.Fatalf("%v %v", resp, err)
			}
		}
	})
	st, err := store.Open(ctx, e.cfg.Database.URL, 4)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	testkit.Eventually(b, 30*time.Second, func() error {
		var n int
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM memberships WHERE room_id = $1 AND membership = 'join'`, room.String()).Scan(&n); err != nil || n != 101 {
			return fmt.Errorf("copy has %d members (%v)", n, err)
		}
		return nil
	})
	b.Run("MembershipCopy", func(b *testing.B) {
		for b.Loop() {
			// One lookup: a message changes no membership, so the servers
			// before it are the servers after it.
			servers, err := st.JoinedServers(ctx, room.String())
			if err != nil || len(servers) != 11 {
				b.Fatalf("%v %v", servers, err)
			}
		}
	})
}

func ptr[T any](v T) *T { return &v }
