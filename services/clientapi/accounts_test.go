package clientapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

const testSecret = "test-shared-secret"

// accountsConfig enables what the account tests need.
func accountsConfig() Config {
	cfg := testConfig()
	cfg.Registration.SharedSecret = testSecret
	cfg.Registration.GuestAccess = true
	return cfg
}

// clientMAC is the shared-secret MAC as a client (register_new_matrix_user)
// computes it, written independently of the server's code.
func clientMAC(secret, nonce, user, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + role))
	return hex.EncodeToString(m.Sum(nil))
}

func (h *harness) nonce() string {
	h.t.Helper()
	r := h.do("GET", "/_synapse/admin/v1/register", "", nil)
	h.expect(r, 200, "")
	return r.body["nonce"].(string)
}

// sharedSecretUser registers through /_synapse/admin/v1/register and
// returns the access token.
func (h *harness) sharedSecretUser(user, password string, admin bool) string {
	h.t.Helper()
	n := h.nonce()
	r := h.do("POST", "/_synapse/admin/v1/register", "", map[string]any{
		"nonce": n, "username": user, "password": password, "admin": admin, "mac": clientMAC(testSecret, n, user, password, admin),
	})
	h.expect(r, 200, "")
	return r.body["access_token"].(string)
}

// mx is a mautrix client for the harness's server.
func (h *harness) mx(token string) *mautrix.Client {
	h.t.Helper()
	cli, err := mautrix.NewClient(h.srv.URL, "", token)
	if err != nil {
		h.t.Fatal(err)
	}
	return cli
}

func (h *harness) passwordLogin(user, password string, extra map[string]any) response {
	h.t.Helper()
	body := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": password}
	for k, v := range extra {
		body[k] = v
	}
	return h.do("POST", "/_matrix/client/v3/login", "", body)
}

// passwordAuth is an m.login.password auth dict.
func passwordAuth(session, user, password string) map[string]any {
	return map[string]any{"type": "m.login.password", "session": session, "password": password,
		"identifier": map[string]any{"type": "m.id.user", "user": user}}
}

// expectFlows checks a 401 UIA body offers exactly the one-stage flow.
func (h *harness) expectFlows(r response, stage string) string {
	h.t.Helper()
	if r.status != 401 || !strings.Contains(string(r.raw), `"flows":[{"stages":["`+stage+`"]}]`) {
		h.t.Fatalf("want 401 with flow %s, got %d %s", stage, r.status, r.raw)
	}
	s, _ := r.body["session"].(string)
	if s == "" {
		h.t.Fatalf("no session in %s", r.raw)
	}
	return s
}

func TestSharedSecretRegistration(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	const path = "/_synapse/admin/v1/register"

	n := h.nonce()
	// Wrong MAC: 403, and the nonce is spent.
	bad := map[string]any{"nonce": n, "username": "eve", "password": "pw", "admin": false, "mac": clientMAC("wrong", n, "eve", "pw", false)}
	h.expect(h.do("POST", path, "", bad), 403, "M_FORBIDDEN")
	// The right MAC with the spent nonce: refused.
	good := map[string]any{"nonce": n, "username": "eve", "password": "pw", "admin": false, "mac": clientMAC(testSecret, n, "eve", "pw", false)}
	h.expect(h.do("POST", path, "", good), 400, "M_UNKNOWN")
	// A MAC that claims admin=false while the body says admin=true: 403.
	n = h.nonce()
	h.expect(h.do("POST", path, "", map[string]any{"nonce": n, "username": "eve", "password": "pw", "admin": true,
		"mac": clientMAC(testSecret, n, "eve", "pw", false)}), 403, "M_FORBIDDEN")
	h.expect(h.do("POST", path, "", map[string]any{"nonce": "made-up", "username": "eve", "password": "pw", "mac": "00"}), 400, "M_UNKNOWN")
	if got := h.countRows("accounts"); got != 0 {
		t.Fatalf("refused requests created %d accounts", got)
	}

	// Success: a working token, a usable password, the admin flag.
	tok := h.sharedSecretUser("Root", "root-pw", true)
	who, err := h.mx(tok).Whoami(context.Background())
	if err != nil || who.UserID != "@root:"+testServerName {
		t.Fatalf("whoami: %v %v", who, err)
	}
	h.expect(h.passwordLogin("root", "root-pw", nil), 200, "")
	h.expect(h.do("GET", "/_synapse/admin/v1/registration_tokens", tok, nil), 200, "")
	userTok := h.sharedSecretUser("plain", "plain-pw", false)
	h.expect(h.do("GET", "/_synapse/admin/v1/registration_tokens", userTok, nil), 403, "M_FORBIDDEN")
	// A taken name.
	n = h.nonce()
	h.expect(h.do("POST", path, "", map[string]any{"nonce": n, "username": "root", "password": "x", "mac": clientMAC(testSecret, n, "root", "x", false)}), 400, "M_USER_IN_USE")

	// Without a configured secret the API is off.
	off := newHarness(t, testConfig(), nil)
	off.expect(off.do("GET", path, "", nil), 400, "M_UNKNOWN")
}

