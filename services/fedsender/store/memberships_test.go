package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// JoinedServers walks the joined-members index one server at a time; over
// random membership changes of users of several servers in two rooms it
// must answer what SELECT DISTINCT over the room's joined rows answers,
// inside a consumer's transaction and on the pool.
func TestJoinedServersMatchesDistinct(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	rooms := []string{"!a:ours.test", "!b:ours.test"}
	servers := []string{"a.test", "b.test", "ours.test", "z.test", "m-1.test"}
	memberships := []string{"join", "join", "leave", "invite", "ban"}
	rng := rand.New(rand.NewPCG(7, 20))
	distinct := func(room string) []string {
		rows, err := st.Pool().Query(ctx, `SELECT DISTINCT server_name FROM memberships
			WHERE room_id = $1 AND membership = 'join' ORDER BY server_name`, room)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for seq := uint64(1); seq <= 300; seq++ {
		room := rooms[rng.IntN(len(rooms))]
		var changes []store.Member
		for range 1 + rng.IntN(3) {
			server := servers[rng.IntN(len(servers))]
			user := fmt.Sprintf("@u%d:%s", rng.IntN(4), server)
			if slices.ContainsFunc(changes, func(m store.Member) bool { return m.UserID == user }) {
				continue // one change per user, as in a state delta
			}
			changes = append(changes, store.Member{UserID: user, ServerName: server,
				Membership: memberships[rng.IntN(len(memberships))], EventID: fmt.Sprintf("$e%d-%d", seq, len(changes))})
		}
		var inTx []string
		if _, err := st.Apply(ctx, "test", seq, func(tx *store.Tx) error {
			if seq == 1 {
				for _, r := range rooms {
					if err := tx.AddRoom(ctx, r, nil); err != nil {
						return err
					}
				}
			}
			if err := tx.SetMembers(ctx, room, changes); err != nil {
				return err
			}
			inTx, err = tx.JoinedServers(ctx, room)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		want := distinct(room)
		onPool, err := st.JoinedServers(ctx, room)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(inTx, want) || !slices.Equal(onPool, want) {
			t.Fatalf("change %d: in the transaction %v, on the pool %v, want %v", seq, inTx, onPool, want)
		}
	}
}
