package fedreceiver_test

import (
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestRemoteInvitePermission: a local user's invite of another server's
// user is checked against the room's auth rules before that server is
// asked to sign it (/invite): a member below the power level "invite"
// gets 403 M_FORBIDDEN and the remote server is never asked; the room's
// admin invites, the remote signs, and the invite is in the room.
func TestRemoteInvitePermission(t *testing.T) {
	e := newEnv(t, nil)
	alice, carol := e.localUser("alice"), e.localUser("carol")
	roomID := id.RoomID(e.createRoom(alice, "11", "public_chat"))
	var pl map[string]any
	if err := alice.StateEvent(e.ctx, roomID, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	pl["invite"] = 50
	if _, err := alice.SendStateEvent(e.ctx, roomID, event.StatePowerLevels, "", pl); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinRoomByID(e.ctx, roomID); err != nil {
		t.Fatal(err)
	}
	dave := e.remote.User("dave")
	_, err := carol.InviteUser(e.ctx, roomID, &mautrix.ReqInviteUser{UserID: id.UserID(dave)})
	if !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("carol (power 0, invite needs 50) invites dave of remote.test: %v, want M_FORBIDDEN", err)
	}
	if n := e.remote.Called("invite"); n != 0 {
		t.Fatalf("remote.test was asked to sign a forbidden invite (%d /invite requests)", n)
	}
	if m := e.membership(roomID.String(), dave); m != "" {
		t.Fatalf("dave's membership after the refused invite: %q", m)
	}
	if _, err := alice.InviteUser(e.ctx, roomID, &mautrix.ReqInviteUser{UserID: id.UserID(dave)}); err != nil {
		t.Fatalf("alice invites dave of remote.test: %v", err)
	}
	if n := e.remote.Called("invite"); n != 1 {
		t.Fatalf("/invite requests to remote.test: %d, want 1", n)
	}
	if m := e.membership(roomID.String(), dave); m != "invite" {
		t.Fatalf("dave's membership after alice's invite: %q", m)
	}
}