func TestRegistrationTokens(t *testing.T) {
	cfg := accountsConfig()
	cfg.Registration.Mode = RegistrationToken
	h := newHarness(t, cfg, nil)
	admin := h.sharedSecretUser("admin", "admin-pw", true)
	user := h.sharedSecretUser("someone", "someone-pw", false)
	const api = "/_synapse/admin/v1/registration_tokens"
	validity := func(token string) bool {
		r := h.do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token="+url.QueryEscape(token), "", nil)
		h.expect(r, 200, "")
		return r.body["valid"].(bool)
	}

	// Non-admins and anonymous callers cannot touch the admin API.
	h.expect(h.do("POST", api+"/new", user, map[string]any{"token": "abc"}), 403, "M_FORBIDDEN")
	h.expect(h.do("GET", api, user, nil), 403, "M_FORBIDDEN")
	h.expect(h.do("DELETE", api+"/abc", user, nil), 403, "M_FORBIDDEN")
	h.expect(h.do("GET", api, "", nil), 401, "M_MISSING_TOKEN")

	// Create: validation, generation, duplicates.
	h.expect(h.do("POST", api+"/new", admin, map[string]any{"token": "bad token!"}), 400, "M_INVALID_PARAM")
	h.expect(h.do("POST", api+"/new", admin, map[string]any{"uses_allowed": -1}), 400, "M_INVALID_PARAM")
	h.expect(h.do("POST", api+"/new", admin, map[string]any{"expiry_time": 1000}), 400, "M_INVALID_PARAM")
	gen := h.do("POST", api+"/new", admin, map[string]any{"length": 20})
	h.expect(gen, 200, "")
	if tok, _ := gen.body["token"].(string); len(tok) != 20 || !opaqueID.MatchString(tok) {
		t.Fatalf("generated token %q", tok)
	}
	created := h.do("POST", api+"/new", admin, map[string]any{"token": "abc", "uses_allowed": 1})
	h.expect(created, 200, "")
	if created.body["uses_allowed"] != float64(1) || created.body["pending"] != float64(0) || created.body["completed"] != float64(0) {
		t.Fatalf("created %s", created.raw)
	}
	h.expect(h.do("POST", api+"/new", admin, map[string]any{"token": "abc"}), 400, "M_INVALID_PARAM")
	if !validity("abc") || validity("nope") {
		t.Fatal("validity wrong")
	}

	// Registration now needs a token: dummy is not offered, a wrong token
	// is a 401 with M_FORBIDDEN and the flows.
	first := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "newbie", "password": "pw"})
	session := h.expectFlows(first, authRegToken)
	r := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "newbie", "password": "pw",
		"auth": map[string]any{"type": authDummy, "session": session}})
	h.expect(r, 401, "M_UNRECOGNIZED")
	r = h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "newbie", "password": "pw",
		"auth": map[string]any{"type": authRegToken, "token": "nope", "session": session}})
	h.expect(r, 401, "M_FORBIDDEN")
	h.expectFlows(r, authRegToken)

	// The right token: the account exists and the use is counted.
	r = h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "newbie", "password": "pw",
		"auth": map[string]any{"type": authRegToken, "token": "abc", "session": session}})
	h.expect(r, 200, "")
	got := h.do("GET", api+"/abc", admin, nil)
	if got.body["completed"] != float64(1) || got.body["pending"] != float64(0) {
		t.Fatalf("after use: %s", got.raw)
	}
	if validity("abc") {
		t.Fatal("a used-up token is still valid")
	}
	list := h.do("GET", api+"?valid=false", admin, nil)
	if !strings.Contains(string(list.raw), `"token":"abc"`) {
		t.Fatalf("valid=false list %s", list.raw)
	}
	second := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "second", "password": "pw",
		"auth": map[string]any{"type": authRegToken, "token": "abc"}})
	h.expect(second, 401, "M_FORBIDDEN")

	// Lift the limit; complete the stage through the fallback page, which
	// reserves a pending use, then finish with just the session.
	h.expect(h.do("PUT", api+"/abc", admin, map[string]any{"uses_allowed": nil}), 200, "")
	session = h.expectFlows(h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "second", "password": "pw"}), authRegToken)
	page := h.postForm("/_matrix/client/v3/auth/"+authRegToken+"/fallback/web", url.Values{"session": {session}, "token": {"abc"}})
	if !strings.Contains(page, "onAuthDone") {
		t.Fatalf("fallback page did not finish: %s", page)
	}
	if got := h.do("GET", api+"/abc", admin, nil); got.body["pending"] != float64(1) {
		t.Fatalf("pending after the stage: %s", got.raw)
	}
	h.expect(h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "second", "password": "pw",
		"auth": map[string]any{"session": session}}), 200, "")
	if got := h.do("GET", api+"/abc", admin, nil); got.body["pending"] != float64(0) || got.body["completed"] != float64(2) {
		t.Fatalf("after the second use: %s", got.raw)
	}

	// Delete.
	h.expect(h.do("DELETE", api+"/abc", admin, nil), 200, "")
	h.expect(h.do("GET", api+"/abc", admin, nil), 404, "M_NOT_FOUND")
	h.expect(h.do("DELETE", api+"/abc", admin, nil), 404, "M_NOT_FOUND")
}

