package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi"
	"github.com/myelin-chat/myelin/services/keyserver"
	"github.com/myelin-chat/myelin/services/presence"
	"github.com/myelin-chat/myelin/services/roomserver"
)

const serverName = "example.test"

// startStack runs key-server, room-server and client-API on one real gRPC
// server, real PostgreSQL and real NATS, and serves the client-API over
// real HTTP. It returns the homeserver URL.
func startStack(t *testing.T) string {
	t.Helper()
	return startStackWith(t, clientapi.DefaultConfig())
}

// startStackWith is startStack with a client-API configuration.
func startStackWith(t *testing.T, cfg clientapi.Config) string {
	t.Helper()
	return startReplicas(t, cfg, 1)[0]
}

// startReplicas is startStackWith with n client-API replicas sharing the
// database, the stream and the room-server, each on its own HTTP server,
// as in a deployment that scales the client-API. It returns their URLs.
func startReplicas(t *testing.T, cfg clientapi.Config, n int) []string {
	t.Helper()
	return startReplicasDeps(t, cfg, n, nil)
}

// startReplicasDeps is startReplicas with the client-API's dependencies
// changed by withDeps (nil: as they are), e.g. application services.
func startReplicasDeps(t *testing.T, cfg clientapi.Config, n int, withDeps func(*clientapi.Deps)) []string {
	t.Helper()
	urls, _ := startReplicaServices(t, cfg, n, withDeps)
	return urls
}

// startReplicaServices is startReplicasDeps that also returns the services.
func startReplicaServices(t testing.TB, cfg clientapi.Config, n int, withDeps func(*clientapi.Deps)) ([]string, []*clientapi.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := stackLogger(t)
	db := testkit.Postgres(t)
	js := testkit.JetStream(t, testkit.NATS(t))
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := rpc.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ksClient := keyserverv1.NewKeyServiceClient(conn)

	ks, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{Logger: log, ServerName: serverName, DatabaseURL: db, JetStream: js})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ks.Close)
	rs, err := roomserver.New(ctx, roomserver.DefaultConfig(), roomserver.Deps{
		Logger: log, ServerName: serverName, DatabaseURL: db, JetStream: js, KeyServer: ksClient,
		ServerKeys: keyserverv1.NewServerKeyServiceClient(conn),
	})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := presence.New(ctx, presence.DefaultConfig(), presence.Deps{
		Logger: log, ServerName: serverName, DatabaseURL: db, JetStream: js, RoomServer: roomserverv1.NewRoomServiceClient(conn),
	})
	if err != nil {
		t.Fatal(err)
	}
	g := rpc.NewServer(log)
	ks.RegisterGRPC(g)
	rs.RegisterGRPC(g)
	ps.RegisterGRPC(g)
	runs := []func(context.Context) error{rs.Run, ks.Run, ps.Run}
	var urls []string
	var svcs []*clientapi.Service
	var closers []func()
	for i := range n {
		deps := clientapi.Deps{
			Logger: log, ServerName: serverName, DatabaseURL: db, JetStream: js,
			E2EKeys: keyserverv1.NewE2EKeyServiceClient(conn), RoomServer: roomserverv1.NewRoomServiceClient(conn),
			Presence: presencev1.NewPresenceServiceClient(conn),
		}
		if withDeps != nil {
			withDeps(&deps)
		}
		ca, err := clientapi.New(ctx, cfg, deps)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			// One gRPC server for the test: in a deployment each replica
			// serves its own.
			ca.RegisterGRPC(g)
		}
		r := chi.NewRouter()
		r.Use(matrixhttp.CORS)
		r.NotFound(matrixhttp.NotFoundHandler)
		r.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
		ca.RegisterHTTP(r)
		srv := httptest.NewServer(r)
		urls = append(urls, srv.URL)
		svcs = append(svcs, ca)
		runs = append(runs, ca.Run)
		closers = append(closers, srv.Close, ca.Close)
	}
	go g.Serve(lis) //nolint:errcheck

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, len(runs))
	for _, run := range runs {
		go func() {
			if err := run(runCtx); err != nil {
				t.Errorf("Run: %v", err)
			}
			done <- struct{}{}
		}()
	}
	t.Cleanup(func() {
		stop()
		for range runs {
			<-done
		}
		for _, c := range closers {
			c()
		}
		g.Stop()
		rs.Close()
		ps.Close()
	})
	return urls, svcs
}

