package clientapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// countRows counts rows of a clientapi table.
func (h *harness) countRows(table string) int {
	h.t.Helper()
	conn, err := pgx.Connect(context.Background(), h.dbURL)
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM clientapi."+table).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

func TestRegisterUIAFlow(t *testing.T) {
	h := newHarness(t, testConfig(), nil)

	// No auth: 401 with the dummy flow and a session; nothing is written.
	first := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "Alice", "password": "pw"})
	h.expect(first, 401, "")
	flows, _ := first.body["flows"].([]any)
	if len(flows) != 1 || !strings.Contains(string(first.raw), `"stages":["m.login.dummy"]`) || first.body["session"] == "" {
		t.Fatalf("bad UIA challenge: %s", first.raw)
	}
	if _, ok := first.body["params"].(map[string]any); !ok {
		t.Fatalf("params missing: %s", first.raw)
	}
	if n := h.countRows("accounts"); n != 0 {
		t.Fatalf("%d accounts after the challenge", n)
	}

	// Unknown auth type: 401 again with an errcode.
	bad := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "pw",
		"auth": map[string]any{"type": "m.login.recaptcha", "session": first.body["session"]}})
	h.expect(bad, 401, "M_UNRECOGNIZED")

	// Unknown session.
	h.expect(h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "pw",
		"auth": map[string]any{"type": "m.login.dummy", "session": "nope"}}), 400, "M_UNKNOWN")

	// Dummy auth with the session: the account exists, lowercased.
	second := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "Alice", "password": "pw", "device_id": "PHONE", "initial_device_display_name": "Phone",
		"auth": map[string]any{"type": "m.login.dummy", "session": first.body["session"]},
	})
	h.expect(second, 200, "")
	if second.body["user_id"] != "@alice:example.test" || second.body["device_id"] != "PHONE" {
		t.Fatalf("register response %s", second.raw)
	}
	token := second.body["access_token"].(string)
	if !strings.HasPrefix(token, "myl_") || len(token) < 4+43 {
		t.Fatalf("token %q is not a myl_ token of 32 random bytes", token)
	}
	who := h.do("GET", "/_matrix/client/v3/account/whoami", token, nil)
	h.expect(who, 200, "")
	if who.body["user_id"] != "@alice:example.test" || who.body["device_id"] != "PHONE" || who.body["is_guest"] != false {
		t.Fatalf("whoami %s", who.raw)
	}

	// The token is stored only as its SHA-256.
	conn, err := pgx.Connect(context.Background(), h.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var stored []byte
	if err := conn.QueryRow(context.Background(), "SELECT token_hash FROM clientapi.access_tokens").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(token))
	if !bytes.Equal(stored, sum[:]) {
		t.Fatal("stored token is not the SHA-256 of the token")
	}
	var hash string
	if err := conn.QueryRow(context.Background(), "SELECT password_hash FROM clientapi.accounts").Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "$2a$10$") {
		t.Fatalf("password hash %q is not bcrypt cost 10", hash)
	}

	// Taken, before any UIA.
	h.expect(h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "ALICE", "password": "x"}), 400, "M_USER_IN_USE")
	h.expect(h.do("GET", "/_matrix/client/v3/register/available?username=alice", "", nil), 400, "M_USER_IN_USE")
	avail := h.do("GET", "/_matrix/client/r0/register/available?username=bob", "", nil)
	h.expect(avail, 200, "")
	if avail.body["available"] != true {
		t.Fatalf("available %s", avail.raw)
	}

	// Dummy auth without a session on the first call (as Synapse allows),
	// a generated localpart, and inhibit_login.
	gen := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{
		"password": "pw", "inhibit_login": true, "auth": map[string]any{"type": "m.login.dummy"},
	})
	h.expect(gen, 200, "")
	uid, _ := gen.body["user_id"].(string)
	if !strings.HasPrefix(uid, "@") || !strings.HasSuffix(uid, ":example.test") {
		t.Fatalf("generated user ID %q", uid)
	}
	if _, ok := gen.body["access_token"]; ok {
		t.Fatalf("inhibit_login returned a token: %s", gen.raw)
	}
	if n := h.countRows("accounts"); n != 2 {
		t.Fatalf("%d accounts, want 2", n)
	}
}

