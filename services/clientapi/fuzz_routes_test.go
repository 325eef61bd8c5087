package clientapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/services/clientapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// routeFuzzSkipped are the routes the route fuzz test leaves out: each ends
// the session the fuzz test sends with (its access token or its account),
// which would turn every later input into a 401. Their bad input is tested
// by the account tests.
var routeFuzzSkipped = map[string]bool{
	"POST /logout": true, "POST /logout/all": true, "POST /account/deactivate": true,
	"POST /account/password": true, "POST /delete_devices": true, "DELETE /devices/{deviceId}": true,
}

// routeFuzzBodies are well-formed bodies for the JSON-taking routes, the
// seeds the fuzzer mutates from; a route without one starts from {}.
var routeFuzzBodies = map[string]string{
	"POST /register":   `{"username":"fz","password":"pw","auth":{"type":"m.login.dummy"}}`,
	"POST /login":      `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer"},"password":"pw-fuzzer"}`,
	"POST /refresh":    `{"refresh_token":"x"}`,
	"POST /createRoom": `{"name":"n","topic":"t","preset":"private_chat","initial_state":[{"type":"m.room.topic","state_key":"","content":{"topic":"x"}}],"power_level_content_override":{"users_default":1}}`,
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":         `{"msgtype":"m.text","body":"hi"}`,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey}":     `{"topic":"t"}`,
	"PUT /rooms/{roomId}/state/{eventType}":                `{"topic":"t"}`,
	"PUT /rooms/{roomId}/redact/{eventId}/{txnId}":         `{"reason":"r"}`,
	"POST /user/{userId}/filter":                           `{"room":{"timeline":{"limit":5,"types":["m.room.message"],"not_senders":["@a:b"]},"rooms":["!a:b"]},"event_fields":["content.body"]}`,
	"PUT /profile/{userId}/{keyName}":                      `{"displayname":"d"}`,
	"PUT /user/{userId}/account_data/{type}":               `{"k":"v"}`,
	"PUT /user/{userId}/rooms/{roomId}/tags/{tag}":         `{"order":0.5}`,
	"PUT /pushrules/{scope}/{kind}/{ruleId}":               `{"actions":["notify",{"set_tweak":"highlight"}],"conditions":[{"kind":"event_match","key":"content.body","pattern":"x*"}],"pattern":"x"}`,
	"PUT /pushrules/{scope}/{kind}/{ruleId}/enabled":       `{"enabled":false}`,
	"PUT /pushrules/{scope}/{kind}/{ruleId}/actions":       `{"actions":["dont_notify"]}`,
	"POST /keys/upload":                                    `{"one_time_keys":{"signed_curve25519:AAAAAQ":{"key":"k","signatures":{}}}}`,
	"POST /keys/query":                                     `{"device_keys":{"@fuzzer:example.test":[]}}`,
	"POST /keys/claim":                                     `{"one_time_keys":{"@fuzzer:example.test":{"DEV":"signed_curve25519"}}}`,
	"POST /rooms/{roomId}/receipt/{receiptType}/{eventId}": `{"thread_id":"main"}`,
	"POST /rooms/{roomId}/read_markers":                    `{"m.fully_read":"$e","m.read":"$e"}`,
	"PUT /rooms/{roomId}/typing/{userId}":                  `{"typing":true,"timeout":1000}`,
	"PUT /presence/{userId}/status":                        `{"presence":"online","status_msg":"s"}`,
	"POST /search":                                         `{"search_categories":{"room_events":{"search_term":"hi","order_by":"recent","event_context":{"before_limit":1}}}}`,
	"POST /user_directory/search":                          `{"search_term":"fu","limit":3}`,
	"POST /rooms/{roomId}/invite":                          `{"user_id":"@nobody:example.test","reason":"r"}`,
	"POST /rooms/{roomId}/kick":                            `{"user_id":"@nobody:example.test"}`,
	"POST /rooms/{roomId}/ban":                             `{"user_id":"@nobody:example.test"}`,
	"POST /rooms/{roomId}/unban":                           `{"user_id":"@nobody:example.test"}`,
	"POST /rooms/{roomId}/report/{eventId}":                `{"reason":"r","score":-100}`,
	"POST /rooms/{roomId}/upgrade":                         `{"new_version":"10"}`,
	"PUT /directory/room/{roomAlias}":                      `{"room_id":"!r:example.test"}`,
	"POST /publicRooms":                                    `{"limit":2,"filter":{"generic_search_term":"x"}}`,
	"PUT /sendToDevice/{eventType}/{txnId}":                `{"messages":{"@fuzzer:example.test":{"*":{"a":1}}}}`,
	"PUT /room_keys/keys":                                  `{"rooms":{}}`,
	"POST /room_keys/version":                              `{"algorithm":"m.megolm_backup.v1.curve25519-aes-sha2","auth_data":{"public_key":"k"}}`,
}

// routeFuzzBadBodies are request bodies every JSON-taking route must refuse
// with a 4xx and an errcode, or accept.
var routeFuzzBadBodies = []string{
	"", "\xff\xfe", `{"n":1E2,"z":0.0,"f":1.5,"big":9007199254740993}`, `{"a":"\u0000"}`, `{"a":"\ud800"}`, `[]`, `null`, `"s"`, `{`, `{"a":1}{`, `{"user_id":["x"],"body":{},"msgtype":7}`,
}

