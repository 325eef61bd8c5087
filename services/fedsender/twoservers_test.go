package fedsender_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Two Myelin servers: a user of b.test joins a room of a.test through b's
// federation sender (a's receiver answers make_join and send_join), and
// then messages go both ways, each server's sender to the other's
// receiver, and each side's user sees the other's messages once, in order.
func TestTwoMyelinServers(t *testing.T) {
	ca := testkit.NewCA(t)
	names := []string{"a.test", "b.test"}
	fedAddrs := map[string]string{}
	for _, n := range names {
		fedAddrs[n] = freeLoopback(t)
	}
	stacks := map[string]*stack.Stack{}
	for _, n := range names {
		cfg := stack.TestConfig(t)
		cfg.ServerName = n
		cfg.ClientAPI.RateLimit.Enabled = false
		cfg.Federation.Enabled = true
		cfg.Federation.Listen = fedAddrs[n]
		cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = ca.Issue(t, n)
		cfg.Federation.TrustedCAFiles = []string{ca.CertFile}
		cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
		cfg.Federation.ServerNameMap = map[string]string{}
		for _, other := range names {
			if other != n {
				cfg.Federation.ServerNameMap[other] = fedAddrs[other]
			}
		}
		cfg.FederationSender.BackoffMin = cfg.FederationSender.BackoffMin / 10
		stacks[n] = stack.StartWithConfig(t, cfg)
	}
	ctx := context.Background()
	alice := stackUser(t, stacks["a.test"], "alice")
	bob := stackUser(t, stacks["b.test"], "bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := rpc.Dial(stacks["b.test"].Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fsB := fedsenderv1.NewFederationSenderServiceClient(conn)
	if _, err := fsB.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: room.RoomID.String(), UserId: bob.UserID.String(),
		ServerNames: []string{"a.test"}}); err != nil {
		t.Fatalf("bob joins a.test's room through b.test's sender: %v", err)
	}
	rsB := roomserverv1.NewRoomServiceClient(conn)
	m, err := rsB.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: room.RoomID.String(), UserId: bob.UserID.String()})
	if err != nil || m.GetMembership() != "join" {
		t.Fatalf("bob's membership on b.test: %v %v", err, m)
	}
	// a.test learned of bob's join from send_join.
	eventually(t, func() error { return joined(alice, room.RoomID, bob.UserID) })

	fromA := send(t, alice, room.RoomID, 5, "from a")
	fromB := send(t, bob, room.RoomID, 5, "from b")
	eventually(t, func() error { return seesInOrder(bob, room.RoomID, fromA) })
	eventually(t, func() error { return seesInOrder(alice, room.RoomID, fromB) })

	// EDUs across: alice's typing and read receipt reach bob's /sync.
	if _, err := alice.UserTyping(ctx, room.RoomID, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, room.RoomID, id.EventID(fromB[len(fromB)-1]), event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	sawTyping, sawReceipt := false, false
	since := ""
	eventually(t, func() error {
		resp, err := bob.SyncRequest(ctx, 1000, since, "", false, event.PresenceOffline)
		if err != nil {
			return err
		}
		since = resp.NextBatch
		if jr := resp.Rooms.Join[room.RoomID]; jr != nil {
			for _, ev := range jr.Ephemeral.Events {
				raw := string(ev.Content.VeryRaw)
				switch ev.Type.Type {
				case "m.typing":
					sawTyping = sawTyping || strings.Contains(raw, alice.UserID.String())
				case "m.receipt":
					sawReceipt = sawReceipt || (strings.Contains(raw, fromB[len(fromB)-1]) && strings.Contains(raw, alice.UserID.String()))
				}
			}
		}
		if !sawTyping || !sawReceipt {
			return fmt.Errorf("bob saw typing %v, receipt %v", sawTyping, sawReceipt)
		}
		return nil
	})
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func stackUser(t *testing.T, s *stack.Stack, name string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(s.URL(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "secret password " + name})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

func joined(c *mautrix.Client, room id.RoomID, user id.UserID) error {
	resp, err := c.JoinedMembers(context.Background(), room)
	if err != nil {
		return err
	}
	if _, ok := resp.Joined[user]; !ok {
		return fmt.Errorf("%s does not see %s joined", c.UserID, user)
	}
	return nil
}

// seesInOrder checks that the client's view of the room's history holds
// the events once each, in that order.
func seesInOrder(c *mautrix.Client, room id.RoomID, want []string) error {
	resp, err := c.Messages(context.Background(), room, "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		return err
	}
	var got []string
	for i := len(resp.Chunk) - 1; i >= 0; i-- {
		ev := resp.Chunk[i]
		if ev.Type == event.EventMessage {
			for _, w := range want {
				if ev.ID.String() == w {
					got = append(got, w)
				}
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s sees %v, want %v", c.UserID, got, want)
	}
	return nil
}
