package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/keyserver"
)

// keyServer runs a real key-server on a fixed address, so that it can be
// stopped and started again while the client-API keeps its connection.
type keyServer struct {
	t     *testing.T
	db    string
	addr  string
	h     *harness
	stopF func()
}

// newKeysHarness starts a client-API whose E2EKeyService is a key-server
// at a fixed address; the key-server itself is started with ks.start.
// prepare runs on the database before the client-API starts.
func newKeysHarness(t *testing.T, prepare func(dbURL string)) (*harness, *keyServer) {
	t.Helper()
	h := &harness{t: t, cfg: testConfig(), dbURL: testkit.Postgres(t)}
	h.js = testkit.JetStream(t, testkit.NATS(t))
	if err := bus.EnsureStreams(context.Background(), h.js, 1); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ks := &keyServer{t: t, db: h.dbURL, addr: lis.Addr().String(), h: h}
	_ = lis.Close()
	conn, err := rpc.Dial(ks.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	h.e2e = keyserverv1.NewE2EKeyServiceClient(conn)
	dead, err := rpc.Dial("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dead.Close() })
	h.rooms = roomserverv1.NewRoomServiceClient(dead)
	if prepare != nil {
		prepare(h.dbURL)
	}
	h.start()
	return h, ks
}

// start runs the key-server (with its publisher) at its address.
func (k *keyServer) start() {
	t := k.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{
		Logger: zaptest.NewLogger(t), ServerName: testServerName, DatabaseURL: k.db, JetStream: k.h.js,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", k.addr)
	if err != nil {
		t.Fatal(err)
	}
	g := rpc.NewServer(zaptest.NewLogger(t))
	svc.RegisterGRPC(g)
	go g.Serve(lis) //nolint:errcheck
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	stopped := false
	k.stopF = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("key-server Run: %v", err)
		}
		g.Stop()
		svc.Close()
	}
	t.Cleanup(k.stop)
}

func (k *keyServer) stop() {
	if k.stopF != nil {
		k.stopF()
	}
}

// deviceKeysOf is a device keys object (unsigned: the client-API and the
// key-server do not check device self-signatures).
func deviceKeysOf(user, device string) map[string]any {
	return map[string]any{"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"curve25519:" + device: "curve-" + device, "ed25519:" + device: "ed-" + device}}
}

// queriedDevices returns the device IDs /keys/query lists for user.
func (h *harness) queriedDevices(token, user string) ([]string, error) {
	r := h.do("POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{user: []string{}}})
	if r.status != 200 {
		return nil, fmt.Errorf("keys/query: %d %s", r.status, r.raw)
	}
	devices, _ := r.body["device_keys"].(map[string]any)[user].(map[string]any)
	var out []string
	for id := range devices {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

// TestKeyChangeWakesLongPolls: a key change reaches a waiting /sync of a
// user sharing a room through MYELIN_KEY_CHANGES (the key-server's
// stream), not a timer.
func TestKeyChangeWakesLongPolls(t *testing.T) {
	h, ks := newKeysHarness(t, nil)
	ks.start()
	aliceToken, alice := h.register("alice", "pw-alice")
	bobToken, bob := h.register("bob", "pw-bob")
	h.svc.notifier.SetJoined("!shared:example.test", alice, true)
	h.svc.notifier.SetJoined("!shared:example.test", bob, true)
	initial := h.do("GET", "/_matrix/client/v3/sync", bobToken, nil)
	h.expect(initial, 200, "")
	since, _ := initial.body["next_batch"].(string)

	got := make(chan response, 1)
	go func() {
		got <- h.do("GET", "/_matrix/client/v3/sync?timeout=120000&since="+url.QueryEscape(since), bobToken, nil)
	}()
	testkit.Eventually(t, 20*time.Second, func() error {
		if !h.svc.notifier.Waiting(bob) {
			return errors.New("bob's /sync is not waiting yet")
		}
		return nil
	})
	aliceDev, _ := h.do("GET", "/_matrix/client/v3/account/whoami", aliceToken, nil).body["device_id"].(string)
	h.expect(h.do("POST", "/_matrix/client/v3/keys/upload", aliceToken, map[string]any{"device_keys": deviceKeysOf(alice, aliceDev)}), 200, "")
	select {
	case r := <-got:
		h.expect(r, 200, "")
		lists, _ := r.body["device_lists"].(map[string]any)
		changed, _ := lists["changed"].([]any)
		if !slices.Contains(changed, any(alice)) {
			t.Errorf("bob's device_lists: %v", lists)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("bob's long poll was not woken by alice's key change")
	}
}

// TestDeviceDeletionReachesTheKeyServerLater: a device deleted while the
// key-server is down loses its keys once the key-server is back (the
// queued deletion is sent again).
func TestDeviceDeletionReachesTheKeyServerLater(t *testing.T) {
	h, ks := newKeysHarness(t, nil)
	ks.start()
	aliceToken, alice := h.register("alice", "pw-alice")
	login := h.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice", "device_id": "SECOND"})
	h.expect(login, 200, "")
	secondToken, _ := login.body["access_token"].(string)
	h.expect(h.do("POST", "/_matrix/client/v3/keys/upload", secondToken, map[string]any{"device_keys": deviceKeysOf(alice, "SECOND")}), 200, "")
	if devices, err := h.queriedDevices(aliceToken, alice); err != nil || !slices.Equal(devices, []string{"SECOND"}) {
		t.Fatalf("devices with keys: %v, %v", devices, err)
	}

	ks.stop()
	h.expect(h.do("POST", "/_matrix/client/v3/logout", secondToken, nil), 200, "")
	users, err := h.svc.store.KeyServerUsers(context.Background())
	if err != nil || !slices.Equal(users, []string{alice}) {
		t.Fatalf("queued device changes of %v, %v; want alice's deletion", users, err)
	}

	ks.start()
	testkit.Eventually(t, 60*time.Second, func() error {
		devices, err := h.queriedDevices(aliceToken, alice)
		if err != nil {
			return err
		}
		if len(devices) != 0 {
			return fmt.Errorf("devices with keys: %v", devices)
		}
		return nil
	})
	// The queued change is removed once the key-server has answered,
	// which is after its deletion commits: wait for that too.
	testkit.Eventually(t, 30*time.Second, func() error {
		if users, err := h.svc.store.KeyServerUsers(context.Background()); err != nil || len(users) != 0 {
			return fmt.Errorf("still queued: %v, %v", users, err)
		}
		return nil
	})
}

// TestOldKeyTablesHandedOver: with rows in the client-API's old key
// tables, the key endpoints answer 503 and the service is not ready until
// the key-server has them; then they are served from the key-server and
// the old tables are gone.
func TestOldKeyTablesHandedOver(t *testing.T) {
	ctx := context.Background()
	const old = "@old:" + testServerName
	h, ks := newKeysHarness(t, func(dbURL string) {
		st, err := store.Open(ctx, dbURL, 2)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		keys, _ := json.Marshal(deviceKeysOf(old, "OLDDEV"))
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`INSERT INTO clientapi.devices (user_id, device_id, display_name) VALUES ($1, 'OLDDEV', 'old laptop')`, []any{old}},
			{`INSERT INTO clientapi.device_keys (user_id, device_id, keys) VALUES ($1, 'OLDDEV', $2)`, []any{old, keys}},
			{`INSERT INTO clientapi.device_list_changes (user_id) VALUES ($1)`, []any{old}},
		} {
			if _, err := conn.Exec(ctx, q.sql, q.args...); err != nil {
				t.Fatal(err)
			}
		}
	})
	token, _ := h.register("alice", "pw-alice")

	r := h.do("POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{old: []string{}}})
	h.expect(r, 503, "M_UNKNOWN")
	if err := h.svc.Ready(ctx); !errors.Is(err, ErrKeysNotHandedOver) {
		t.Errorf("Ready before the hand-over: %v", err)
	}
	sync := h.do("GET", "/_matrix/client/v3/sync", token, nil)
	h.expect(sync, 200, "")
	if _, ok := sync.body["device_one_time_keys_count"]; ok {
		t.Errorf("/sync before the hand-over carries key counts: %s", sync.raw)
	}

	ks.start()
	testkit.Eventually(t, 60*time.Second, func() error { return h.svc.Ready(ctx) })
	devices, err := h.queriedDevices(token, old)
	if err != nil || !slices.Equal(devices, []string{"OLDDEV"}) {
		t.Fatalf("imported devices: %v, %v", devices, err)
	}
	r = h.do("POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{old: []string{}}})
	name, _ := r.body["device_keys"].(map[string]any)[old].(map[string]any)["OLDDEV"].(map[string]any)["unsigned"].(map[string]any)["device_display_name"].(string)
	if name != "old laptop" {
		t.Errorf("imported device's name %q", name)
	}
	if exists, err := h.svc.store.OldKeyTablesExist(ctx); err != nil || exists {
		t.Errorf("old key tables still there: %v, %v", exists, err)
	}
}
