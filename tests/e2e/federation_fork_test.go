package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// link is a TCP relay to a federation listener that the test can cut: while
// down it closes the connections it holds and every new one at once, as a
// network partition would.
type link struct {
	addr   string
	target string
	l      net.Listener
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
}

func newLink(t *testing.T, target string) *link {
	t.Helper()
	// On an address freeAddr hands out, so that no server of the test is
	// told the port the kernel gives the link.
	l, err := net.Listen("tcp", freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	k := &link{addr: l.Addr().String(), target: target, l: l, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { l.Close(); k.setDown(true) })
	go k.serve()
	return k
}

func (k *link) serve() {
	for {
		in, err := k.l.Accept()
		if err != nil {
			return
		}
		go k.relay(in)
	}
}

// track adds c to the open connections, or closes it when the link is down.
func (k *link) track(c net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		c.Close()
		return false
	}
	k.conns[c] = true
	return true
}

func (k *link) relay(in net.Conn) {
	if !k.track(in) {
		return
	}
	out, err := net.Dial("tcp", k.target)
	if err != nil {
		in.Close()
		return
	}
	if !k.track(out) {
		in.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	in.Close()
	out.Close()
	k.mu.Lock()
	delete(k.conns, in)
	delete(k.conns, out)
	k.mu.Unlock()
}

func (k *link) setDown(down bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = down
	if down {
		for c := range k.conns {
			c.Close()
		}
		clear(k.conns)
	}
}

// allInOneSharedPG is allInOne on a database of the shared test PostgreSQL
// instead of a cluster of its own (three servers start faster).
func allInOneSharedPG(t *testing.T) *server {
	s := allInOne(t)
	s.procs[0].env = append(s.procs[0].env, "MYELIN_DATABASE_URL="+testkit.Postgres(t))
	return s
}

// TestFederationFork runs three servers in one room. c.test reaches a.test
// and b.test, and they reach it, only through links the test cuts: while c
// is partitioned, a and b send at once (forking the room's graph between
// them) and c sends too, and b and c both rename the room (conflicting
// state). Once the links are back, all three servers must end with the
// same current state and every message exactly once, each sender's in the
// order sent.
func TestFederationFork(t *testing.T) {
	ca := testkit.NewCA(t)
	servers := federating(t, ca, allInOneSharedPG, "a.test", "b.test", "c.test")
	a, b, c := servers[0], servers[1], servers[2]
	toA, toB, toC := newLink(t, a.fedAddr), newLink(t, b.fedAddr), newLink(t, c.fedAddr)
	maps := map[*fedServer]string{
		a: "b.test=" + b.fedAddr + ",c.test=" + toC.addr,
		b: "a.test=" + a.fedAddr + ",c.test=" + toC.addr,
		c: "a.test=" + toA.addr + ",b.test=" + toB.addr,
	}
	for s, m := range maps {
		s.procs[0].env = append(s.procs[0].env, "MYELIN_FEDERATION_SERVER_NAME_MAP="+m,
			"MYELIN_FEDERATION_SENDER_BACKOFF_MAX=1s")
	}
	startFederating(t, servers)
	partition := func(down bool) {
		for _, k := range []*link{toA, toB, toC} {
			k.setDown(down)
		}
	}

	ctx := context.Background()
	alice, bob, carol := register(t, a.url, "alice"), register(t, b.url, "bob"), register(t, c.url, "carol")
	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Fork"})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []*user{bob, carol} {
		if _, err := u.cli.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
			t.Fatalf("%s joins: %v", u.cli.UserID, err)
		}
	}
	// bob and carol may rename the room.
	var pl map[string]any
	if err := alice.cli.StateEvent(ctx, room.RoomID, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	pl["users"].(map[string]any)[string(bob.cli.UserID)] = 50
	pl["users"].(map[string]any)[string(carol.cli.UserID)] = 50
	plResp, err := alice.cli.SendStateEvent(ctx, room.RoomID, event.StatePowerLevels, "", pl)
	if err != nil {
		t.Fatal(err)
	}
	everyone := []*user{alice, bob, carol}
	for _, u := range everyone {
		fedEventually(t, fmt.Sprintf("%s sees everyone joined and the power levels", u.cli.UserID), func() error {
			st, err := u.cli.State(ctx, room.RoomID)
			if err != nil {
				return err
			}
			if ev := st[event.StatePowerLevels][""]; ev == nil || ev.ID != plResp.EventID {
				return fmt.Errorf("power levels %v", ev)
			}
			for _, m := range everyone {
				if ev := st[event.StateMember][string(m.cli.UserID)]; ev == nil || ev.Content.Raw["membership"] != "join" {
					return fmt.Errorf("%s not joined", m.cli.UserID)
				}
			}
			return nil
		})
	}

	partition(true)
	const n = 10
	sent := map[*user][]string{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, u := range everyone {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bodies []string
			for i := range n {
				b := fmt.Sprintf("fork %s %d", u.cli.UserID, i)
				if _, err := u.cli.SendText(ctx, room.RoomID, b); err != nil {
					t.Errorf("%s sends: %v", u.cli.UserID, err)
					return
				}
				bodies = append(bodies, b)
			}
			mu.Lock()
			sent[u] = bodies
			mu.Unlock()
		}()
	}
	for _, u := range []*user{bob, carol} {
		if _, err := u.cli.SendStateEvent(ctx, room.RoomID, event.StateRoomName, "", map[string]any{"name": "named by " + string(u.cli.UserID)}); err != nil {
			t.Fatalf("%s renames the room: %v", u.cli.UserID, err)
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// The partition held: c has none of a's or b's messages of the fork.
	cs := newRoomSyncer(carol)
	if err := cs.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := append(fromSender(cs.bodies[room.RoomID], alice), fromSender(cs.bodies[room.RoomID], bob)...); len(got) > 0 {
		t.Fatalf("c got messages through the partition: %v", got)
	}
	partition(false)
	// After the partition, one more message from each side.
	for _, u := range []*user{alice, carol} {
		sent[u] = append(sent[u], sendAll(t, u, room.RoomID, "healed "+string(u.cli.UserID), 1)...)
	}

	// Every server has every message, and all three the same current state.
	for _, u := range everyone {
		s := newRoomSyncer(u)
		for _, from := range everyone {
			fedEventually(t, fmt.Sprintf("%s has %s's messages", u.cli.UserID, from.cli.UserID), func() error {
				if err := s.sync(ctx); err != nil {
					return err
				}
				if got := fromSender(s.bodies[room.RoomID], from); len(got) < len(sent[from]) {
					return fmt.Errorf("%d of %d", len(got), len(sent[from]))
				}
				return nil
			})
			assertExactly(t, fmt.Sprintf("%s, messages of %s", u.cli.UserID, from.cli.UserID), fromSender(s.bodies[room.RoomID], from), sent[from])
		}
	}
	var states []string
	fedEventually(t, "the same current state on a, b and c", func() error {
		states = states[:0]
		for _, u := range everyone {
			st, err := u.cli.State(ctx, room.RoomID)
			if err != nil {
				return err
			}
			states = append(states, stateIDs(st))
		}
		if states[0] != states[1] || states[0] != states[2] {
			return fmt.Errorf("current state differs:\n a: %s\n b: %s\n c: %s", states[0], states[1], states[2])
		}
		return nil
	})
	if !strings.Contains(states[0], "m.room.name") {
		t.Fatalf("no room name in the state: %s", states[0])
	}
}

// fromSender keeps the bodies of the fork test's messages sent by u.
func fromSender(bodies []string, u *user) []string {
	var out []string
	for _, b := range bodies {
		if strings.HasPrefix(b, "fork "+string(u.cli.UserID)+" ") || strings.HasPrefix(b, "healed "+string(u.cli.UserID)+" ") {
			out = append(out, b)
		}
	}
	return out
}

// stateIDs is a room's current state as sorted "type|state_key=event_id".
func stateIDs(st mautrix.RoomStateMap) string {
	var out []string
	for typ, byKey := range st {
		for key, ev := range byKey {
			out = append(out, fmt.Sprintf("%s|%s=%s", typ.Type, key, ev.ID))
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}