// postForm posts an HTML form and returns the page.
func (h *harness) postForm(path string, form url.Values) string {
	h.t.Helper()
	resp, err := http.PostForm(h.srv.URL+path, form)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		h.t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b.String())
	}
	return b.String()
}

func TestRegistrationModesAndUsernames(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	dummy := map[string]any{"type": authDummy}
	for _, name := range []string{"12345", "_bridge"} {
		h.expect(h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": name, "auth": dummy}), 400, "M_INVALID_USERNAME")
	}
	// Guests are off by default.
	h.expect(h.do("POST", "/_matrix/client/v3/register?kind=guest", "", nil), 403, "M_FORBIDDEN")
	// inhibit_login: the account exists, no token.
	r := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "quiet", "password": "pw", "inhibit_login": true, "auth": dummy})
	h.expect(r, 200, "")
	if _, ok := r.body["access_token"]; ok {
		t.Fatalf("inhibit_login returned a token: %s", r.raw)
	}
	if n := h.countRows("devices"); n != 0 {
		t.Fatalf("inhibit_login created %d devices", n)
	}
}

func TestGuestAccess(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	ctx := context.Background()
	cli := h.mx("")
	// Everything but the device display name is ignored for guests.
	resp, _, err := cli.RegisterGuest(ctx, &mautrix.ReqRegister[any]{Username: "chosen", DeviceID: "MYDEVICE", InitialDeviceDisplayName: "Kiosk"})
	if err != nil {
		t.Fatalf("guest registration: %v", err)
	}
	if strings.Trim(resp.UserID.Localpart(), "0123456789") != "" {
		t.Fatalf("guest user ID %s is not numeric", resp.UserID)
	}
	guest := h.mx(resp.AccessToken)
	guest.UserID = resp.UserID
	who := h.do("GET", "/_matrix/client/v3/account/whoami", resp.AccessToken, nil)
	if who.status != 200 || who.body["is_guest"] != true {
		t.Fatalf("whoami: %s", who.raw)
	}
	devs, err := guest.GetDevicesInfo(ctx)
	if err != nil || len(devs.Devices) != 1 || devs.Devices[0].DeviceID == "MYDEVICE" || devs.Devices[0].DisplayName != "Kiosk" {
		t.Fatalf("guest devices: %+v %v", devs, err)
	}
	if err := guest.SetDisplayName(ctx, "Visitor"); err != nil {
		t.Fatalf("guests may set a display name: %v", err)
	}
	tok := resp.AccessToken
	for _, c := range []struct{ method, path string }{
		{"POST", "/_matrix/client/v3/createRoom"},
		{"POST", "/_matrix/client/v3/join/!room:example.test"},
		{"GET", "/_matrix/client/v3/joined_rooms"},
		{"POST", "/_matrix/client/v3/account/password"},
		{"POST", "/_matrix/client/v3/account/deactivate"},
		{"POST", "/_matrix/client/v1/login/get_token"},
		{"POST", "/_matrix/client/v3/delete_devices"},
		{"POST", "/_matrix/client/v3/user_directory/search"},
	} {
		h.expect(h.do(c.method, c.path, tok, map[string]any{}), 403, "M_GUEST_ACCESS_FORBIDDEN")
	}
	h.expect(h.do("PUT", "/_matrix/client/v3/profile/"+string(resp.UserID)+"/avatar_url", tok, map[string]any{"avatar_url": "mxc://a/b"}), 403, "M_GUEST_ACCESS_FORBIDDEN")
	caps := h.do("GET", "/_matrix/client/v3/capabilities", tok, nil)
	h.expect(caps, 200, "")
	if !strings.Contains(string(caps.raw), `"m.change_password":{"enabled":false}`) {
		t.Fatalf("guest capabilities %s", caps.raw)
	}
}

