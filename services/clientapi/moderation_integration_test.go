package clientapi_test

import (
	"context"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/services/clientapi"
)

// TestLockAndSuspend: only admins moderate, never other admins or
// themselves; a locked user gets M_USER_LOCKED with soft_logout on all but
// logout and keeps the session for when the lock lifts; a suspended user
// may read, leave and redact but not send, join or change the profile.
func TestLockAndSuspend(t *testing.T) {
	const secret = "moderation-secret"
	cfg := clientapi.DefaultConfig()
	cfg.Registration.SharedSecret = secret
	cfg.Support = clientapi.SupportConfig{Contacts: []clientapi.SupportContact{{Role: "m.role.admin", Email: "admin@example.test"}}, SupportPage: "https://example.test/help"}
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	admin := adminClient(t, hs, secret, "root")
	other := adminClient(t, hs, secret, "root2")
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	room, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	own := sendText(t, alice, room.RoomID, "before the suspension")
	other2, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}

	put := func(cli *mautrix.Client, kind, user string, on bool) error {
		field := map[string]string{"lock": "locked", "suspend": "suspended"}[kind]
		_, err := cli.MakeRequest(ctx, http.MethodPut, cli.BuildClientURL("v1", "admin", kind, user), map[string]bool{field: on}, nil)
		return err
	}
	get := func(kind, user string) map[string]bool {
		var out map[string]bool
		if _, err := admin.MakeRequest(ctx, http.MethodGet, admin.BuildClientURL("v1", "admin", kind, user), nil, &out); err != nil {
			t.Fatalf("get %s of %s: %v", kind, user, err)
		}
		return out
	}
	wantMatrixError(t, "a user locks another", put(bob, "lock", alice.UserID.String(), true), http.StatusForbidden, "M_FORBIDDEN")
	wantMatrixError(t, "an admin locks another admin", put(admin, "lock", other.UserID.String(), true), http.StatusForbidden, "M_FORBIDDEN")
	wantMatrixError(t, "an admin locks themself", put(admin, "lock", admin.UserID.String(), true), http.StatusForbidden, "M_FORBIDDEN")
	wantMatrixError(t, "a remote user", put(admin, "lock", "@x:elsewhere.test", true), http.StatusBadRequest, "M_INVALID_PARAM")
	wantMatrixError(t, "an unknown user", put(admin, "lock", "@nobody:"+serverName, true), http.StatusNotFound, "M_NOT_FOUND")
	var caps map[string]map[string]any
	if _, err := admin.MakeRequest(ctx, http.MethodGet, admin.BuildClientURL("v3", "capabilities"), nil, &caps); err != nil || caps["capabilities"]["m.account_moderation"] == nil {
		t.Errorf("admin capabilities: %v, %v", caps, err)
	}

	// Suspension.
	if err := put(admin, "suspend", alice.UserID.String(), true); err != nil {
		t.Fatal(err)
	}
	if got := get("suspend", alice.UserID.String()); !got["suspended"] {
		t.Fatalf("suspend state: %v", got)
	}
	_, err = alice.SendText(ctx, room.RoomID, "while suspended")
	wantMatrixError(t, "suspended send", err, http.StatusForbidden, "M_USER_SUSPENDED")
	_, err = alice.JoinRoomByID(ctx, other2.RoomID)
	wantMatrixError(t, "suspended join", err, http.StatusForbidden, "M_USER_SUSPENDED")
	wantMatrixError(t, "suspended profile change", alice.SetDisplayName(ctx, "Sneaky"), http.StatusForbidden, "M_USER_SUSPENDED")
	if _, err := alice.Messages(ctx, room.RoomID, "", "", mautrix.DirectionBackward, nil, 10); err != nil {
		t.Errorf("suspended read: %v", err)
	}
	if _, err := alice.RedactEvent(ctx, room.RoomID, own); err != nil {
		t.Errorf("suspended redaction of an own event: %v", err)
	}
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventRedaction, map[string]any{"redacts": own}); err != nil {
		t.Errorf("suspended m.room.redaction through /send: %v", err)
	}
	// Bob makes Alice a moderator; suspended, she still may not redact his events.
	bobsMsg := sendText(t, bob, room.RoomID, "bob's message")
	if _, err := bob.SendStateEvent(ctx, room.RoomID, event.StatePowerLevels, "", map[string]any{
		"users": map[string]int{bob.UserID.String(): 100, alice.UserID.String(): 50}, "redact": 50}); err != nil {
		t.Fatal(err)
	}
	_, err = alice.RedactEvent(ctx, room.RoomID, bobsMsg)
	wantMatrixError(t, "suspended redaction of another's event", err, http.StatusForbidden, "M_USER_SUSPENDED")
	_, err = alice.SendMessageEvent(ctx, room.RoomID, event.EventRedaction, map[string]any{"redacts": bobsMsg})
	wantMatrixError(t, "suspended redaction of another's event through /send", err, http.StatusForbidden, "M_USER_SUSPENDED")
	_, err = alice.KickUser(ctx, room.RoomID, &mautrix.ReqKickUser{UserID: bob.UserID})
	wantMatrixError(t, "suspended kick", err, http.StatusForbidden, "M_USER_SUSPENDED")
	_, err = alice.SendStateEvent(ctx, room.RoomID, event.EventRedaction, "x", map[string]any{"redacts": bobsMsg})
	wantMatrixError(t, "suspended redaction as a state event", err, http.StatusForbidden, "M_USER_SUSPENDED")
	if err := put(admin, "suspend", alice.UserID.String(), false); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, room.RoomID, "after the suspension")

	// Lock: everything but logout refused, the session kept.
	if err := put(admin, "lock", alice.UserID.String(), true); err != nil {
		t.Fatal(err)
	}
	_, err = alice.Whoami(ctx)
	wantMatrixError(t, "locked whoami", err, http.StatusUnauthorized, "M_USER_LOCKED")
	var he mautrix.HTTPError
	if asHTTPError(err, &he) && he.RespError.ExtraData["soft_logout"] != true {
		t.Errorf("locked error without soft_logout: %+v", he.RespError)
	}
	_, err = alice.SyncRequest(ctx, 0, "", "", false, "")
	wantMatrixError(t, "locked sync", err, http.StatusUnauthorized, "M_USER_LOCKED")
	relogin, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = relogin.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "pw-alice"})
	wantMatrixError(t, "locked login", err, http.StatusUnauthorized, "M_USER_LOCKED")
	if got := get("lock", other.UserID.String()); got["locked"] {
		t.Errorf("another admin's lock state: %v", got)
	}
	if err := put(admin, "lock", alice.UserID.String(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("whoami after the lock lifted, same token: %v", err)
	}
	if err := put(admin, "lock", alice.UserID.String(), true); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Logout(ctx); err != nil {
		t.Errorf("locked logout: %v", err)
	}

	// whois: admins and the user themself.
	var who struct {
		UserID  string         `json:"user_id"`
		Devices map[string]any `json:"devices"`
	}
	if _, err := admin.MakeRequest(ctx, http.MethodGet, admin.BuildClientURL("v3", "admin", "whois", bob.UserID), nil, &who); err != nil || who.UserID != bob.UserID.String() || len(who.Devices) != 1 {
		t.Errorf("whois by an admin: %+v, %v", who, err)
	}
	_, err = bob.MakeRequest(ctx, http.MethodGet, bob.BuildClientURL("v3", "admin", "whois", admin.UserID), nil, &who)
	wantMatrixError(t, "whois of another by a user", err, http.StatusForbidden, "M_FORBIDDEN")

	// Support contacts.
	var support struct {
		Contacts []map[string]string `json:"contacts"`
		Page     string              `json:"support_page"`
	}
	if _, err := bob.MakeRequest(ctx, http.MethodGet, hs+"/.well-known/matrix/support", nil, &support); err != nil ||
		len(support.Contacts) != 1 || support.Contacts[0]["email_address"] != "admin@example.test" || support.Page != "https://example.test/help" {
		t.Errorf("support: %+v, %v", support, err)
	}
}
