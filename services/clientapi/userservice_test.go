package clientapi

import (
	"context"
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/rpc"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
)

// userService serves the harness's UserService on a gRPC server of its
// own and returns a client of it.
func (h *harness) userService() clientapiv1.UserServiceClient {
	h.t.Helper()
	srv := rpc.NewServer(h.svc.log)
	h.svc.RegisterGRPC(srv)
	lis := rpc.ListenInProcess()
	go srv.Serve(lis) //nolint:errcheck
	h.t.Cleanup(srv.Stop)
	conn, err := rpc.DialInProcess(lis, "media")
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = conn.Close() })
	return clientapiv1.NewUserServiceClient(conn)
}

// wantCode checks a gRPC error's code.
func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: %v, want %s", what, err, want)
	}
}

// The UserService's reads over real gRPC, each against what the client
// endpoints wrote: accounts (kinds, moderation, deactivation), devices,
// account data, push rules and pushers; users of other servers refused.
func TestUserServiceReads(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	users := h.userService()
	ctx := context.Background()
	alice, aliceID := h.register("alice", "pw")
	admin := h.sharedSecretUser("boss", "pw", true)
	adminID := "@boss:" + testServerName
	guest := h.do("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	h.expect(guest, 200, "")
	guestID := guest.body["user_id"].(string)
	remote := "@alice:elsewhere.test"

	// QueryAccount.
	for _, c := range []struct {
		user string
		want *clientapiv1.QueryAccountResponse
	}{
		{aliceID, &clientapiv1.QueryAccountResponse{Exists: true}},
		{adminID, &clientapiv1.QueryAccountResponse{Exists: true, Admin: true}},
		{guestID, &clientapiv1.QueryAccountResponse{Exists: true, Guest: true}},
		{"@nobody:" + testServerName, &clientapiv1.QueryAccountResponse{}},
	} {
		got, err := users.QueryAccount(ctx, &clientapiv1.QueryAccountRequest{UserId: c.user})
		if err != nil || got.GetExists() != c.want.GetExists() || got.GetAdmin() != c.want.GetAdmin() || got.GetGuest() != c.want.GetGuest() ||
			got.GetDeactivated() || got.GetLocked() || got.GetSuspended() {
			t.Errorf("QueryAccount(%s) = %v, %v; want %v", c.user, got, err, c.want)
		}
	}
	for _, kind := range []string{"lock", "suspend"} {
		h.expect(h.do("PUT", "/_matrix/client/v1/admin/"+kind+"/"+url.PathEscape(aliceID), admin, map[string]bool{kind + "ed": true}), 200, "")
	}
	if got, err := users.QueryAccount(ctx, &clientapiv1.QueryAccountRequest{UserId: aliceID}); err != nil || !got.GetLocked() || !got.GetSuspended() {
		t.Errorf("QueryAccount of a locked, suspended account: %v, %v", got, err)
	}
	for _, kind := range []string{"lock", "suspend"} {
		h.expect(h.do("PUT", "/_matrix/client/v1/admin/"+kind+"/"+url.PathEscape(aliceID), admin, map[string]bool{kind + "ed": false}), 200, "")
	}
	_, err := users.QueryAccount(ctx, &clientapiv1.QueryAccountRequest{UserId: remote})
	wantCode(t, "QueryAccount of a remote user", err, codes.InvalidArgument)
	_, err = users.QueryAccount(ctx, &clientapiv1.QueryAccountRequest{UserId: "not a user ID"})
	wantCode(t, "QueryAccount of garbage", err, codes.InvalidArgument)

	// ListDevices: the registration's device and a named second one.
	second := h.passwordLogin("alice", "pw", map[string]any{"device_id": "PHONE", "initial_device_display_name": "Alice's phone"})
	h.expect(second, 200, "")
	devices, err := users.ListDevices(ctx, &clientapiv1.ListDevicesRequest{UserId: aliceID})
	if err != nil || len(devices.GetDevices()) != 2 {
		t.Fatalf("ListDevices: %v, %v; want two devices", devices, err)
	}
	var phone *clientapiv1.Device
	for _, d := range devices.GetDevices() {
		if d.GetDeviceId() == "PHONE" {
			phone = d
		}
	}
	if phone == nil || phone.GetDisplayName() != "Alice's phone" || phone.GetLastSeenTs() == 0 || phone.LastSeenIp == nil {
		t.Errorf("ListDevices: the phone is %v", phone)
	}
	_, err = users.ListDevices(ctx, &clientapiv1.ListDevicesRequest{UserId: "@nobody:" + testServerName})
	wantCode(t, "ListDevices of no account", err, codes.NotFound)
	_, err = users.ListDevices(ctx, &clientapiv1.ListDevicesRequest{UserId: remote})
	wantCode(t, "ListDevices of a remote user", err, codes.InvalidArgument)

	// GetAccountData: global and per room, as written; none is NOT_FOUND.
	h.expect(h.do("PUT", "/_matrix/client/v3/user/"+url.PathEscape(aliceID)+"/account_data/org.example.colour", alice, map[string]any{"colour": "teal"}), 200, "")
	const room = "!room:" + testServerName
	h.expect(h.do("PUT", "/_matrix/client/v3/user/"+url.PathEscape(aliceID)+"/rooms/"+url.PathEscape(room)+"/account_data/org.example.colour", alice, map[string]any{"colour": "plum"}), 200, "")
	for roomID, want := range map[string]string{"": "teal", room: "plum"} {
		got, err := users.GetAccountData(ctx, &clientapiv1.GetAccountDataRequest{UserId: aliceID, RoomId: roomID, Type: "org.example.colour"})
		var c struct{ Colour string }
		if err != nil || json.Unmarshal(got.GetContent(), &c) != nil || c.Colour != want {
			t.Errorf("GetAccountData(room %q) = %v, %v; want colour %s", roomID, got, err, want)
		}
	}
	_, err = users.GetAccountData(ctx, &clientapiv1.GetAccountDataRequest{UserId: aliceID, Type: "org.example.none"})
	wantCode(t, "GetAccountData of nothing", err, codes.NotFound)
	_, err = users.GetAccountData(ctx, &clientapiv1.GetAccountDataRequest{UserId: aliceID})
	wantCode(t, "GetAccountData without a type", err, codes.InvalidArgument)
	_, err = users.GetAccountData(ctx, &clientapiv1.GetAccountDataRequest{UserId: remote, Type: "org.example.colour"})
	wantCode(t, "GetAccountData of a remote user", err, codes.InvalidArgument)

	// GetPushRules: the defaults, then with the user's own rule; the same
	// as m.push_rules account data.
	rules := func() map[string]map[string][]struct {
		RuleID  string `json:"rule_id"`
		Enabled bool   `json:"enabled"`
	} {
		t.Helper()
		got, err := users.GetPushRules(ctx, &clientapiv1.GetPushRulesRequest{UserId: aliceID})
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]map[string][]struct {
			RuleID  string `json:"rule_id"`
			Enabled bool   `json:"enabled"`
		}
		if err := json.Unmarshal(got.GetContent(), &out); err != nil {
			t.Fatalf("GetPushRules: %s: %v", got.GetContent(), err)
		}
		return out
	}
	if o := rules()["global"]["override"]; len(o) == 0 || o[0].RuleID != ".m.rule.master" {
		t.Errorf("default override rules: %v", o)
	}
	h.expect(h.do("PUT", "/_matrix/client/v3/pushrules/global/room/"+url.PathEscape(room), alice, map[string]any{"actions": []string{"notify"}}), 200, "")
	if r := rules()["global"]["room"]; len(r) != 1 || r[0].RuleID != room || !r[0].Enabled {
		t.Errorf("room rules after PUT: %v", r)
	}
	asData, err := users.GetAccountData(ctx, &clientapiv1.GetAccountDataRequest{UserId: aliceID, Type: "m.push_rules"})
	pushRules, err2 := users.GetPushRules(ctx, &clientapiv1.GetPushRulesRequest{UserId: aliceID})
	if err != nil || err2 != nil || string(asData.GetContent()) != string(pushRules.GetContent()) {
		t.Errorf("m.push_rules account data %s (%v) differs from GetPushRules %s (%v)", asData.GetContent(), err, pushRules.GetContent(), err2)
	}
	_, err = users.GetPushRules(ctx, &clientapiv1.GetPushRulesRequest{UserId: remote})
	wantCode(t, "GetPushRules of a remote user", err, codes.InvalidArgument)

	// ListPushers.
	if got, err := users.ListPushers(ctx, &clientapiv1.ListPushersRequest{UserId: aliceID}); err != nil || len(got.GetPushers()) != 0 {
		t.Errorf("ListPushers before any: %v, %v", got, err)
	}
	h.expect(h.do("POST", "/_matrix/client/v3/pushers/set", alice, map[string]any{
		"kind": "http", "app_id": "org.example.app", "pushkey": "key-1", "app_display_name": "App", "device_display_name": "Phone",
		"lang": "en", "data": map[string]any{"url": "https://push.example.test/_matrix/push/v1/notify", "format": "event_id_only"},
	}), 200, "")
	got, err := users.ListPushers(ctx, &clientapiv1.ListPushersRequest{UserId: aliceID})
	if err != nil || len(got.GetPushers()) != 1 {
		t.Fatalf("ListPushers: %v, %v", got, err)
	}
	p := got.GetPushers()[0]
	var data struct{ URL, Format string }
	if p.GetPushkey() != "key-1" || p.GetKind() != "http" || p.GetAppId() != "org.example.app" || p.GetAppDisplayName() != "App" ||
		p.GetDeviceDisplayName() != "Phone" || p.GetLang() != "en" || p.GetDeviceId() == "" ||
		json.Unmarshal(p.GetData(), &data) != nil || data.Format != "event_id_only" {
		t.Errorf("ListPushers: %v", p)
	}
	_, err = users.ListPushers(ctx, &clientapiv1.ListPushersRequest{UserId: remote})
	wantCode(t, "ListPushers of a remote user", err, codes.InvalidArgument)

	// A deactivated account exists, deactivated, without devices.
	h.expect(h.do("POST", "/_matrix/client/v3/account/deactivate", guest.body["access_token"].(string), map[string]any{}), 403, "M_GUEST_ACCESS_FORBIDDEN")
	sess := h.expectFlows(h.do("POST", "/_matrix/client/v3/account/deactivate", alice, map[string]any{}), authPassword)
	h.expect(h.do("POST", "/_matrix/client/v3/account/deactivate", alice, map[string]any{"auth": passwordAuth(sess, aliceID, "pw")}), 200, "")
	if got, err := users.QueryAccount(ctx, &clientapiv1.QueryAccountRequest{UserId: aliceID}); err != nil || !got.GetExists() || !got.GetDeactivated() {
		t.Errorf("QueryAccount of a deactivated account: %v, %v", got, err)
	}
	if got, err := users.ListDevices(ctx, &clientapiv1.ListDevicesRequest{UserId: aliceID}); err != nil || len(got.GetDevices()) != 0 {
		t.Errorf("ListDevices of a deactivated account: %v, %v", got, err)
	}
}