func TestRegisterRejects(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	dummy := map[string]any{"type": "m.login.dummy"}
	cases := []struct {
		name    string
		path    string
		body    any
		status  int
		errcode string
	}{
		{"not json", "/register", "{nope", 400, "M_NOT_JSON"},
		{"empty body", "/register", "", 400, "M_NOT_JSON"},
		{"array body", "/register", `[1]`, 400, "M_BAD_JSON"},
		{"username not a string", "/register", map[string]any{"username": 5, "auth": dummy}, 400, "M_BAD_JSON"},
		{"auth not an object", "/register", map[string]any{"username": "x", "auth": "dummy"}, 400, "M_BAD_JSON"},
		{"invalid characters", "/register", map[string]any{"username": "al ice", "auth": dummy}, 400, "M_INVALID_USERNAME"},
		{"non-ascii", "/register", map[string]any{"username": "älice", "auth": dummy}, 400, "M_INVALID_USERNAME"},
		{"full user ID", "/register", map[string]any{"username": "@alice:example.test", "auth": dummy}, 400, "M_INVALID_USERNAME"},
		{"too long", "/register", map[string]any{"username": strings.Repeat("a", 250), "auth": dummy}, 400, "M_INVALID_USERNAME"},
		{"guest", "/register?kind=guest", map[string]any{"auth": dummy}, 403, "M_FORBIDDEN"},
		{"available invalid", "/register/available?username=a%20b", nil, 400, "M_INVALID_USERNAME"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := "POST"
			if strings.HasPrefix(c.path, "/register/available") {
				method = "GET"
			}
			h.expect(h.do(method, "/_matrix/client/v3"+c.path, "", c.body), c.status, c.errcode)
		})
	}
	if n := h.countRows("accounts"); n != 0 {
		t.Fatalf("bad requests wrote %d accounts", n)
	}

	closed := testConfig()
	closed.Registration.Mode = RegistrationClosed
	hc := newHarness(t, closed, nil)
	hc.expect(hc.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "bob", "auth": dummy}), 403, "M_FORBIDDEN")
}

func TestLoginLogout(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	regToken, _ := h.register("carol", "secret")

	flows := h.do("GET", "/_matrix/client/v3/login", "", nil)
	h.expect(flows, 200, "")
	if !strings.Contains(string(flows.raw), `"m.login.password"`) {
		t.Fatalf("login flows %s", flows.raw)
	}

	bad := []struct {
		name    string
		body    any
		status  int
		errcode string
	}{
		{"wrong password", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "carol"}, "password": "nope"}, 403, "M_FORBIDDEN"},
		{"unknown user", map[string]any{"type": "m.login.password", "user": "dave", "password": "secret"}, 403, "M_FORBIDDEN"},
		{"other server", map[string]any{"type": "m.login.password", "user": "@carol:elsewhere.test", "password": "secret"}, 403, "M_FORBIDDEN"},
		{"unknown type", map[string]any{"type": "m.login.sso"}, 400, "M_UNKNOWN"},
		{"bad login token", map[string]any{"type": "m.login.token", "token": "x"}, 403, "M_FORBIDDEN"},
		{"third-party identifier", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"}, "password": "secret"}, 403, "M_FORBIDDEN"},
		{"unknown identifier", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.nope"}, "password": "secret"}, 400, "M_UNKNOWN"},
		{"no user", map[string]any{"type": "m.login.password", "password": "secret"}, 400, "M_MISSING_PARAM"},
		{"password not a string", map[string]any{"type": "m.login.password", "user": "carol", "password": 1}, 400, "M_BAD_JSON"},
		{"not json", "password=secret", 400, "M_NOT_JSON"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			h.expect(h.do("POST", "/_matrix/client/v3/login", "", c.body), c.status, c.errcode)
		})
	}

	login := func(body map[string]any) (string, string) {
		t.Helper()
		r := h.do("POST", "/_matrix/client/v3/login", "", body)
		h.expect(r, 200, "")
		if r.body["user_id"] != "@carol:example.test" {
			t.Fatalf("login %s", r.raw)
		}
		return r.body["access_token"].(string), r.body["device_id"].(string)
	}
	t1, d1 := login(map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "carol"}, "password": "secret"})
	t2, _ := login(map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "@Carol:example.test"}, "password": "secret"})
	t3, d3 := login(map[string]any{"type": "m.login.password", "user": "carol", "password": "secret", "device_id": "LAPTOP"})
	if d3 != "LAPTOP" || d1 == "" || d1 == "LAPTOP" {
		t.Fatalf("device IDs %q %q", d1, d3)
	}
	// Logging in again with the same device_id revokes that device's old token.
	t4, _ := login(map[string]any{"type": "m.login.password", "user": "carol", "password": "secret", "device_id": "LAPTOP"})
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", t3, nil), 401, "M_UNKNOWN_TOKEN")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", t4, nil), 200, "")

	// Logout invalidates only that token.
	h.expect(h.do("POST", "/_matrix/client/v3/logout", t1, nil), 200, "")
	out := h.do("GET", "/_matrix/client/v3/account/whoami", t1, nil)
	h.expect(out, 401, "M_UNKNOWN_TOKEN")
	if out.body["soft_logout"] != false {
		t.Fatalf("soft_logout missing: %s", out.raw)
	}
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", t2, nil), 200, "")

	// Logout all invalidates every token of the user.
	h.expect(h.do("POST", "/_matrix/client/v3/logout/all", t2, ""), 200, "")
	for _, tok := range []string{regToken, t2, t4} {
		h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", tok, nil), 401, "M_UNKNOWN_TOKEN")
	}
	if n := h.countRows("devices"); n != 0 {
		t.Fatalf("%d devices left after logout/all", n)
	}
}