// clock is a controllable offset on the service's clock.
func (h *harness) clock() *atomic.Int64 {
	var offset atomic.Int64
	h.svc.now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	return &offset
}

func TestRefreshTokens(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	offset := h.clock()
	first := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "ref", "password": "pw", "refresh_token": true,
		"auth": map[string]any{"type": authDummy}})
	h.expect(first, 200, "")
	access, refresh := first.body["access_token"].(string), first.body["refresh_token"].(string)
	if first.body["expires_in_ms"] != float64(5*time.Minute/time.Millisecond) || refresh == "" {
		t.Fatalf("register with refresh_token: %s", first.raw)
	}
	// A client that did not ask for refresh gets a token that never expires.
	plain := h.passwordLogin("ref", "pw", nil)
	h.expect(plain, 200, "")
	if _, ok := plain.body["refresh_token"]; ok {
		t.Fatalf("unrequested refresh token: %s", plain.raw)
	}
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", access, nil), 200, "")

	offset.Store(int64(6 * time.Minute))
	expired := h.do("GET", "/_matrix/client/v3/account/whoami", access, nil)
	h.expect(expired, 401, "M_UNKNOWN_TOKEN")
	if expired.body["soft_logout"] != true {
		t.Fatalf("expired token without soft_logout: %s", expired.raw)
	}
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", plain.body["access_token"].(string), nil), 200, "")

	doRefresh := func(token string) response {
		t.Helper()
		r := h.do("POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": token})
		h.expect(r, 200, "")
		if r.body["access_token"] == nil || r.body["refresh_token"] == nil {
			t.Fatalf("refresh answer: %s", r.raw)
		}
		return r
	}
	whoami := func(r response) response {
		return h.do("GET", "/_matrix/client/v3/account/whoami", r.body["access_token"].(string), nil)
	}
	refused := func(token string) {
		t.Helper()
		h.expect(h.do("POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": token}), 401, "M_UNKNOWN_TOKEN")
	}

	// The answer to a refresh is lost: the old refresh token still works,
	// and the pair it bought the first time is replaced.
	lost := doRefresh(refresh)
	next := doRefresh(refresh)
	if next.body["refresh_token"] == lost.body["refresh_token"] || next.body["access_token"] == lost.body["access_token"] {
		t.Fatalf("a repeated refresh gave the same tokens: %s", next.raw)
	}
	h.expect(whoami(lost), 401, "M_UNKNOWN_TOKEN")
	refused(lost.body["refresh_token"].(string))
	// The old access token stopped working at the first refresh.
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", access, nil), 401, "M_UNKNOWN_TOKEN")

	// Using the new access token spends the old refresh token.
	who := whoami(next)
	h.expect(who, 200, "")
	if who.body["device_id"] != first.body["device_id"] {
		t.Fatalf("refresh moved the device: %s vs %s", who.raw, first.raw)
	}
	// (refresh is now spent: presenting it would revoke the session, which
	// the end of this test does with another spent token.)
	h.expect(h.do("POST", "/_matrix/client/v3/refresh", "", map[string]any{}), 400, "M_MISSING_PARAM")

	// So does using the new refresh token for a refresh of its own.
	tok := func(r response) string { return r.body["refresh_token"].(string) }
	third := doRefresh(tok(next))
	fourth := doRefresh(tok(next)) // third's answer lost
	refused(tok(third))
	fifth := doRefresh(tok(fourth)) // spends next's token
	// fourth's refresh token stays valid until fifth's tokens are used.
	sixth := doRefresh(tok(fourth))  // fifth's answer lost
	refused(tok(fifth))              // never used: just unknown
	h.expect(whoami(sixth), 200, "") // spends fourth's token
	seventh := doRefresh(tok(sixth))
	h.expect(whoami(seventh), 200, "")

	// Spent refresh tokens that come back are refused (and logged); the
	// session stays: two clients of it racing look the same.
	refused(tok(fourth))
	refused(tok(next))
	h.expect(whoami(seventh), 200, "")
	h.expect(whoami(doRefresh(tok(seventh))), 200, "")

	// Login can ask for one too.
	l := h.passwordLogin("ref", "pw", map[string]any{"refresh_token": true})
	h.expect(l, 200, "")
	if l.body["refresh_token"] == nil || l.body["expires_in_ms"] == nil {
		t.Fatalf("login with refresh_token: %s", l.raw)
	}
}

