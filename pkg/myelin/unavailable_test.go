package myelin_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// databaseSwitch turns a test database's connections off (new ones are
// refused, open ones ended) and on again, as an outage would.
type databaseSwitch struct {
	t     *testing.T
	admin *pgx.Conn
	db    string
}

func newDatabaseSwitch(t *testing.T, url string) *databaseSwitch {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.Database
	cfg.Database = "postgres"
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sw := &databaseSwitch{t: t, admin: admin, db: db}
	t.Cleanup(func() { sw.set(true); admin.Close(ctx) })
	return sw
}

func (sw *databaseSwitch) set(on bool) {
	sw.t.Helper()
	ctx := context.Background()
	if _, err := sw.admin.Exec(ctx, fmt.Sprintf(`ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t`, pgx.Identifier{sw.db}.Sanitize(), on)); err != nil {
		sw.t.Fatalf("allow connections %t: %v", on, err)
	}
	if !on {
		if _, err := sw.admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, sw.db); err != nil {
			sw.t.Fatalf("end connections: %v", err)
		}
	}
}

// wantUnavailable checks that a mautrix call failed with 503 M_UNKNOWN and
// a Retry-After header.
func wantUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) || httpErr.Response == nil {
		t.Fatalf("%s: %v, want an HTTP error", what, err)
	}
	res := httpErr.Response
	if res.StatusCode != http.StatusServiceUnavailable || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_UNKNOWN" {
		t.Fatalf("%s: %d %v, want 503 M_UNKNOWN", what, res.StatusCode, httpErr.RespError)
	}
	if secs, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || secs <= 0 {
		t.Fatalf("%s: Retry-After %q, want a number of seconds", what, res.Header.Get("Retry-After"))
	}
}

// While a service's database is away, clients get 503 M_UNKNOWN with
// Retry-After, not 500: from the client-API's own database, and from the
// room-server's through gRPC (codes.Unavailable). Once it is back,
// requests succeed again, and nothing was stored by the refused ones.
func TestDatabaseDownAnswers503(t *testing.T) {
	cfg := stack.TestConfig(t)
	cfg.RoomServer.DatabaseURL = testkit.Postgres(t) // its own, to fail alone
	s := stack.StartWithConfig(t, cfg)
	ctx := context.Background()
	cli, err := mautrix.NewClient(s.URL(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "outage", Password: "pw-outage"})
	if err != nil {
		t.Fatal(err)
	}
	cli.SetCredentials(reg.UserID, reg.AccessToken)
	room, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	send := func(txn string) error {
		_, err := cli.SendMessageEvent(ctx, room.RoomID, event.EventMessage,
			map[string]any{"msgtype": "m.text", "body": txn}, mautrix.ReqSendEvent{TransactionID: txn})
		return err
	}
	if err := send("before"); err != nil {
		t.Fatal(err)
	}

	// The room-server's database goes: the send reaches it over gRPC.
	rooms := newDatabaseSwitch(t, cfg.RoomServer.DatabaseURL)
	rooms.set(false)
	wantUnavailable(t, "send while the room-server's database is away", send("during-rooms"))

	// The shared database goes too: the client-API's own reads fail.
	shared := newDatabaseSwitch(t, cfg.Database.URL)
	shared.set(false)
	_, err = cli.JoinedRooms(ctx)
	wantUnavailable(t, "joined_rooms while the client-API's database is away", err)

	shared.set(true)
	rooms.set(true)
	testkit.Eventually(t, 30*time.Second, func() error { return send("after") })
	msgs, err := cli.Messages(ctx, room.RoomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, ev := range msgs.Chunk {
		if ev.Type == event.EventMessage {
			bodies = append(bodies, ev.Content.Raw["body"].(string))
		}
	}
	if fmt.Sprint(bodies) != "[after before]" {
		t.Fatalf("messages after the outage: %v, want [after before]", bodies)
	}
}