// stackLogger logs to the test's log, or for a fuzz test (whose fuzz
// target may not log through *testing.F) warnings and errors to stderr.
func stackLogger(t testing.TB) *zap.Logger {
	if _, fuzz := t.(*testing.F); fuzz {
		cfg := zap.NewDevelopmentConfig()
		cfg.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
		log, err := cfg.Build()
		if err != nil {
			t.Fatal(err)
		}
		return log
	}
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

func newUser(t testing.TB, hs, username string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: username, Password: "pw-" + username})
	if err != nil {
		t.Fatalf("register %s: %v", username, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// syncer follows one user's /sync stream with long polls.
type syncer struct {
	t     *testing.T
	cli   *mautrix.Client
	since string
}

// until long-polls until cond holds for an accumulated response, or fails.
func (s *syncer) until(what string, cond func(*mautrix.RespSync) bool) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		// An inline filter: the timeline limit is above the test's burst of
		// messages, so no sync is limited.
		resp, err := s.cli.SyncRequest(ctx, 10000, s.since, `{"room":{"timeline":{"limit":100}}}`, false, "")
		if err != nil {
			s.t.Fatalf("sync waiting for %s: %v", what, err)
		}
		s.since = resp.NextBatch
		if cond(resp) {
			return
		}
	}
}