func TestLoginTokenAndUIA(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	offset := h.clock()
	tok, userID := h.register("tina", "tina-pw")
	_, otherID := h.register("omar", "omar-pw")
	const path = "/_matrix/client/v1/login/get_token"

	flows := h.do("GET", "/_matrix/client/v3/login", "", nil)
	if !strings.Contains(string(flows.raw), `{"get_login_token":true,"type":"m.login.token"}`) {
		t.Fatalf("login flows %s", flows.raw)
	}
	session := h.expectFlows(h.do("POST", path, tok, map[string]any{}), authPassword)
	// Wrong password: 401, M_FORBIDDEN, and the flows again.
	wrong := h.do("POST", path, tok, map[string]any{"auth": passwordAuth(session, userID, "nope")})
	h.expect(wrong, 401, "M_FORBIDDEN")
	h.expectFlows(wrong, authPassword)
	// Another user's correct password does not authenticate this user:
	// 403, not a new challenge.
	h.expect(h.do("POST", path, tok, map[string]any{"auth": passwordAuth(session, otherID, "omar-pw")}), 403, "M_FORBIDDEN")
	// Dummy is not offered here.
	h.expect(h.do("POST", path, tok, map[string]any{"auth": map[string]any{"type": authDummy, "session": session}}), 401, "M_UNRECOGNIZED")
	ok := h.do("POST", path, tok, map[string]any{"auth": passwordAuth(session, "tina", "tina-pw")})
	h.expect(ok, 200, "")
	loginToken := ok.body["login_token"].(string)

	login := h.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.token", "token": loginToken})
	h.expect(login, 200, "")
	if login.body["user_id"] != userID {
		t.Fatalf("token login as %v", login.body["user_id"])
	}
	// Single use.
	h.expect(h.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.token", "token": loginToken}), 403, "M_FORBIDDEN")
	// A completed session cannot be replayed.
	h.expect(h.do("POST", path, tok, map[string]any{"auth": map[string]any{"session": session}}), 400, "M_UNKNOWN")

	// Expiry.
	second := h.do("POST", path, tok, map[string]any{"auth": passwordAuth("", "tina", "tina-pw")})
	h.expect(second, 200, "")
	offset.Store(int64(3 * time.Minute))
	h.expect(h.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.token", "token": second.body["login_token"]}), 403, "M_FORBIDDEN")

	// A session opened by one user cannot be used by another, nor for
	// another request.
	otherTok := h.passwordLogin("omar", "omar-pw", nil).body["access_token"].(string)
	session = h.expectFlows(h.do("POST", path, tok, map[string]any{}), authPassword)
	h.expect(h.do("POST", path, otherTok, map[string]any{"auth": passwordAuth(session, "omar", "omar-pw")}), 403, "M_FORBIDDEN")
	h.expect(h.do("POST", "/_matrix/client/v3/delete_devices", tok, map[string]any{"devices": []string{}, "auth": passwordAuth(session, "tina", "tina-pw")}), 403, "M_FORBIDDEN")
}

func TestDevices(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	ctx := context.Background()
	tokA, userA := h.register("anna", "anna-pw")
	tokB, _ := h.register("bert", "bert-pw")
	second := h.passwordLogin("anna", "anna-pw", map[string]any{"device_id": "PHONE", "initial_device_display_name": "Phone"})
	h.expect(second, 200, "")
	third := h.passwordLogin("anna", "anna-pw", map[string]any{"device_id": "TABLET"})
	h.expect(third, 200, "")
	anna, bert := h.mx(tokA), h.mx(tokB)
	anna.UserID = id.UserID(userA)

	list, err := anna.GetDevicesInfo(ctx)
	if err != nil || len(list.Devices) != 3 {
		t.Fatalf("devices: %+v %v", list, err)
	}
	phone, err := anna.GetDeviceInfo(ctx, "PHONE")
	if err != nil || phone.DisplayName != "Phone" || phone.LastSeenTS == 0 {
		t.Fatalf("device: %+v %v", phone, err)
	}
	if err := anna.SetDeviceInfo(ctx, "PHONE", &mautrix.ReqDeviceInfo{DisplayName: "Old phone"}); err != nil {
		t.Fatal(err)
	}
	if phone, _ := anna.GetDeviceInfo(ctx, "PHONE"); phone.DisplayName != "Old phone" {
		t.Fatalf("rename: %+v", phone)
	}

	// Bert cannot see, rename or delete Anna's devices: they do not exist for him.
	if _, err := bert.GetDeviceInfo(ctx, "PHONE"); !errorsIs(err, mautrix.MNotFound) {
		t.Fatalf("other user's device: %v", err)
	}
	h.expect(h.do("PUT", "/_matrix/client/v3/devices/PHONE", tokB, map[string]any{"display_name": "mine"}), 404, "M_NOT_FOUND")
	h.expect(h.do("DELETE", "/_matrix/client/v3/devices/PHONE", tokB, map[string]any{}), 404, "M_NOT_FOUND")

	// DELETE needs UIA; a wrong password is 401 M_FORBIDDEN.
	session := h.expectFlows(h.do("DELETE", "/_matrix/client/v3/devices/PHONE", tokA, nil), authPassword)
	h.expect(h.do("DELETE", "/_matrix/client/v3/devices/PHONE", tokA, map[string]any{"auth": passwordAuth(session, "anna", "wrong")}), 401, "M_FORBIDDEN")
	// Another user's valid password is 403, not a new challenge (issue #19).
	h.expect(h.do("DELETE", "/_matrix/client/v3/devices/PHONE", tokA, map[string]any{"auth": passwordAuth(session, "bert", "bert-pw")}), 403, "M_FORBIDDEN")
	h.expect(h.do("DELETE", "/_matrix/client/v3/devices/PHONE", tokA, map[string]any{"auth": passwordAuth(session, "anna", "anna-pw")}), 200, "")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", second.body["access_token"].(string), nil), 401, "M_UNKNOWN_TOKEN")

	// delete_devices: Bert's device ID in Anna's list is ignored.
	bertDevice := h.do("GET", "/_matrix/client/v3/account/whoami", tokB, nil).body["device_id"].(string)
	session = h.expectFlows(h.do("POST", "/_matrix/client/v3/delete_devices", tokA, map[string]any{"devices": []string{"TABLET", bertDevice}}), authPassword)
	h.expect(h.do("POST", "/_matrix/client/v3/delete_devices", tokA, map[string]any{"devices": []string{"TABLET", bertDevice},
		"auth": passwordAuth(session, userA, "anna-pw")}), 200, "")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", third.body["access_token"].(string), nil), 401, "M_UNKNOWN_TOKEN")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", tokB, nil), 200, "")
	if list, _ := anna.GetDevicesInfo(ctx); len(list.Devices) != 1 {
		t.Fatalf("after deletes: %+v", list)
	}
}

