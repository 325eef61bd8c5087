package clientapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/ratelimit"
	"github.com/myelin-chat/myelin/services/clientapi"
)

// Two application services: "bridge" holds @_bridge_* and #_bridge_*
// exclusively and is not rate-limited; "irc" shares @irc_* (not
// exclusively) and is rate-limited.
const (
	bridgeRegistration = `
id: bridge
url: null
as_token: as-bridge-secret
hs_token: hs-bridge-secret
sender_localpart: _bridge_bot
rate_limited: false
protocols: [chat]
namespaces:
  users: [{exclusive: true, regex: "@_bridge_.*:example.test"}]
  aliases: [{exclusive: true, regex: "#_bridge_.*:example.test"}]
`
	ircRegistration = `
id: irc
url: null
as_token: as-irc-secret
hs_token: hs-irc-secret
sender_localpart: ircbot
namespaces:
  users: [{exclusive: false, regex: "@irc_.*:example.test"}]
`
	bridgeToken = "as-bridge-secret"
	ircToken    = "as-irc-secret"
)

// testAppservices parses registrations as the process loads them at start.
func testAppservices(t *testing.T, files ...string) *appservice.Set {
	t.Helper()
	var regs []*appservice.Registration
	for i, f := range files {
		reg, err := appservice.Parse(fmt.Sprintf("as%d.yaml", i), []byte(f), serverName)
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, reg)
	}
	set, err := appservice.NewSet(regs)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// startAppserviceStack is startStack with the two registrations and with
// rate limits on: two sends, then one per 1000 s.
func startAppserviceStack(t *testing.T, tune ...func(*clientapi.Config)) string {
	t.Helper()
	cfg := clientapi.DefaultConfig()
	cfg.RateLimit.Enabled = true
	cfg.RateLimit.Send = ratelimit.Bucket{PerSecond: 0.001, Burst: 2}
	for _, f := range tune {
		f(&cfg)
	}
	set := testAppservices(t, bridgeRegistration, ircRegistration)
	return startReplicasDeps(t, cfg, 1, func(d *clientapi.Deps) { d.Appservices = set })[0]
}

// httpResult is a decoded response of asDo.
type httpResult struct {
	status int
	body   map[string]any
	raw    string
}

func (r httpResult) errcode() string { s, _ := r.body["errcode"].(string); return s }