func TestHTTPErrors(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	token, userID := h.register("erin", "pw")

	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", "", nil), 401, "M_MISSING_TOKEN")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", "myl_bogus", nil), 401, "M_UNKNOWN_TOKEN")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami?access_token="+token, "", nil), 200, "")
	h.expect(h.do("GET", "/_matrix/client/v3/sync", "", nil), 401, "M_MISSING_TOKEN")
	h.expect(h.do("GET", "/_matrix/client/v3/nonexistent", token, nil), 404, "M_UNRECOGNIZED")
	h.expect(h.do("DELETE", "/_matrix/client/v3/account/whoami", token, nil), 405, "M_UNRECOGNIZED")

	room := "/_matrix/client/v3/rooms/%21room%3Aexample.test"
	cases := []struct {
		name    string
		method  string
		path    string
		body    any
		status  int
		errcode string
	}{
		{"send not json", "PUT", room + "/send/m.room.message/t1", "hello", 400, "M_NOT_JSON"},
		{"send empty", "PUT", room + "/send/m.room.message/t1", "", 400, "M_NOT_JSON"},
		{"send array", "PUT", room + "/send/m.room.message/t1", `["a"]`, 400, "M_BAD_JSON"},
		{"send bad room", "PUT", "/_matrix/client/v3/rooms/nope/send/m.room.message/t1", `{}`, 400, "M_INVALID_PARAM"},
		{"state not json", "PUT", room + "/state/m.room.name", "x", 400, "M_NOT_JSON"},
		{"createRoom not json", "POST", "/_matrix/client/v3/createRoom", "{", 400, "M_NOT_JSON"},
		{"createRoom wrong type", "POST", "/_matrix/client/v3/createRoom", map[string]any{"name": 5}, 400, "M_BAD_JSON"},
		{"createRoom bad version", "POST", "/_matrix/client/v3/createRoom", map[string]any{"room_version": "1000"}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
		{"invite without user", "POST", room + "/invite", `{}`, 400, "M_BAD_JSON"},
		{"invite bad user", "POST", room + "/invite", map[string]any{"user_id": "bob"}, 400, "M_INVALID_PARAM"},
		{"join bad target", "POST", "/_matrix/client/v3/join/lobby", `{}`, 400, "M_INVALID_PARAM"},
		{"alias malformed", "GET", "/_matrix/client/v3/directory/room/lobby", nil, 400, "M_INVALID_PARAM"},
		{"messages without dir", "GET", room + "/messages", nil, 400, "M_MISSING_PARAM"},
		{"messages bad dir", "GET", room + "/messages?dir=x", nil, 400, "M_INVALID_PARAM"},
		{"messages bad token", "GET", room + "/messages?dir=b&from=zzz", nil, 400, "M_INVALID_PARAM"},
		{"messages bad limit", "GET", room + "/messages?dir=b&limit=ten", nil, 400, "M_INVALID_PARAM"},
		{"sync bad since", "GET", "/_matrix/client/v3/sync?since=nope", nil, 400, "M_INVALID_PARAM"},
		{"sync bad timeout", "GET", "/_matrix/client/v3/sync?timeout=soon", nil, 400, "M_INVALID_PARAM"},
		{"sync unknown filter", "GET", "/_matrix/client/v3/sync?filter=12345", nil, 400, "M_INVALID_PARAM"},
		{"sync bad inline filter", "GET", "/_matrix/client/v3/sync?filter=%7Bnope", nil, 400, "M_NOT_JSON"},
		{"filter for another user", "POST", "/_matrix/client/v3/user/%40bob%3Aexample.test/filter", `{}`, 403, "M_FORBIDDEN"},
		{"filter wrong type", "POST", "/_matrix/client/v3/user/" + userID + "/filter", map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": "ten"}}}, 400, "M_BAD_JSON"},
		{"filter unknown", "GET", "/_matrix/client/v3/user/" + userID + "/filter/999", nil, 404, "M_NOT_FOUND"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.expect(h.do(c.method, c.path, token, c.body), c.status, c.errcode)
		})
	}
	if n := h.countRows("filters"); n != 0 {
		t.Fatalf("bad filters stored: %d", n)
	}
}

