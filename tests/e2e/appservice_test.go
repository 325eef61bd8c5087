package e2e

// A bridge on mautrix-go's appservice package against bin/myelin: its
// registration file (written by mautrix) is loaded at start; it answers
// an alias query by creating a portal room and a user query by
// registering the ghost; its ghost joins and sends with ts; it receives
// the room's messages, typing and receipts in transactions, and a user's
// to-device messages for its ghost's device; its network
// directory and third-party protocol reach clients; all of it again after
// the homeserver restarts.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// bridge is the appservice under test and what it has received.
type bridge struct {
	t      *testing.T
	as     *appservice.AppService
	server string
	mu     sync.Mutex
	events []*event.Event
	// portals are the rooms it created for alias queries, by alias.
	portals map[id.RoomAlias]id.RoomID
}

const bridgeServer = "localhost"

// newBridge starts the bridge's HTTP listener and writes its registration
// file into dir; the homeserver starts after it, with the file.
func newBridge(t *testing.T, dir string) (*bridge, string) {
	t.Helper()
	addr := freeAddr(t)
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	reg := appservice.CreateRegistration()
	reg.ID = "chatbridge"
	reg.URL = "http://" + addr
	reg.SenderLocalpart = "_chat_bot"
	reg.EphemeralEvents = true
	noLimit := false
	reg.RateLimited = &noLimit
	reg.Protocols = []string{"chat"}
	reg.Namespaces.UserIDs = appservice.NamespaceList{{Regex: "@_chat_.*:" + bridgeServer, Exclusive: true}}
	reg.Namespaces.RoomAliases = appservice.NamespaceList{{Regex: "#_chat_.*:" + bridgeServer, Exclusive: true}}
	path := filepath.Join(dir, "chatbridge.yaml")
	if err := reg.Save(path); err != nil {
		t.Fatal(err)
	}
	as := appservice.Create()
	as.Registration = reg
	as.HomeserverDomain = bridgeServer
	as.Host = appservice.HostConfig{Hostname: host, Port: uint16(port)}
	b := &bridge{t: t, as: as, portals: map[id.RoomAlias]id.RoomID{}}
	as.QueryHandler = b
	// The third-party protocol the bridge provides, with one network.
	as.Router.HandleFunc("GET /_matrix/app/v1/thirdparty/protocol/chat", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+reg.ServerToken {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"user_fields":["nick"],"location_fields":["channel"],"icon":"mxc://example.org/chat",
			"field_types":{"nick":{"regexp":".*","placeholder":"nick"},"channel":{"regexp":".*","placeholder":"#c"}},
			"instances":[{"desc":"Chat Net","network_id":"chatnet","fields":{}}]}`))
	})
	// Its locations: the portal alias of a channel.
	as.Router.HandleFunc("GET /_matrix/app/v1/thirdparty/location/chat", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode([]map[string]any{{
			"alias": "#_chat_" + r.URL.Query().Get("channel") + ":" + bridgeServer, "protocol": "chat",
			"fields": map[string]string{"channel": r.URL.Query().Get("channel")},
		}})
	})
	go as.Start()
	t.Cleanup(as.Stop)
	for _, ch := range []chan *event.Event{as.Events, as.ToDeviceEvents} {
		go func() {
			for ev := range ch {
				b.mu.Lock()
				b.events = append(b.events, ev)
				b.mu.Unlock()
			}
		}()
	}
	return b, path
}

// connect points the bridge's clients at the homeserver.
func (b *bridge) connect(hsURL string) {
	if err := b.as.SetHomeserverURL(hsURL); err != nil {
		b.t.Fatal(err)
	}
}

// QueryAlias creates a portal room for an alias in the namespace.
func (b *bridge) QueryAlias(alias id.RoomAlias) bool {
	ctx := context.Background()
	localpart, _, _ := strings.Cut(strings.TrimPrefix(string(alias), "#"), ":")
	resp, err := b.as.BotClient().CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "public_chat", RoomAliasName: localpart, Name: "Portal " + localpart,
	})
	if err != nil {
		b.t.Errorf("bridge: create portal for %s: %v", alias, err)
		return false
	}
	b.mu.Lock()
	b.portals[alias] = resp.RoomID
	b.mu.Unlock()
	return true
}

// QueryUser registers a ghost asked about and names it.
func (b *bridge) QueryUser(userID id.UserID) bool {
	intent := b.as.Intent(userID)
	if err := intent.EnsureRegistered(context.Background()); err != nil {
		b.t.Errorf("bridge: register %s: %v", userID, err)
		return false
	}
	if err := intent.SetDisplayName(context.Background(), "Ghost of "+userID.Localpart()); err != nil {
		b.t.Errorf("bridge: name %s: %v", userID, err)
		return false
	}
	return true
}

// waitFor waits until the bridge has received an event cond accepts.
func (b *bridge) waitFor(what string, cond func(*event.Event) bool) *event.Event {
	b.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		b.mu.Lock()
		for _, ev := range b.events {
			if cond(ev) {
				b.mu.Unlock()
				return ev
			}
		}
		b.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("the bridge never received %s", what)
	return nil
}

func TestAppserviceBridgeAllInOne(t *testing.T) {
	s := allInOne(t)
	dir := t.TempDir()
	b, regPath := newBridge(t, dir)
	failing, failingToken := failingAppservice(t, dir)
	s.procs[0].env = append(s.procs[0].env, "MYELIN_APPSERVICE_CONFIG_FILES="+regPath+","+failing)
	s.start(t)
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	b.connect(s.url)
	runBridge(t, s, b, failingToken)
}

func TestAppserviceBridgeSplit(t *testing.T) {
	dir := t.TempDir()
	b, regPath := newBridge(t, dir)
	failing, failingToken := failingAppservice(t, dir)
	s := splitWith(t, []string{regPath, failing})
	s.start(t)
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	b.connect(s.url)
	runBridge(t, s, b, failingToken)
}

// failingAppservice writes the registration of an appservice whose every
// answer is a 500 and starts it: queries to it fail with a clear error.
// It returns the file and its as_token.
func failingAppservice(t *testing.T, dir string) (string, string) {
	t.Helper()
	srv := &http.Server{Addr: freeAddr(t), Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})}
	lis, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis) //nolint:errcheck
	t.Cleanup(func() { _ = srv.Close() })
	reg := appservice.CreateRegistration()
	reg.ID = "broken"
	reg.URL = "http://" + srv.Addr
	reg.SenderLocalpart = "_broken_bot"
	reg.Namespaces.UserIDs = appservice.NamespaceList{{Regex: "@_broken_.*:" + bridgeServer, Exclusive: true}}
	reg.Namespaces.RoomAliases = appservice.NamespaceList{{Regex: "#_broken_.*:" + bridgeServer, Exclusive: true}}
	path := filepath.Join(dir, "broken.yaml")
	if err := reg.Save(path); err != nil {
		t.Fatal(err)
	}
	return path, reg.AppToken
}

func runBridge(t *testing.T, s *server, b *bridge, failingToken string) {
	ctx := context.Background()
	bot := b.as.BotIntent()
	// What a mautrix bridge does at start: name its bot.
	if err := bot.SetDisplayName(ctx, "Chat Bridge"); err != nil {
		t.Fatalf("name the bot: %v", err)
	}

	// The homeserver reaches the bridge (ping through the client API).
	ping, err := bot.AppservicePing(ctx, b.as.Registration.ID, "txn-ping-1")
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	if ping.DurationMS < 0 {
		t.Fatalf("ping duration %d", ping.DurationMS)
	}
	if _, err := register(t, s.url, "snoop").cli.AppservicePing(ctx, b.as.Registration.ID, "x"); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("a user's ping: %v", err)
	}
	status, body := do(t, "POST", s.url+"/_matrix/client/v1/appservice/broken/ping", failingToken, []byte(`{"transaction_id":"t1"}`))
	var pingErr struct {
		Errcode string `json:"errcode"`
		Status  int    `json:"status"`
	}
	if err := json.Unmarshal(body, &pingErr); err != nil || status != http.StatusBadGateway || pingErr.Errcode != "M_BAD_STATUS" || pingErr.Status != 500 {
		t.Fatalf("ping of a failing appservice: %d %s", status, body)
	}

	// A user asks for an alias nobody created: the bridge makes a portal.
	alice := register(t, s.url, "alice")
	portalAlias := id.RoomAlias("#_chat_lobby:" + bridgeServer)
	resolved, err := alice.cli.ResolveAlias(ctx, portalAlias)
	if err != nil {
		t.Fatalf("resolve portal alias: %v", err)
	}
	b.mu.Lock()
	portal := b.portals[portalAlias]
	b.mu.Unlock()
	if resolved.RoomID != portal || portal == "" {
		t.Fatalf("portal alias resolved to %s, the bridge created %s", resolved.RoomID, portal)
	}
	if _, err := alice.cli.JoinRoom(ctx, string(portalAlias), nil); err != nil {
		t.Fatalf("alice joins the portal: %v", err)
	}
	// An alias in a failing appservice's namespace is a clear error.
	status, body = do(t, "GET", s.url+"/_matrix/client/v3/directory/room/"+url.PathEscape("#_broken_x:"+bridgeServer), alice.cli.AccessToken, nil)
	// (502, or 504 when the appservice service's retries ran out of time.)
	if status != http.StatusBadGateway && status != http.StatusGatewayTimeout {
		t.Fatalf("alias of a failing appservice: %d %s", status, body)
	}

	// A user looks up an unknown ghost: the bridge registers it.
	profile, err := alice.cli.GetProfile(ctx, id.UserID("@_chat_carol:"+bridgeServer))
	if err != nil || profile.DisplayName != "Ghost of _chat_carol" {
		t.Fatalf("ghost profile %+v %v", profile, err)
	}

	// A ghost joins and sends with ts; alice sees it at that time.
	ghost := b.as.Intent(id.UserID("@_chat_dave:" + bridgeServer))
	if err := ghost.EnsureJoined(ctx, portal); err != nil {
		t.Fatalf("ghost joins: %v", err)
	}
	const then = int64(1_600_000_000_000)
	sent, err := ghost.SendMassagedMessageEvent(ctx, portal, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "from the chat network"}, then)
	if err != nil {
		t.Fatalf("ghost sends: %v", err)
	}
	ev, err := alice.cli.GetEvent(ctx, portal, sent.EventID)
	if err != nil || ev.Timestamp != then || ev.Sender != ghost.UserID {
		t.Fatalf("ghost's event %+v %v", ev, err)
	}

	// alice sends a to-device message to the ghost's device (which the
	// bridge made with PUT /devices, MSC4190): the bridge receives it in a
	// transaction's to-device list (MSC2409), to that user and device.
	ghostDevices := b.as.NewMautrixClient(ghost.UserID)
	if err := ghostDevices.CreateDeviceMSC4190(ctx, "DAVEPHONE", "dave's phone"); err != nil {
		t.Fatalf("the bridge makes the ghost a device: %v", err)
	}
	toGhost := func(txnID string, n int) {
		t.Helper()
		if _, err := alice.cli.SendToDevice(ctx, event.Type{Type: "org.example.ping", Class: event.ToDeviceEventType},
			&mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
				ghost.UserID: {"*": &event.Content{Raw: map[string]any{"n": n, "txn": txnID}}},
			}}); err != nil {
			t.Fatalf("alice sends to the ghost's devices: %v", err)
		}
	}
	isToGhost := func(n int) func(*event.Event) bool {
		return func(e *event.Event) bool {
			return e.Type.Class == event.ToDeviceEventType && e.Type.Type == "org.example.ping" && e.Sender == alice.cli.UserID &&
				e.ToUserID == ghost.UserID && e.ToDeviceID == "DAVEPHONE" && fmt.Sprint(e.Content.Raw["n"]) == strconv.Itoa(n)
		}
	}
	toGhost("first", 1)
	b.waitFor("alice's to-device message for the ghost's device", isToGhost(1))

	// The bridge receives alice's message, typing and read receipt.
	msg, err := alice.cli.SendText(ctx, portal, "hello bridge")
	if err != nil {
		t.Fatal(err)
	}
	b.waitFor("alice's message", func(e *event.Event) bool { return e.ID == msg.EventID && e.RoomID == portal })
	if _, err := alice.cli.UserTyping(ctx, portal, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	b.waitFor("alice typing", func(e *event.Event) bool {
		return e.Type == event.EphemeralEventTyping && e.RoomID == portal && containsUser(e.Content.AsTyping().UserIDs, alice.cli.UserID)
	})
	if err := alice.cli.SendReceipt(ctx, portal, sent.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	b.waitFor("alice's receipt", func(e *event.Event) bool {
		if e.Type != event.EphemeralEventReceipt || e.RoomID != portal {
			return false
		}
		_, ok := (*e.Content.AsReceipt())[sent.EventID][event.ReceiptTypeRead][alice.cli.UserID]
		return ok
	})

	// The bridge's network directory and protocol.
	var protocols map[string]struct {
		Instances []struct {
			InstanceID string `json:"instance_id"`
			NetworkID  string `json:"network_id"`
		} `json:"instances"`
	}
	if err := rawGet(t, s.url+"/_matrix/client/v3/thirdparty/protocols", alice.cli.AccessToken, &protocols); err != nil {
		t.Fatal(err)
	}
	chat := protocols["chat"]
	if len(chat.Instances) != 1 || chat.Instances[0].NetworkID != "chatnet" || chat.Instances[0].InstanceID == "" {
		t.Fatalf("protocols %+v", protocols)
	}
	instance := chat.Instances[0].InstanceID
	var locations []struct {
		Alias string `json:"alias"`
	}
	if err := rawGet(t, s.url+"/_matrix/client/v3/thirdparty/location/chat?channel=lobby", alice.cli.AccessToken, &locations); err != nil {
		t.Fatal(err)
	}
	if len(locations) != 1 || locations[0].Alias != string(portalAlias) {
		t.Fatalf("locations %+v", locations)
	}
	if status, body := do(t, "GET", s.url+"/_matrix/client/v3/thirdparty/location/nochat", alice.cli.AccessToken, nil); status != http.StatusNotFound {
		t.Fatalf("unknown protocol: %d %s", status, body)
	}
	putURL := bot.BuildClientURL("v3", "directory", "list", "appservice", "chatnet", portal)
	if _, err := bot.MakeRequest(ctx, http.MethodPut, putURL, map[string]string{"visibility": "public"}, nil); err != nil {
		t.Fatalf("publish in the network: %v", err)
	}
	listed := func(req *mautrix.ReqPublicRooms) bool {
		resp, err := alice.cli.PublicRooms(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Chunk {
			if r.RoomID == portal {
				return true
			}
		}
		return false
	}
	if listed(&mautrix.ReqPublicRooms{}) || !listed(&mautrix.ReqPublicRooms{ThirdPartyInstanceID: instance}) || !listed(&mautrix.ReqPublicRooms{IncludeAllNetworks: true}) {
		t.Fatal("the portal is listed where it should not be, or not where it should")
	}

	// The homeserver restarts; the bridge goes on.
	s.restart(t)
	after, err := alice.cli.SendText(ctx, portal, "after the restart")
	if err != nil {
		t.Fatal(err)
	}
	b.waitFor("alice's message after the restart", func(e *event.Event) bool { return e.ID == after.EventID })
	later := then + 60_000
	sent, err = ghost.SendMassagedMessageEvent(ctx, portal, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "still here"}, later)
	if err != nil {
		t.Fatalf("ghost sends after the restart: %v", err)
	}
	if ev, err := alice.cli.GetEvent(ctx, portal, sent.EventID); err != nil || ev.Timestamp != later {
		t.Fatalf("ghost's event after the restart %+v %v", ev, err)
	}
	toGhost("second", 2)
	b.waitFor("alice's to-device message after the restart", isToGhost(2))
	// Every message event of the room reached the bridge once, as did
	// each to-device message.
	seen := map[id.EventID]int{}
	toDevice := map[string]int{}
	b.mu.Lock()
	for _, e := range b.events {
		if e.Type == event.EventMessage {
			seen[e.ID]++
		}
		if e.Type.Class == event.ToDeviceEventType {
			toDevice[fmt.Sprint(e.ToUserID, e.ToDeviceID, e.Content.Raw["n"])]++
		}
	}
	b.mu.Unlock()
	if len(toDevice) != 2 {
		t.Errorf("to-device messages the bridge got: %v", toDevice)
	}
	for m, n := range toDevice {
		if n != 1 {
			t.Errorf("to-device message %s delivered %d times", m, n)
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
}

func containsUser(list []id.UserID, u id.UserID) bool {
	for _, x := range list {
		if x == u {
			return true
		}
	}
	return false
}

// rawGet GETs a JSON body.
func rawGet(t *testing.T, u, token string, out any) error {
	t.Helper()
	status, body := do(t, "GET", u, token, nil)
	if status != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", u, status, body)
	}
	return json.Unmarshal(body, out)
}