func errorsIs(err, target error) bool {
	return err != nil && strings.Contains(err.Error(), target.(mautrix.RespError).ErrCode)
}

func TestChangePasswordAndDeactivate(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	tok, userID := h.register("pat", "old-pw")
	other := h.passwordLogin("pat", "old-pw", nil).body["access_token"].(string)
	const path = "/_matrix/client/v3/account/password"

	session := h.expectFlows(h.do("POST", path, tok, map[string]any{"new_password": "new-pw"}), authPassword)
	h.expect(h.do("POST", path, tok, map[string]any{"new_password": "new-pw", "auth": passwordAuth(session, userID, "new-pw")}), 401, "M_FORBIDDEN")
	h.expect(h.do("POST", path, tok, map[string]any{"new_password": "new-pw", "auth": passwordAuth(session, userID, "old-pw")}), 200, "")
	// Other devices are logged out (logout_devices defaults to true); this one is not.
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", other, nil), 401, "M_UNKNOWN_TOKEN")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", tok, nil), 200, "")
	h.expect(h.passwordLogin("pat", "old-pw", nil), 403, "M_FORBIDDEN")
	kept := h.passwordLogin("pat", "new-pw", nil).body["access_token"].(string)
	h.expect(h.do("POST", path, tok, map[string]any{"new_password": "newer-pw", "logout_devices": false, "auth": passwordAuth("", "pat", "new-pw")}), 200, "")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", kept, nil), 200, "")

	// UIA through the fallback page, then the request with just the session.
	session = h.expectFlows(h.do("POST", "/_matrix/client/v3/account/deactivate", tok, map[string]any{}), authPassword)
	get := h.do("GET", "/_matrix/client/v3/auth/m.login.password/fallback/web?session="+session, "", nil)
	if get.status != 200 || !strings.Contains(string(get.raw), `name="password"`) {
		t.Fatalf("fallback page: %d %s", get.status, get.raw)
	}
	page := h.postForm("/_matrix/client/v3/auth/m.login.password/fallback/web", url.Values{"session": {session}, "password": {"wrong"}})
	if strings.Contains(page, "onAuthDone") || !strings.Contains(page, "Invalid password") {
		t.Fatalf("wrong password on the fallback page: %s", page)
	}
	page = h.postForm("/_matrix/client/v3/auth/m.login.password/fallback/web", url.Values{"session": {session}, "password": {"newer-pw"}})
	if !strings.Contains(page, "window.onAuthDone()") {
		t.Fatalf("fallback page did not finish: %s", page)
	}
	d := h.do("POST", "/_matrix/client/v3/account/deactivate", tok, map[string]any{"auth": map[string]any{"session": session}})
	h.expect(d, 200, "")
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", tok, nil), 401, "M_UNKNOWN_TOKEN")
	h.expect(h.passwordLogin("pat", "newer-pw", nil), 403, "M_FORBIDDEN")
	h.expect(h.do("GET", "/_matrix/client/v3/register/available?username=pat", "", nil), 400, "M_USER_IN_USE")
	h.expect(h.do("GET", "/_matrix/client/v3/profile/"+userID, "", nil), 404, "M_NOT_FOUND")
}

