package presence_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/rpc"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
)

// TestRemotePresence: another server's user's presence, as its m.presence
// EDU gives it, is stored with the activity dated from last_active_ago,
// and the idle and offline timers apply to it; a presence for a user who
// is not of the origin server, or for this server's users, is refused.
func TestRemotePresence(t *testing.T) {
	e := newEnv(t)
	conn, err := rpc.Dial(e.grpc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ps := presencev1.NewPresenceServiceClient(conn)
	ctx := context.Background()
	const bob = "@bob:remote.test"
	msg := "federating"
	if _, err := ps.SetRemotePresence(ctx, &presencev1.SetRemotePresenceRequest{Origin: "remote.test", UserId: bob, Presence: "online",
		StatusMsg: &msg, LastActiveAgo: 5000, CurrentlyActive: true}); err != nil {
		t.Fatal(err)
	}
	get := func() *presencev1.Presence {
		t.Helper()
		resp, err := ps.GetPresence(ctx, &presencev1.GetPresenceRequest{RequesterId: bob, UserId: bob})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetPresence()
	}
	p := get()
	if p.GetPresence() != "online" || p.GetStatusMsg() != msg || p.GetLastActiveAgo() != 5000 || !p.GetCurrentlyActive() {
		t.Fatalf("bob's presence: %+v", p)
	}
	e.clock.Advance(testOffline)
	if p := get(); p.GetPresence() != "offline" {
		t.Fatalf("after the offline timeout: %+v", p)
	}
	for _, req := range []*presencev1.SetRemotePresenceRequest{
		{Origin: "evil.test", UserId: bob, Presence: "online"},
		{Origin: "localhost", UserId: "@alice:localhost", Presence: "online"},
		{Origin: "remote.test", UserId: bob, Presence: "asleep"},
		{Origin: "remote.test", UserId: "not a user", Presence: "online"},
	} {
		if _, err := ps.SetRemotePresence(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%+v: %v, want INVALID_ARGUMENT", req, err)
		}
	}
}
