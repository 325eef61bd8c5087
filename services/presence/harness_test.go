package presence_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	"github.com/myelin-chat/myelin/services/presence"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Idle timers of the test stack; the manual clock is moved past them.
const (
	testIdle    = time.Minute
	testOffline = 10 * time.Minute
)

// env is the whole Myelin process (every service, talking over its own
// gRPC listener) on real PostgreSQL and NATS, with the presence service on
// a manual clock.
type env struct {
	t     *testing.T
	clock *presence.ManualClock
	url   string
	// grpc is the process's gRPC listener.
	grpc string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	clock := presence.NewManualClock(time.Now())
	cfg := myelin.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Database.URL = testkit.Postgres(t)
	cfg.NATS.URL = testkit.NATS(t)
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.Presence.Clock = clock
	cfg.Presence.IdleTimeout = testIdle
	cfg.Presence.OfflineTimeout = testOffline
	st := stack.StartWithConfig(t, cfg)
	return &env{t: t, clock: clock, url: st.URL(), grpc: st.Process.GRPCAddr()}
}

// client is one registered user.
type client struct {
	*mautrix.Client
	t     *testing.T
	since string
}

func (e *env) register(name string) *client {
	t := e.t
	t.Helper()
	cli, err := mautrix.NewClient(e.url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "secret password " + name})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return &client{Client: cli, t: t}
}

// again is a second client of the same user and device, with no sync
// token of its own.
func (e *env) again(c *client) *client {
	cli, err := mautrix.NewClient(e.url, c.UserID, c.AccessToken)
	if err != nil {
		e.t.Fatal(err)
	}
	return &client{Client: cli, t: c.t}
}

// sharedRoom creates a room of owner's that the others join.
func sharedRoom(t *testing.T, owner *client, others ...*client) id.RoomID {
	t.Helper()
	ctx := context.Background()
	room, err := owner.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range others {
		if _, err := o.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatalf("%s join: %v", o.UserID, err)
		}
	}
	return room.RoomID
}

// sync runs one /sync from the client's last token (initial the first
// time) and keeps next_batch. setPresence "" leaves the default (online).
func (c *client) sync(timeout int, setPresence event.Presence) *mautrix.RespSync {
	c.t.Helper()
	resp, err := c.SyncRequest(context.Background(), timeout, c.since, "", false, setPresence)
	if err != nil {
		c.t.Fatalf("%s sync: %v", c.UserID, err)
	}
	c.since = resp.NextBatch
	return resp
}

// syncUntil syncs until check accepts a response (each long poll returns
// when something concerning the user changes, so no sleeping is needed).
func (c *client) syncUntil(what string, check func(*mautrix.RespSync) bool) *mautrix.RespSync {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp := c.sync(5000, event.PresenceOffline)
		if check(resp) {
			return resp
		}
	}
	c.t.Fatalf("%s: no sync showed %s", c.UserID, what)
	return nil
}

// ephemeral returns the raw content of the room's ephemeral events of typ.
func ephemeral(resp *mautrix.RespSync, room id.RoomID, typ string) []json.RawMessage {
	jr := resp.Rooms.Join[room]
	if jr == nil {
		return nil
	}
	var out []json.RawMessage
	for _, ev := range jr.Ephemeral.Events {
		if ev.Type.Type == typ {
			out = append(out, ev.Content.VeryRaw)
		}
	}
	return out
}

// typingIn returns the latest m.typing user list of a room, and whether
// the response had one.
func typingIn(resp *mautrix.RespSync, room id.RoomID) ([]string, bool) {
	evs := ephemeral(resp, room, "m.typing")
	if len(evs) == 0 {
		return nil, false
	}
	var c struct {
		UserIDs []string `json:"user_ids"`
	}
	if err := json.Unmarshal(evs[len(evs)-1], &c); err != nil {
		return nil, false
	}
	return c.UserIDs, true
}

// receipt is one flattened receipt from an m.receipt event.
type receipt struct {
	EventID, Type, UserID, ThreadID string
}

func receiptsIn(resp *mautrix.RespSync, room id.RoomID) []receipt {
	var out []receipt
	for _, raw := range ephemeral(resp, room, "m.receipt") {
		var c map[string]map[string]map[string]struct {
			TS       int64  `json:"ts"`
			ThreadID string `json:"thread_id"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			continue
		}
		for ev, byType := range c {
			for typ, byUser := range byType {
				for u, info := range byUser {
					out = append(out, receipt{EventID: ev, Type: typ, UserID: u, ThreadID: info.ThreadID})
				}
			}
		}
	}
	return out
}

// presenceIn returns the m.presence events of a response by user.
func presenceIn(resp *mautrix.RespSync) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, ev := range resp.Presence.Events {
		var c map[string]any
		if json.Unmarshal(ev.Content.VeryRaw, &c) == nil {
			out[ev.Sender.String()] = c
		}
	}
	return out
}

// matrixErr checks that err is an HTTP error with the status and errcode.
func matrixErr(t *testing.T, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if err == nil {
		t.Fatalf("want %d %s, got success", status, errcode)
	}
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != status || he.RespError == nil || he.RespError.ErrCode != errcode {
		t.Fatalf("want %d %s, got %v", status, errcode, err)
	}
}