// POST /user/{userId}/openid/request_token through mautrix-go, and the
// token's validation over gRPC: valid until it expires, for nothing but
// its user, gone with a deactivated account.
func TestOpenIDTokens(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	offset := h.clock()
	users := h.userService()
	ctx := context.Background()
	token, userID := h.register("olivia", "pw")
	cli := h.mx(token)
	cli.UserID = id.UserID(userID)

	resp, err := cli.RequestOpenIDToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TokenType != "Bearer" || resp.MatrixServerName != testServerName || resp.ExpiresIn != 3600 || resp.AccessToken == "" {
		t.Fatalf("request_token: %+v", resp)
	}
	got, err := users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: resp.AccessToken})
	if err != nil || got.GetUserId() != userID {
		t.Fatalf("ValidateOpenIDToken: %v, %v; want %s", got, err, userID)
	}
	// Asking again works: the relying party may look it up more than once.
	if got, err := users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: resp.AccessToken}); err != nil || got.GetUserId() != userID {
		t.Errorf("ValidateOpenIDToken again: %v, %v", got, err)
	}
	// It is not an access token.
	h.expect(h.do("GET", "/_matrix/client/v3/account/whoami", resp.AccessToken, nil), 401, "M_UNKNOWN_TOKEN")
	_, err = users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: "myo_unknown"})
	wantCode(t, "ValidateOpenIDToken of an unknown token", err, codes.NotFound)
	_, err = users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{})
	wantCode(t, "ValidateOpenIDToken of an empty token", err, codes.InvalidArgument)
	// An access token is not an OpenID token either.
	_, err = users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: token})
	wantCode(t, "ValidateOpenIDToken of an access token", err, codes.NotFound)

	// Raw HTTP for what mautrix-go does not send: another user's ID, a
	// body that is not an object; the spec's empty object is fine.
	path := "/_matrix/client/v3/user/" + url.PathEscape(userID) + "/openid/request_token"
	h.expect(h.do("POST", "/_matrix/client/v3/user/"+url.PathEscape("@someone:"+testServerName)+"/openid/request_token", token, map[string]any{}), 403, "M_FORBIDDEN")
	h.expect(h.do("POST", path, token, "[]"), 400, "M_BAD_JSON")
	h.expect(h.do("POST", path, token, "{"), 400, "M_NOT_JSON")
	h.expect(h.do("POST", path, "", map[string]any{}), 401, "M_MISSING_TOKEN")
	second := h.do("POST", path, token, map[string]any{})
	h.expect(second, 200, "")
	guest := h.do("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	h.expect(h.do("POST", "/_matrix/client/v3/user/"+url.PathEscape(guest.body["user_id"].(string))+"/openid/request_token",
		guest.body["access_token"].(string), map[string]any{}), 403, "M_GUEST_ACCESS_FORBIDDEN")

	// Expiry: past the lifetime, the token is unknown.
	offset.Store(int64(time.Hour))
	_, err = users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: resp.AccessToken})
	wantCode(t, "ValidateOpenIDToken of an expired token", err, codes.NotFound)
	offset.Store(0)

	// Deactivation takes the user's tokens with it.
	if _, err := users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: second.body["access_token"].(string)}); err != nil {
		t.Fatalf("ValidateOpenIDToken of the second token: %v", err)
	}
	sess := h.expectFlows(h.do("POST", "/_matrix/client/v3/account/deactivate", token, map[string]any{}), authPassword)
	h.expect(h.do("POST", "/_matrix/client/v3/account/deactivate", token, map[string]any{"auth": passwordAuth(sess, userID, "pw")}), 200, "")
	_, err = users.ValidateOpenIDToken(ctx, &clientapiv1.ValidateOpenIDTokenRequest{Token: second.body["access_token"].(string)})
	wantCode(t, "ValidateOpenIDToken after deactivation", err, codes.NotFound)
}