func TestLoginFallbackPage(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	r := h.do("GET", "/_matrix/static/client/login/", "", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(r.raw), "window.matrixLogin.onLogin") || !strings.Contains(string(r.raw), "/_matrix/client/v3/login") {
		t.Fatalf("login fallback: %d %s", r.status, r.raw)
	}
	// Unknown stage and unknown session.
	if r := h.do("GET", "/_matrix/client/v3/auth/m.login.recaptcha/fallback/web?session=x", "", nil); r.status != 404 {
		t.Fatalf("unknown stage: %d", r.status)
	}
	if r := h.do("GET", "/_matrix/client/v3/auth/m.login.password/fallback/web?session=x", "", nil); r.status != 400 {
		t.Fatalf("unknown session: %d", r.status)
	}
}

func TestRateLimitsSpareAdmins(t *testing.T) {
	cfg := accountsConfig()
	cfg.RateLimit.Login = RateBucket{PerSecond: 0.001, Burst: 3}
	h := newHarness(t, cfg, nil)
	admin := h.sharedSecretUser("boss", "pw", true)
	user := h.sharedSecretUser("worker", "pw", false)
	// get_token is limited per user under the login class.
	for i := 0; i < 6; i++ {
		h.expect(h.do("POST", "/_matrix/client/v1/login/get_token", admin, map[string]any{}), 401, "")
	}
	limited := false
	for i := 0; i < 6 && !limited; i++ {
		limited = h.do("POST", "/_matrix/client/v1/login/get_token", user, map[string]any{}).errcode() == "M_LIMIT_EXCEEDED"
	}
	if !limited {
		t.Fatal("a normal user was never rate limited")
	}
}