func TestFullStackWithMautrix(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")

	for _, version := range []id.RoomVersion{"12", "11"} {
		t.Run("room version "+string(version), func(t *testing.T) {
			alias := "lounge" + string(version)
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
				Preset: "private_chat", Name: "Lounge", Topic: "Chat", RoomAliasName: alias,
				Invite: []id.UserID{bob.UserID}, RoomVersion: version,
			})
			if err != nil {
				t.Fatalf("createRoom: %v", err)
			}
			roomID := created.RoomID

			// The alias resolves, and a second room cannot take it.
			resolved, err := bob.ResolveAlias(ctx, id.RoomAlias("#"+alias+":"+serverName))
			if err != nil || resolved.RoomID != roomID {
				t.Fatalf("resolve alias: %v %v", resolved, err)
			}
			_, err = alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: alias})
			if !errors.Is(err, mautrix.MRoomInUse) {
				t.Fatalf("duplicate alias: %v", err)
			}

			// Bob sees the invite in an incremental sync and joins by alias.
			bs := &syncer{t: t, cli: bob}
			bs.until("nothing", func(*mautrix.RespSync) bool { return true })
			bs.since = ""
			bs.until("invite", func(r *mautrix.RespSync) bool {
				inv, ok := r.Rooms.Invite[roomID]
				if !ok {
					return false
				}
				var sawCreate bool
				for _, e := range inv.State.Events {
					sawCreate = sawCreate || e.Type == event.StateCreate
				}
				return sawCreate
			})
			if _, err := bob.JoinRoom(ctx, "#"+alias+":"+serverName, nil); err != nil {
				t.Fatalf("join: %v", err)
			}

			// Carol is no member: reading the room is forbidden.
			var name event.RoomNameEventContent
			err = carol.StateEvent(ctx, roomID, event.StateRoomName, "", &name)
			if !errors.Is(err, mautrix.MForbidden) {
				t.Fatalf("carol reading state: %v", err)
			}
			if err := alice.StateEvent(ctx, roomID, event.StateRoomName, "", &name); err != nil || name.Name != "Lounge" {
				t.Fatalf("room name %q %v", name.Name, err)
			}
			err = alice.StateEvent(ctx, roomID, event.NewEventType("org.example.none"), "", &name)
			if !errors.Is(err, mautrix.MNotFound) {
				t.Fatalf("missing state: %v", err)
			}
			if _, err := alice.SendStateEvent(ctx, roomID, event.StateTopic, "", &event.TopicEventContent{Topic: "New topic"}); err != nil {
				t.Fatalf("set topic: %v", err)
			}
			// State keys may hold characters that must be escaped in paths.
			custom := event.NewEventType("org.example.custom")
			oddKey := "a/b%c d?"
			if _, err := alice.SendStateEvent(ctx, roomID, custom, oddKey, map[string]any{"v": 1}); err != nil {
				t.Fatalf("set custom state: %v", err)
			}
			var customContent map[string]any
			if err := bob.StateEvent(ctx, roomID, custom, oddKey, &customContent); err != nil || customContent["v"] != 1.0 {
				t.Fatalf("custom state %v %v", customContent, err)
			}
			// A second alias for the room, set through the directory.
			extra := id.RoomAlias("#extra" + string(version) + ":" + serverName)
			if _, err := alice.CreateAlias(ctx, extra, roomID); err != nil {
				t.Fatalf("create alias: %v", err)
			}
			var httpErr mautrix.HTTPError
			if _, err := bob.CreateAlias(ctx, extra, roomID); !errors.As(err, &httpErr) || !httpErr.IsStatus(409) {
				t.Fatalf("alias taken twice: %v", err)
			}
			if res, err := carol.ResolveAlias(ctx, extra); err != nil || res.RoomID != roomID {
				t.Fatalf("resolve extra alias %v %v", res, err)
			}

			// Alice sends messages; a retried transaction is not duplicated.
			const n = 30
			var sent []id.EventID
			for i := range n {
				txn := fmt.Sprintf("%s-txn-%d", version, i)
				resp, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage,
					&event.MessageEventContent{MsgType: event.MsgText, Body: fmt.Sprint("message ", i)},
					mautrix.ReqSendEvent{TransactionID: txn})
				if err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				sent = append(sent, resp.EventID)
			}
			again, err := alice.SendMessageEvent(ctx, roomID, event.EventMessage,
				&event.MessageEventContent{MsgType: event.MsgText, Body: "message 0"},
				mautrix.ReqSendEvent{TransactionID: string(version) + "-txn-0"})
			if err != nil || again.EventID != sent[0] {
				t.Fatalf("retried txn gave %v %v, want %s", again, err, sent[0])
			}

			// Bob receives every message, in order, through long polls.
			var got []id.EventID
			bs.until("all messages", func(r *mautrix.RespSync) bool {
				if room, ok := r.Rooms.Join[roomID]; ok {
					for _, e := range room.Timeline.Events {
						if e.Type == event.EventMessage {
							got = append(got, e.ID)
						}
					}
				}
				return len(got) >= n
			})
			if !slices.Equal(got, sent) {
				t.Fatalf("bob got %d messages %v, want %v", len(got), got, sent)
			}

			// Alice's initial sync: the last 10 events, limited, with the state
			// before them (room creation is long past) and her transaction IDs.
			init, err := alice.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			room := init.Rooms.Join[roomID]
			if room == nil || len(room.Timeline.Events) != 10 || !room.Timeline.Limited || room.Timeline.PrevBatch == "" {
				t.Fatalf("initial sync room %+v", room)
			}
			var stateTypes []event.Type
			for _, e := range room.State.Events {
				stateTypes = append(stateTypes, e.Type)
			}
			for _, want := range []event.Type{event.StateCreate, event.StatePowerLevels, event.StateJoinRules, event.StateRoomName, event.StateTopic, event.StateMember} {
				if !slices.Contains(stateTypes, want) {
					t.Fatalf("initial sync state lacks %s: %v", want.Type, stateTypes)
				}
			}
			last := room.Timeline.Events[9]
			if last.ID != sent[n-1] || last.Unsigned.TransactionID != fmt.Sprintf("%s-txn-%d", version, n-1) {
				t.Fatalf("last timeline event %s txn %q", last.ID, last.Unsigned.TransactionID)
			}
			if room.Summary.JoinedMemberCount == nil || *room.Summary.JoinedMemberCount != 2 {
				t.Fatalf("summary %+v", room.Summary)
			}

			// prev_batch continues into /messages.
			msgs, err := alice.Messages(ctx, roomID, room.Timeline.PrevBatch, "", mautrix.DirectionBackward, nil, 5)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs.Chunk) != 5 || msgs.Chunk[0].ID != sent[n-11] || msgs.End == "" {
				t.Fatalf("messages after prev_batch: %d events, first %v", len(msgs.Chunk), msgs.Chunk[0].ID)
			}

			// Bob leaves; his sync shows the room under leave.
			if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
				t.Fatal(err)
			}
			bs.until("leave", func(r *mautrix.RespSync) bool {
				_, ok := r.Rooms.Leave[roomID]
				return ok
			})
			joined, err := alice.JoinedRooms(ctx)
			if err != nil || !slices.Contains(joined.JoinedRooms, roomID) {
				t.Fatalf("joined rooms %v %v", joined, err)
			}
		})
	}
}

// wantMatrixError checks that err is a Matrix error with this errcode and
// HTTP status.
func wantMatrixError(t *testing.T, what string, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != status || he.RespError == nil || he.RespError.ErrCode != errcode {
		t.Errorf("%s: got %v, want %d %s", what, err, status, errcode)
	}
}
