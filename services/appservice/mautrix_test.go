package appservice_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// aliasQueries answers alias queries for the bridge's namespace.
type aliasQueries struct {
	mu    sync.Mutex
	asked []string
}

func (q *aliasQueries) QueryAlias(alias id.RoomAlias) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.asked = append(q.asked, string(alias))
	return true
}

func (q *aliasQueries) QueryUser(id.UserID) bool { return false }

// A bridge on mautrix-go's appservice package: its own registration file
// (as mautrix writes it) is accepted; it receives the room's events in
// order and typing and receipts through its transaction handler (which
// checks the hs_token); alias queries reach its query handler; and a
// wrong hs_token is refused by it and reported by Ping as M_BAD_STATUS.
func TestMautrixBridge(t *testing.T) {
	as := mas.Create()
	queries := &aliasQueries{}
	as.QueryHandler = queries
	srv := httptest.NewServer(as.Router)
	t.Cleanup(srv.Close)

	reg := mas.CreateRegistration()
	reg.ID, reg.URL, reg.SenderLocalpart = "mautrix", srv.URL, "_mx_bot"
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(`@_mx_.*:as\.test`), true)
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(`@watched_.*:as\.test`), false)
	reg.Namespaces.RoomAliases.Register(regexp.MustCompile(`#_mx_.*:as\.test`), true)
	reg.EphemeralEvents, reg.SoruEphemeralEvents = true, true
	file := filepath.Join(t.TempDir(), "mautrix.yaml")
	if err := reg.Save(file); err != nil {
		t.Fatal(err)
	}
	as.Registration = reg
	as.HomeserverDomain = serverName

	var mu sync.Mutex
	var timeline []string
	var typing, receipts int
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case evt := <-as.Events:
				mu.Lock()
				switch evt.Type {
				case event.EventMessage:
					timeline = append(timeline, string(evt.ID))
				case event.EphemeralEventTyping:
					typing++
				case event.EphemeralEventReceipt:
					receipts++
				}
				mu.Unlock()
			}
		}
	}()

	cfg := stack.TestConfig(t)
	cfg.ServerName = serverName
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.Appservice.ConfigFiles = []string{file}
	cfg.Appservice.BackoffMin, cfg.Appservice.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	e := &env{t: t, cfg: cfg}
	e.main = stack.StartWithConfig(t, cfg, myelin.TargetAll)
	alice, bob := e.user("alice"), e.user("watched_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	want := send(t, alice, room, 10, "to the bridge")
	if _, err := alice.UserTyping(ctx, room, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, room, id.EventID(want[9]), event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(timeline) < len(want) || typing == 0 || receipts == 0 {
			return fmt.Errorf("bridge has %d of %d messages, %d typing, %d receipts", len(timeline), len(want), typing, receipts)
		}
		return nil
	})
	mu.Lock()
	if fmt.Sprint(timeline) != fmt.Sprint(want) {
		t.Errorf("bridge got %v, want %v", timeline, want)
	}
	mu.Unlock()

	c := e.client()
	resp, err := c.QueryAlias(ctx, &appservicev1.QueryAliasRequest{Alias: "#_mx_portal:as.test"})
	if err != nil || resp.GetResult() != appservicev1.QueryResult_QUERY_RESULT_FOUND {
		t.Fatalf("alias query: %v %v", resp, err)
	}
	queries.mu.Lock()
	if fmt.Sprint(queries.asked) != "[#_mx_portal:as.test]" {
		t.Errorf("bridge was asked %v", queries.asked)
	}
	queries.mu.Unlock()
	ping, err := c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "mautrix", TransactionId: "t1"})
	if err != nil || ping.GetErrcode() != "" {
		t.Fatalf("ping: %v %v", ping, err)
	}
	// The bridge's idea of the hs_token changes: it refuses the homeserver
	// (mautrix answers 401 M_UNKNOWN_TOKEN).
	reg.ServerToken = "another token"
	ping, err = c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "mautrix"})
	if err != nil || ping.GetErrcode() != "M_BAD_STATUS" || (ping.GetStatus() != 401 && ping.GetStatus() != 403) {
		t.Fatalf("ping with a wrong hs_token: %v %v", ping, err)
	}
}