// asDo sends one request with a token (an access token or an as_token)
// in the Authorization header; body is JSON-encoded unless nil.
func asDo(t *testing.T, hs, method, path, token string, body any) httpResult {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, hs+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := httpResult{status: resp.StatusCode, raw: string(raw)}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

// wantResult checks a status and errcode ("" for success).
func wantResult(t *testing.T, what string, r httpResult, status int, errcode string) {
	t.Helper()
	if r.status != status || r.errcode() != errcode {
		t.Fatalf("%s: got %d %s, want %d %q", what, r.status, r.raw, status, errcode)
	}
}

// as is a path with the user_id (and device_id) an appservice asserts.
func as(path, userID string, extra ...string) string {
	q := url.Values{"user_id": {userID}}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	sep := "?"
	if bytes.ContainsRune([]byte(path), '?') {
		sep = "&"
	}
	return path + sep + q.Encode()
}

const (
	v3     = "/_matrix/client/v3"
	ghost  = "@_bridge_alice:" + serverName
	sender = "@_bridge_bot:" + serverName
)

// as_token authentication: the sender by default (created at start), an
// asserted user in the namespaces, a device of theirs; refusals with the
// spec's errors.
func TestAppserviceAuthentication(t *testing.T) {
	hs := startAppserviceStack(t)

	r := asDo(t, hs, "GET", v3+"/account/whoami", bridgeToken, nil)
	wantResult(t, "whoami as the sender", r, 200, "")
	if r.body["user_id"] != sender || r.body["device_id"] != nil {
		t.Fatalf("sender whoami %s", r.raw)
	}
	// The access_token query parameter carries an as_token too.
	r = asDo(t, hs, "GET", v3+"/account/whoami?access_token="+bridgeToken, "", nil)
	wantResult(t, "as_token in the query", r, 200, "")

	wantResult(t, "wrong as_token", asDo(t, hs, "GET", v3+"/account/whoami", "as-wrong", nil), 401, "M_UNKNOWN_TOKEN")
	wantResult(t, "user outside the namespace", asDo(t, hs, "GET", as(v3+"/account/whoami", "@someone:"+serverName), bridgeToken, nil), 403, "M_FORBIDDEN")
	wantResult(t, "another appservice's user", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost), ircToken, nil), 403, "M_FORBIDDEN")
	wantResult(t, "unregistered ghost", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost), bridgeToken, nil), 403, "M_FORBIDDEN")

	// Register the ghost without a login, then act as it.
	r = asDo(t, hs, "POST", v3+"/register", bridgeToken, map[string]any{"type": "m.login.application_service", "username": "_bridge_alice", "inhibit_login": true})
	wantResult(t, "register the ghost", r, 200, "")
	if r.body["user_id"] != ghost || r.body["access_token"] != nil {
		t.Fatalf("ghost registration %s", r.raw)
	}
	r = asDo(t, hs, "GET", as(v3+"/account/whoami", ghost), bridgeToken, nil)
	wantResult(t, "whoami as the ghost", r, 200, "")
	if r.body["user_id"] != ghost {
		t.Fatalf("ghost whoami %s", r.raw)
	}
	wantResult(t, "unknown device", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost, "device_id", "NOPE"), bridgeToken, nil), 400, "M_UNKNOWN_DEVICE")

	// /sync, /events and /initialSync as one of its users, never as its
	// sender (spec: "Using /sync and /events").
	wantResult(t, "sync as the ghost", asDo(t, hs, "GET", as(v3+"/sync", ghost, "timeout", "0"), bridgeToken, nil), 200, "")
	for _, path := range []string{"/sync?timeout=0", "/events?timeout=0", "/initialSync", as("/sync", sender)} {
		wantResult(t, "as the sender: "+path, asDo(t, hs, "GET", v3+path, bridgeToken, nil), 403, "M_FORBIDDEN")
	}

	// A login of the ghost (m.login.application_service) makes a device
	// the appservice may then assert.
	r = asDo(t, hs, "POST", v3+"/login", bridgeToken, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "_bridge_alice"}, "device_id": "GHOSTDEV",
	})
	wantResult(t, "appservice login", r, 200, "")
	token, _ := r.body["access_token"].(string)
	if r.body["user_id"] != ghost || r.body["device_id"] != "GHOSTDEV" || token == "" {
		t.Fatalf("appservice login %s", r.raw)
	}
	r = asDo(t, hs, "GET", as(v3+"/account/whoami", ghost, "device_id", "GHOSTDEV"), bridgeToken, nil)
	wantResult(t, "whoami on the ghost's device", r, 200, "")
	if r.body["device_id"] != "GHOSTDEV" {
		t.Fatalf("device assertion %s", r.raw)
	}
	// The device belongs to the ghost, not to the sender.
	wantResult(t, "the ghost's device for the sender", asDo(t, hs, "GET", v3+"/account/whoami?device_id=GHOSTDEV", bridgeToken, nil), 400, "M_UNKNOWN_DEVICE")
	r = asDo(t, hs, "GET", v3+"/account/whoami", token, nil)
	if r.status != 200 || r.body["user_id"] != ghost {
		t.Fatalf("ghost's own token %s", r.raw)
	}

	// /logout with the as_token revokes nothing of the appservice's: as
	// the sender it is a no-op, as the ghost on its device that device
	// (and its token) goes.
	wantResult(t, "logout as the sender", asDo(t, hs, "POST", v3+"/logout", bridgeToken, map[string]any{}), 200, "")
	wantResult(t, "whoami after the sender's logout", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost), bridgeToken, nil), 200, "")
	wantResult(t, "ghost's token after the sender's logout", asDo(t, hs, "GET", v3+"/account/whoami", token, nil), 200, "")
	wantResult(t, "logout of the ghost's device", asDo(t, hs, "POST", as(v3+"/logout", ghost, "device_id", "GHOSTDEV"), bridgeToken, map[string]any{}), 200, "")
	wantResult(t, "ghost's token after its device's logout", asDo(t, hs, "GET", v3+"/account/whoami", token, nil), 401, "M_UNKNOWN_TOKEN")
	wantResult(t, "the logged-out device", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost, "device_id", "GHOSTDEV"), bridgeToken, nil), 400, "M_UNKNOWN_DEVICE")
	wantResult(t, "as_token after the logouts", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost), bridgeToken, nil), 200, "")
	r = asDo(t, hs, "POST", v3+"/login", bridgeToken, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "_bridge_alice"}, "device_id": "GHOSTDEV",
	})
	wantResult(t, "appservice login again", r, 200, "")

	wantResult(t, "login without as_token", asDo(t, hs, "POST", v3+"/login", "", map[string]any{"type": "m.login.application_service", "user": "_bridge_alice"}), 401, "M_MISSING_TOKEN")
	wantResult(t, "login with a wrong as_token", asDo(t, hs, "POST", v3+"/login", "as-wrong", map[string]any{"type": "m.login.application_service", "user": "_bridge_alice"}), 401, "M_UNKNOWN_TOKEN")
	wantResult(t, "login outside the namespace", asDo(t, hs, "POST", v3+"/login", ircToken, map[string]any{"type": "m.login.application_service", "user": "_bridge_alice"}), 403, "M_EXCLUSIVE")
	flows := asDo(t, hs, "GET", v3+"/login", "", nil)
	if !bytes.Contains([]byte(flows.raw), []byte(`"m.login.application_service"`)) {
		t.Fatalf("login flows %s", flows.raw)
	}
}