// routeFuzz is one client-API on the real stack with a user, a room, an
// event and a filter, whose IDs fill the routes' path parameters.
type routeFuzz struct {
	url    string
	token  string
	routes []httpapi.Route
	params map[string]string
	txn    atomic.Int64
}

func newRouteFuzz(tb testing.TB) *routeFuzz {
	tb.Helper()
	cfg := clientapi.DefaultConfig()
	cfg.RateLimit.Enabled = false
	urls, svcs := startReplicaServices(tb, cfg, 1, nil)
	cli := newUser(tb, urls[0], "fuzzer")
	ctx := context.Background()
	created, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "fuzz"})
	if err != nil {
		tb.Fatal(err)
	}
	sent, err := cli.SendMessageEvent(ctx, created.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hello"})
	if err != nil {
		tb.Fatal(err)
	}
	filter, err := cli.CreateFilter(ctx, &mautrix.Filter{})
	if err != nil {
		tb.Fatal(err)
	}
	return &routeFuzz{
		url: urls[0], token: cli.AccessToken, routes: clientapi.RouteTable(svcs[0]),
		params: map[string]string{
			"roomId": created.RoomID.String(), "roomIdOrAlias": created.RoomID.String(), "eventId": sent.EventID.String(),
			"userId": cli.UserID.String(), "deviceId": cli.DeviceID.String(), "filterId": filter.FilterID,
			"eventType": "m.room.message", "type": "org.example.fuzz", "stateKey": "", "relType": "m.annotation",
			"receiptType": "m.read", "roomAlias": "#fuzz:example.test", "keyName": "displayname", "tag": "u.fuzz",
			"scope": "global", "kind": "override", "ruleId": "org.example.rule", "attr": "enabled", "version": "1",
		},
	}
}

var pathParam = regexp.MustCompile(`\{([a-zA-Z]+)\}`)

func routeKey(rt httpapi.Route) string { return rt.Method + " " + rt.Path }

// path fills rt's path parameters from the fixture, except the n-th, which
// becomes replace when that is not empty.
func (f *routeFuzz) path(rt httpapi.Route, n int, replace string) string {
	p := rt.Path
	if !rt.Abs {
		p = "/_matrix/client/v3" + p
	}
	i := 0
	return pathParam.ReplaceAllStringFunc(p, func(m string) string {
		name := m[1 : len(m)-1]
		v, ok := f.params[name]
		if name == "txnId" || !ok {
			v = fmt.Sprintf("fz%d", f.txn.Add(1))
		}
		if i == n && replace != "" {
			v = replace
		}
		i++
		return url.PathEscape(v)
	})
}

// check sends one request and fails on a 5xx or an error without errcode.
func (f *routeFuzz) check(t *testing.T, rt httpapi.Route, param int, value, query string, body []byte) {
	n := len(pathParam.FindAllString(rt.Path, -1))
	if n > 0 {
		param %= n
	}
	u := f.url + f.path(rt, param, value)
	if q, err := url.ParseQuery(query); err == nil && len(q) > 0 {
		if q.Has("timeout") {
			q.Set("timeout", "0") // no long polls
		}
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if rt.Method != http.MethodGet && rt.Method != http.MethodDelete || len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, rt.Method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", rt.Method, u, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode >= 500 {
		t.Fatalf("%s %s with %q: %d %s", rt.Method, u, body, resp.StatusCode, raw)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s with %q: %d, body not a JSON object: %q", rt.Method, u, body, resp.StatusCode, raw)
	}
	if resp.StatusCode == http.StatusUnauthorized && out["flows"] != nil {
		return // a user-interactive auth challenge, which needs no errcode
	}
	if resp.StatusCode >= 400 {
		if code, _ := out["errcode"].(string); !strings.HasPrefix(code, "M_") {
			t.Fatalf("%s %s with %q: %d without errcode: %s", rt.Method, u, body, resp.StatusCode, raw)
		}
	}
}

// FuzzRoutes sends arbitrary bodies, path parameters and queries to every
// route of the client-API's real router, on the real stack (room-server,
// key-server, PostgreSQL, NATS JetStream), as an authenticated user. No
// input may get a 5xx, and every error carries an errcode. The seeds are
// every route with a well-formed body and with each of routeFuzzBadBodies.
func FuzzRoutes(f *testing.F) {
	fx := newRouteFuzz(f)
	var seeded int
	for i, rt := range fx.routes {
		if routeFuzzSkipped[routeKey(rt)] {
			continue
		}
		good, ok := routeFuzzBodies[routeKey(rt)]
		if !ok {
			good = `{}`
		}
		if rt.Method == http.MethodGet || rt.Method == http.MethodDelete {
			good = ""
		}
		f.Add(uint16(i), uint8(0), "", "", []byte(good))
		if rt.Method == http.MethodGet || rt.Method == http.MethodDelete {
			f.Add(uint16(i), uint8(0), "%00", "limit=-1&from=x&dir=q&timeout=5", []byte(""))
			continue
		}
		for _, bad := range routeFuzzBadBodies {
			f.Add(uint16(i), uint8(0), "", "", []byte(bad))
		}
		f.Add(uint16(i), uint8(0), "\xff", "", []byte(good))
		seeded++
	}
	if seeded == 0 {
		f.Fatal("no JSON-taking route found in the route table")
	}
	f.Fuzz(func(t *testing.T, idx uint16, param uint8, value, query string, body []byte) {
		rt := fx.routes[int(idx)%len(fx.routes)]
		if routeFuzzSkipped[routeKey(rt)] {
			return
		}
		fx.check(t, rt, int(param), value, query, body)
	})
}