func TestDiscoveryAndFilters(t *testing.T) {
	cfg := testConfig()
	cfg.PublicBaseURL = "https://matrix.example.test"
	h := newHarness(t, cfg, nil)

	v := h.do("GET", "/_matrix/client/versions", "", nil)
	h.expect(v, 200, "")
	if !strings.Contains(string(v.raw), `"v1.12"`) || v.body["unstable_features"] == nil {
		t.Fatalf("versions %s", v.raw)
	}
	wk := h.do("GET", "/.well-known/matrix/client", "", nil)
	h.expect(wk, 200, "")
	if wk.body["m.homeserver"].(map[string]any)["base_url"] != "https://matrix.example.test" {
		t.Fatalf("well-known %s", wk.raw)
	}
	if wk.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatal("CORS header missing")
	}

	token, userID := h.register("frank", "pw")
	filter := map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 5}}}
	a := h.do("POST", "/_matrix/client/v3/user/"+userID+"/filter", token, filter)
	h.expect(a, 200, "")
	b := h.do("POST", "/_matrix/client/v3/user/"+userID+"/filter", token, filter)
	if a.body["filter_id"] == "" || a.body["filter_id"] != b.body["filter_id"] {
		t.Fatalf("identical filters got IDs %v and %v", a.body["filter_id"], b.body["filter_id"])
	}
	got := h.do("GET", "/_matrix/client/v3/user/"+userID+"/filter/"+a.body["filter_id"].(string), token, nil)
	h.expect(got, 200, "")
	if got.body["room"].(map[string]any)["timeline"].(map[string]any)["limit"] != 5.0 {
		t.Fatalf("filter %s", got.raw)
	}
	// A filter of many rooms (far over the ~2.7 kB a btree entry may hold)
	// is stored, deduplicated and read back whole (issue #19).
	var rooms []string
	for i := range 400 {
		rooms = append(rooms, fmt.Sprintf("!room%04d:example.test", i))
	}
	big := map[string]any{"room": map[string]any{"rooms": rooms}}
	c := h.do("POST", "/_matrix/client/v3/user/"+userID+"/filter", token, big)
	h.expect(c, 200, "")
	d := h.do("POST", "/_matrix/client/v3/user/"+userID+"/filter", token, big)
	h.expect(d, 200, "")
	if c.body["filter_id"] != d.body["filter_id"] || c.body["filter_id"] == a.body["filter_id"] {
		t.Fatalf("big filter IDs %v, %v (small %v)", c.body["filter_id"], d.body["filter_id"], a.body["filter_id"])
	}
	gotBig := h.do("GET", "/_matrix/client/v3/user/"+userID+"/filter/"+c.body["filter_id"].(string), token, nil)
	h.expect(gotBig, 200, "")
	if n := len(gotBig.body["room"].(map[string]any)["rooms"].([]any)); n != 400 {
		t.Fatalf("big filter read back with %d rooms", n)
	}
	// An initial sync with the filter, for a user in no rooms, needs no
	// room-server and answers at once.
	s := h.do("GET", "/_matrix/client/v3/sync?filter="+a.body["filter_id"].(string)+"&timeout=100000", token, nil)
	h.expect(s, 200, "")
	if s.body["next_batch"] == "" || s.body["rooms"] == nil {
		t.Fatalf("sync %s", s.raw)
	}
}

func TestRateLimitHTTP(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimit.Login = RateBucket{PerSecond: 0.001, Burst: 2}
	h := newHarness(t, cfg, nil)
	body := map[string]any{"type": "m.login.password", "user": "nobody", "password": "x"}
	h.expect(h.do("POST", "/_matrix/client/v3/login", "", body), 403, "M_FORBIDDEN")
	h.expect(h.do("POST", "/_matrix/client/v3/login", "", body), 403, "M_FORBIDDEN")
	r := h.do("POST", "/_matrix/client/v3/login", "", body)
	h.expect(r, 429, "M_LIMIT_EXCEEDED")
	if ms, _ := r.body["retry_after_ms"].(float64); ms <= 0 {
		t.Fatalf("retry_after_ms missing: %s", r.raw)
	}
	if r.header.Get("Retry-After") == "" {
		t.Fatal("Retry-After header missing")
	}
	// Other endpoints are not affected.
	h.expect(h.do("GET", "/_matrix/client/v3/login", "", nil), 200, "")
}