// Registration: appservices without UIA inside their namespaces (with a
// login unless inhibited), M_EXCLUSIVE outside them; users refused in
// exclusive namespaces, not in shared ones.
func TestAppserviceRegistration(t *testing.T) {
	hs := startAppserviceStack(t)
	reg := func(token string, body map[string]any) httpResult {
		body["type"] = "m.login.application_service"
		return asDo(t, hs, "POST", v3+"/register", token, body)
	}
	wantResult(t, "no as_token", reg("", map[string]any{"username": "_bridge_x"}), 401, "M_MISSING_TOKEN")
	wantResult(t, "wrong as_token", reg("as-wrong", map[string]any{"username": "_bridge_x"}), 401, "M_UNKNOWN_TOKEN")
	wantResult(t, "outside the namespace", reg(bridgeToken, map[string]any{"username": "plain"}), 400, "M_EXCLUSIVE")
	wantResult(t, "another's exclusive namespace", reg(ircToken, map[string]any{"username": "_bridge_x"}), 400, "M_EXCLUSIVE")
	wantResult(t, "bad localpart", reg(bridgeToken, map[string]any{"username": "_bridge_X!"}), 400, "M_INVALID_USERNAME")
	wantResult(t, "no username", reg(bridgeToken, map[string]any{}), 400, "M_MISSING_PARAM")

	r := reg(bridgeToken, map[string]any{"username": "_bridge_bob", "device_id": "BOBDEV"})
	wantResult(t, "register with a login", r, 200, "")
	token, _ := r.body["access_token"].(string)
	if r.body["user_id"] != "@_bridge_bob:"+serverName || r.body["device_id"] != "BOBDEV" || token == "" {
		t.Fatalf("registration %s", r.raw)
	}
	if w := asDo(t, hs, "GET", v3+"/account/whoami", token, nil); w.body["user_id"] != "@_bridge_bob:"+serverName {
		t.Fatalf("registered token %s", w.raw)
	}
	wantResult(t, "taken", reg(bridgeToken, map[string]any{"username": "_bridge_bob"}), 400, "M_USER_IN_USE")
	wantResult(t, "shared namespace", reg(ircToken, map[string]any{"username": "irc_carol", "inhibit_login": true}), 200, "")

	// Users: the two-step dummy flow is refused at once in an exclusive
	// namespace, goes on in a shared one.
	wantResult(t, "user in an exclusive namespace", asDo(t, hs, "POST", v3+"/register", "", map[string]any{"username": "_bridge_eve", "password": "pw"}), 400, "M_EXCLUSIVE")
	wantResult(t, "availability in an exclusive namespace", asDo(t, hs, "GET", v3+"/register/available?username=_bridge_eve", "", nil), 400, "M_EXCLUSIVE")
	wantResult(t, "user in a shared namespace", asDo(t, hs, "POST", v3+"/register", "", map[string]any{"username": "irc_dave", "password": "pw"}), 401, "")
	newUser(t, hs, "irc_dave")
}