// TestGuestUpgrade: a guest becomes a full account through POST /register
// with guest_access_token and their own localpart, after the usual
// user-interactive auth; the user ID stays, the password works, and the
// wrong token or username is refused.
func TestGuestUpgrade(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	ctx := context.Background()
	g, _, err := h.mx("").RegisterGuest(ctx, &mautrix.ReqRegister[any]{})
	if err != nil {
		t.Fatal(err)
	}
	lp := g.UserID.Localpart()
	userToken, _ := h.register("plain", "plain password")
	upgrade := func(body map[string]any) response {
		return h.do("POST", "/_matrix/client/v3/register", "", body)
	}
	h.expect(upgrade(map[string]any{"guest_access_token": "nope", "username": lp, "password": "pw"}), 403, "M_FORBIDDEN")
	h.expect(upgrade(map[string]any{"guest_access_token": userToken, "username": "plain", "password": "pw"}), 403, "M_FORBIDDEN")
	h.expect(upgrade(map[string]any{"guest_access_token": g.AccessToken, "password": "pw"}), 400, "M_MISSING_PARAM")
	h.expect(upgrade(map[string]any{"guest_access_token": g.AccessToken, "username": "someoneelse", "password": "pw"}), 403, "M_FORBIDDEN")

	first := upgrade(map[string]any{"guest_access_token": g.AccessToken, "username": lp, "password": "upgraded password"})
	h.expect(first, 401, "")
	session, _ := first.body["session"].(string)
	done := upgrade(map[string]any{
		"guest_access_token": g.AccessToken, "username": lp, "password": "upgraded password",
		"auth": map[string]any{"type": "m.login.dummy", "session": session},
	})
	h.expect(done, 200, "")
	if done.body["user_id"] != g.UserID.String() {
		t.Fatalf("upgraded user ID %v, want %s", done.body["user_id"], g.UserID)
	}
	who := h.do("GET", "/_matrix/client/v3/account/whoami", done.body["access_token"].(string), nil)
	if who.status != 200 || who.body["is_guest"] == true {
		t.Fatalf("whoami after upgrade: %s", who.raw)
	}
	// The old guest token is now a full account's token too.
	h.expect(h.do("GET", "/_matrix/client/v3/joined_rooms", g.AccessToken, nil), 200, "")
	login := h.do("POST", "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": lp}, "password": "upgraded password",
	})
	h.expect(login, 200, "")
	// Upgrading twice: no longer a guest.
	h.expect(upgrade(map[string]any{"guest_access_token": g.AccessToken, "username": lp, "password": "pw"}), 403, "M_FORBIDDEN")
}