// ts sets an appservice's events' origin_server_ts on send and state; a
// bad ts is 400; users' ts is ignored. Aliases in an exclusive namespace
// are the appservice's.
func TestAppserviceTimestampsAndAliases(t *testing.T) {
	hs := startAppserviceStack(t)
	wantResult(t, "register ghost", asDo(t, hs, "POST", v3+"/register", bridgeToken, map[string]any{"type": "m.login.application_service", "username": "_bridge_alice", "inhibit_login": true}), 200, "")
	r := asDo(t, hs, "POST", as(v3+"/createRoom", ghost), bridgeToken, map[string]any{"preset": "public_chat", "room_alias_name": "_bridge_portal"})
	wantResult(t, "ghost creates a portal", r, 200, "")
	roomID, _ := r.body["room_id"].(string)

	originTS := func(eventID string) float64 {
		t.Helper()
		ev := asDo(t, hs, "GET", as(v3+"/rooms/"+url.PathEscape(roomID)+"/event/"+url.PathEscape(eventID), ghost), bridgeToken, nil)
		wantResult(t, "get event", ev, 200, "")
		ts, _ := ev.body["origin_server_ts"].(float64)
		return ts
	}
	send := as(v3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t1", ghost, "ts", "1234567890123")
	r = asDo(t, hs, "PUT", send, bridgeToken, map[string]any{"msgtype": "m.text", "body": "from the past"})
	wantResult(t, "send with ts", r, 200, "")
	if ts := originTS(r.body["event_id"].(string)); ts != 1234567890123 {
		t.Fatalf("sent event's origin_server_ts %v", ts)
	}
	state := as(v3+"/rooms/"+url.PathEscape(roomID)+"/state/m.room.topic/", ghost, "ts", "1000000000000")
	r = asDo(t, hs, "PUT", state, bridgeToken, map[string]any{"topic": "old news"})
	wantResult(t, "state with ts", r, 200, "")
	if ts := originTS(r.body["event_id"].(string)); ts != 1000000000000 {
		t.Fatalf("state event's origin_server_ts %v", ts)
	}
	for _, bad := range []string{"soon", "-1", "9007199254740992"} {
		p := as(v3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/bad"+bad, ghost, "ts", bad)
		wantResult(t, "ts "+bad, asDo(t, hs, "PUT", p, bridgeToken, map[string]any{"body": "x"}), 400, "M_INVALID_PARAM")
	}
	user := newUser(t, hs, "carol")
	token := user.AccessToken
	wantResult(t, "user joins", asDo(t, hs, "POST", v3+"/rooms/"+url.PathEscape(roomID)+"/join", token, map[string]any{}), 200, "")
	r = asDo(t, hs, "PUT", v3+"/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/u1?ts=1234", token, map[string]any{"body": "now"})
	wantResult(t, "user sends with ts", r, 200, "")
	if ts := originTS(r.body["event_id"].(string)); ts == 1234 {
		t.Fatal("a user's ts was honoured")
	}

	// Aliases.
	alias := func(a string) string { return v3 + "/directory/room/" + url.PathEscape(a) }
	wantResult(t, "user takes an exclusive alias", asDo(t, hs, "PUT", alias("#_bridge_mine:"+serverName), token, map[string]any{"room_id": roomID}), 400, "M_EXCLUSIVE")
	wantResult(t, "user creates a room with an exclusive alias", asDo(t, hs, "POST", v3+"/createRoom", token, map[string]any{"room_alias_name": "_bridge_other"}), 400, "M_EXCLUSIVE")
	wantResult(t, "appservice takes an alias outside its namespace", asDo(t, hs, "PUT", alias("#elsewhere:"+serverName), bridgeToken, map[string]any{"room_id": roomID}), 400, "M_EXCLUSIVE")
	wantResult(t, "appservice takes its alias", asDo(t, hs, "PUT", alias("#_bridge_second:"+serverName), bridgeToken, map[string]any{"room_id": roomID}), 200, "")
	wantResult(t, "user takes a free alias", asDo(t, hs, "PUT", alias("#carols:"+serverName), token, map[string]any{"room_id": roomID}), 200, "")
	r = asDo(t, hs, "GET", alias("#_bridge_portal:"+serverName), "", nil)
	if r.status != 200 || r.body["room_id"] != roomID {
		t.Fatalf("portal alias %s", r.raw)
	}
}

// Rate limits: an appservice with rate_limited: false is never limited,
// whoever it acts as; one without is, like users.
func TestAppserviceRateLimits(t *testing.T) {
	// Registrations and logins too: two per client, then one per 1000 s.
	hs := startAppserviceStack(t, func(c *clientapi.Config) {
		c.RateLimit.Register = ratelimit.Bucket{PerSecond: 0.001, Burst: 2}
		c.RateLimit.Login = ratelimit.Bucket{PerSecond: 0.001, Burst: 2}
	})
	for i := range 4 {
		r := asDo(t, hs, "POST", v3+"/register", bridgeToken, map[string]any{"type": "m.login.application_service", "username": fmt.Sprintf("_bridge_r%d", i), "inhibit_login": true})
		wantResult(t, fmt.Sprintf("unlimited registration %d", i), r, 200, "")
		r = asDo(t, hs, "POST", v3+"/login", bridgeToken, map[string]any{"type": "m.login.application_service", "user": fmt.Sprintf("_bridge_r%d", i)})
		wantResult(t, fmt.Sprintf("unlimited login %d", i), r, 200, "")
	}
	for i := range 2 {
		r := asDo(t, hs, "POST", v3+"/register", ircToken, map[string]any{"type": "m.login.application_service", "username": fmt.Sprintf("irc_r%d", i), "inhibit_login": true})
		wantResult(t, fmt.Sprintf("limited registration %d", i), r, 200, "")
	}
	wantResult(t, "limited registration over the burst", asDo(t, hs, "POST", v3+"/register", ircToken, map[string]any{"type": "m.login.application_service", "username": "irc_r2", "inhibit_login": true}), 429, "M_LIMIT_EXCEEDED")

	r := asDo(t, hs, "POST", v3+"/createRoom", bridgeToken, map[string]any{"preset": "public_chat"})
	wantResult(t, "sender creates a room", r, 200, "")
	roomID := url.PathEscape(r.body["room_id"].(string))
	wantResult(t, "irc ghost joins", asDo(t, hs, "POST", as(v3+"/rooms/"+roomID+"/join", "@irc_r1:"+serverName), ircToken, map[string]any{}), 200, "")

	for i := range 6 {
		p := fmt.Sprintf("%s/rooms/%s/send/m.room.message/free%d", v3, roomID, i)
		wantResult(t, fmt.Sprintf("unlimited send %d", i), asDo(t, hs, "PUT", p, bridgeToken, map[string]any{"body": "x"}), 200, "")
	}
	for i := range 2 {
		p := as(fmt.Sprintf("%s/rooms/%s/send/m.room.message/irc%d", v3, roomID, i), "@irc_r1:"+serverName)
		wantResult(t, fmt.Sprintf("limited send %d", i), asDo(t, hs, "PUT", p, ircToken, map[string]any{"body": "x"}), 200, "")
	}
	p := as(v3+"/rooms/"+roomID+"/send/m.room.message/irc2", "@irc_r1:"+serverName)
	wantResult(t, "limited send over the burst", asDo(t, hs, "PUT", p, ircToken, map[string]any{"body": "x"}), 429, "M_LIMIT_EXCEEDED")
}

// The appservice network directories: only the appservice publishes
// there, and /publicRooms lists a network's rooms only when asked for it
// or for every network.
func TestAppserviceNetworkDirectory(t *testing.T) {
	hs := startAppserviceStack(t)
	user := newUser(t, hs, "dora")
	mainRoom := asDo(t, hs, "POST", v3+"/createRoom", user.AccessToken, map[string]any{"preset": "public_chat", "visibility": "public"}).body["room_id"].(string)
	bridged := asDo(t, hs, "POST", v3+"/createRoom", bridgeToken, map[string]any{"preset": "public_chat"}).body["room_id"].(string)

	list := func(path string) string { return v3 + "/directory/list/appservice/" + path }
	wantResult(t, "user publishes in a network", asDo(t, hs, "PUT", list("chat/"+url.PathEscape(bridged)), user.AccessToken, map[string]any{"visibility": "public"}), 403, "M_FORBIDDEN")
	wantResult(t, "bad visibility", asDo(t, hs, "PUT", list("chat/"+url.PathEscape(bridged)), bridgeToken, map[string]any{"visibility": "hidden"}), 400, "M_INVALID_PARAM")
	wantResult(t, "unknown room", asDo(t, hs, "PUT", list("chat/"+url.PathEscape("!nope:"+serverName)), bridgeToken, map[string]any{"visibility": "public"}), 404, "M_NOT_FOUND")
	wantResult(t, "appservice publishes", asDo(t, hs, "PUT", list("chat/"+url.PathEscape(bridged)), bridgeToken, map[string]any{"visibility": "public"}), 200, "")

	rooms := func(body map[string]any) []string {
		t.Helper()
		r := asDo(t, hs, "POST", v3+"/publicRooms", user.AccessToken, body)
		wantResult(t, fmt.Sprintf("publicRooms %v", body), r, 200, "")
		var ids []string
		for _, c := range r.body["chunk"].([]any) {
			ids = append(ids, c.(map[string]any)["room_id"].(string))
		}
		return ids
	}
	if got := rooms(map[string]any{}); len(got) != 1 || got[0] != mainRoom {
		t.Fatalf("server directory %v", got)
	}
	if got := rooms(map[string]any{"third_party_instance_id": "bridge|chat"}); len(got) != 1 || got[0] != bridged {
		t.Fatalf("network directory %v", got)
	}
	if got := rooms(map[string]any{"include_all_networks": true}); len(got) != 2 {
		t.Fatalf("all networks %v", got)
	}
	if r := asDo(t, hs, "GET", v3+"/publicRooms?third_party_instance_id="+url.QueryEscape("bridge|chat"), "", nil); r.status != 200 || len(r.body["chunk"].([]any)) != 1 {
		t.Fatalf("GET network directory %s", r.raw)
	}
	wantResult(t, "unknown network", asDo(t, hs, "POST", v3+"/publicRooms", user.AccessToken, map[string]any{"third_party_instance_id": "nobody|chat"}), 400, "M_INVALID_PARAM")
	wantResult(t, "network and all networks", asDo(t, hs, "POST", v3+"/publicRooms", user.AccessToken, map[string]any{"third_party_instance_id": "bridge|chat", "include_all_networks": true}), 400, "M_INVALID_PARAM")

	// An upgrade moves the network listing to the replacement room.
	up := asDo(t, hs, "POST", v3+"/rooms/"+url.PathEscape(bridged)+"/upgrade", bridgeToken, map[string]any{"new_version": "11"})
	wantResult(t, "upgrade the bridged room", up, 200, "")
	bridged = up.body["replacement_room"].(string)
	if got := rooms(map[string]any{"third_party_instance_id": "bridge|chat"}); len(got) != 1 || got[0] != bridged {
		t.Fatalf("network directory after the upgrade %v, want the replacement %s", got, bridged)
	}
	if got := rooms(map[string]any{}); len(got) != 1 || got[0] != mainRoom {
		t.Fatalf("server directory after the upgrade %v", got)
	}

	wantResult(t, "appservice unpublishes", asDo(t, hs, "PUT", list("chat/"+url.PathEscape(bridged)), bridgeToken, map[string]any{"visibility": "private"}), 200, "")
	if got := rooms(map[string]any{"third_party_instance_id": "bridge|chat"}); len(got) != 0 {
		t.Fatalf("network directory after unpublishing %v", got)
	}

	// Ping is the appservice's own.
	ping := "/_matrix/client/v1/appservice/bridge/ping"
	wantResult(t, "user pings", asDo(t, hs, "POST", ping, user.AccessToken, map[string]any{}), 403, "M_FORBIDDEN")
	wantResult(t, "another appservice pings", asDo(t, hs, "POST", ping, ircToken, map[string]any{}), 403, "M_FORBIDDEN")
}

// Device management (spec v1.17): an appservice creates its users'
// devices with PUT /devices/{deviceId} and deletes them without
// user-interactive auth; users still need it.
func TestAppserviceDevices(t *testing.T) {
	hs := startAppserviceStack(t)
	wantResult(t, "register ghost", asDo(t, hs, "POST", v3+"/register", bridgeToken, map[string]any{"type": "m.login.application_service", "username": "_bridge_alice", "inhibit_login": true}), 200, "")
	wantResult(t, "unknown device", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost, "device_id", "BRIDGEDEV"), bridgeToken, nil), 400, "M_UNKNOWN_DEVICE")
	wantResult(t, "create device", asDo(t, hs, "PUT", as(v3+"/devices/BRIDGEDEV", ghost), bridgeToken, map[string]any{"display_name": "bridge"}), 201, "")
	r := asDo(t, hs, "GET", as(v3+"/account/whoami", ghost, "device_id", "BRIDGEDEV"), bridgeToken, nil)
	if r.status != 200 || r.body["device_id"] != "BRIDGEDEV" {
		t.Fatalf("whoami on the created device %s", r.raw)
	}
	r = asDo(t, hs, "GET", as(v3+"/devices/BRIDGEDEV", ghost), bridgeToken, nil)
	if r.status != 200 || r.body["display_name"] != "bridge" {
		t.Fatalf("created device %s", r.raw)
	}
	wantResult(t, "rename device", asDo(t, hs, "PUT", as(v3+"/devices/BRIDGEDEV", ghost), bridgeToken, map[string]any{"display_name": "renamed"}), 200, "")
	if r := asDo(t, hs, "GET", as(v3+"/devices/BRIDGEDEV", ghost), bridgeToken, nil); r.body["display_name"] != "renamed" {
		t.Fatalf("renamed device %s", r.raw)
	}
	wantResult(t, "delete without UIA", asDo(t, hs, "DELETE", as(v3+"/devices/BRIDGEDEV", ghost), bridgeToken, map[string]any{}), 200, "")
	wantResult(t, "deleted device", asDo(t, hs, "GET", as(v3+"/account/whoami", ghost, "device_id", "BRIDGEDEV"), bridgeToken, nil), 400, "M_UNKNOWN_DEVICE")
	wantResult(t, "create two", asDo(t, hs, "PUT", as(v3+"/devices/D1", ghost), bridgeToken, map[string]any{}), 201, "")
	wantResult(t, "PUT of a device that exists updates it", asDo(t, hs, "PUT", as(v3+"/devices/D1", ghost), bridgeToken, map[string]any{}), 200, "")
	wantResult(t, "bulk delete without UIA", asDo(t, hs, "POST", as(v3+"/delete_devices", ghost), bridgeToken, map[string]any{"devices": []string{"D1"}}), 200, "")
	wantResult(t, "bulk deleted device", asDo(t, hs, "GET", as(v3+"/devices/D1", ghost), bridgeToken, nil), 404, "M_NOT_FOUND")

	// A user renaming an unknown device is still 404, deleting is UIA.
	user := newUser(t, hs, "erin")
	wantResult(t, "user's unknown device", asDo(t, hs, "PUT", v3+"/devices/NOPE", user.AccessToken, map[string]any{"display_name": "x"}), 404, "M_NOT_FOUND")
	wantResult(t, "user deletes with UIA", asDo(t, hs, "DELETE", v3+"/devices/"+string(user.DeviceID), user.AccessToken, map[string]any{}), 401, "")
}
