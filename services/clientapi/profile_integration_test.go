package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi"
)

// memberContent reads a user's current m.room.member content.
func memberContent(ctx context.Context, cli *mautrix.Client, room id.RoomID, user id.UserID) (*event.MemberEventContent, error) {
	var c event.MemberEventContent
	if err := cli.StateEvent(ctx, room, event.StateMember, string(user), &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// TestProfilesRoomsAndDeactivation drives profiles, the user directory,
// guest joins and deactivation through the whole stack: profile changes
// and deactivation leaves become room events through the room-server.
func TestProfilesRoomsAndDeactivation(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Registration.GuestAccess = true
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")

	// Profiles: per field and whole; only the owner may write.
	if err := bob.SetDisplayName(ctx, "Bob Builder"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetAvatarURL(ctx, id.ContentURI{Homeserver: "example.test", FileID: "bobpic"}); err != nil {
		t.Fatal(err)
	}
	prof, err := carol.GetProfile(ctx, bob.UserID)
	if err != nil || prof.DisplayName != "Bob Builder" || prof.AvatarURL.FileID != "bobpic" {
		t.Fatalf("profile: %+v %v", prof, err)
	}
	if _, err := carol.MakeRequest(ctx, "PUT", carol.BuildClientURL("v3", "profile", bob.UserID, "displayname"),
		map[string]string{"displayname": "Hacked"}, nil); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("changing another user's profile: %v", err)
	}
	if _, err := carol.GetProfile(ctx, "@nobody:"+serverName); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("unknown profile: %v", err)
	}

	// A private room of Alice's; her join as creator and Bob's join carry
	// their profiles.
	if err := alice.SetDisplayName(ctx, "Alice A"); err != nil {
		t.Fatal(err)
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		c, err := memberContent(ctx, alice, room.RoomID, alice.UserID)
		if err != nil || c.Displayname != "Alice A" {
			return fmt.Errorf("alice's member event: %+v %v", c, err)
		}
		return nil
	})
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		c, err := memberContent(ctx, alice, room.RoomID, bob.UserID)
		if err != nil || c.Membership != event.MembershipJoin || c.Displayname != "Bob Builder" {
			return fmt.Errorf("bob's member event: %+v %v", c, err)
		}
		return nil
	})
	// Propagation works on the client-API's copy of memberships, which
	// follows the room-server through JetStream: wait until it has Bob's join.
	testkit.Eventually(t, 30*time.Second, func() error {
		rooms, err := bob.JoinedRooms(ctx)
		if err != nil || len(rooms.JoinedRooms) != 1 {
			return fmt.Errorf("bob's joined rooms: %+v %v", rooms, err)
		}
		return nil
	})
	// A new display name reaches the room as a new member event.
	if err := bob.SetDisplayName(ctx, "Robert"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		c, err := memberContent(ctx, alice, room.RoomID, bob.UserID)
		if err != nil || c.Displayname != "Robert" || c.AvatarURL.ParseOrIgnore().FileID != "bobpic" {
			return fmt.Errorf("bob's member event after the change: %+v %v", c, err)
		}
		return nil
	})

	// DELETE clears a field (v1.16), and the room follows.
	if _, err := bob.MakeRequest(ctx, "DELETE", bob.BuildClientURL("v3", "profile", bob.UserID, "avatar_url"), nil, nil); err != nil {
		t.Fatalf("delete avatar_url: %v", err)
	}
	if prof, err := carol.GetProfile(ctx, bob.UserID); err != nil || !prof.AvatarURL.IsEmpty() || prof.DisplayName != "Robert" {
		t.Fatalf("profile after delete: %+v %v", prof, err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		c, err := memberContent(ctx, alice, room.RoomID, bob.UserID)
		if err != nil || c.AvatarURL != "" || c.Displayname != "Robert" {
			return fmt.Errorf("bob's member event after the delete: %+v %v", c, err)
		}
		return nil
	})

	// The directory: Alice shares a room with Bob and finds him; Carol
	// shares none and the room is private, so she does not.
	found, err := alice.SearchUserDirectory(ctx, "robert", 10)
	if err != nil || len(found.Results) != 1 || found.Results[0].UserID != bob.UserID {
		t.Fatalf("alice's search: %+v %v", found, err)
	}
	found, err = carol.SearchUserDirectory(ctx, "robert", 10)
	if err != nil || len(found.Results) != 0 {
		t.Fatalf("carol's search: %+v %v", found, err)
	}

	// Guests join only rooms that allow guests.
	gcli, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	g, _, err := gcli.RegisterGuest(ctx, &mautrix.ReqRegister[any]{})
	if err != nil {
		t.Fatal(err)
	}
	gcli.SetCredentials(g.UserID, g.AccessToken)
	public, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	var herr mautrix.HTTPError
	if _, err := gcli.JoinRoomByID(ctx, public.RoomID); !errors.As(err, &herr) || herr.RespError == nil || herr.RespError.ErrCode != "M_GUEST_ACCESS_FORBIDDEN" {
		t.Fatalf("guest join without guest access: %v", err)
	}
	if _, err := alice.SendStateEvent(ctx, public.RoomID, event.StateGuestAccess, "", &event.GuestAccessEventContent{GuestAccess: event.GuestAccessCanJoin}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		_, err := gcli.JoinRoomByID(ctx, public.RoomID)
		return err
	})

	// Guest access revoked: the guest is made to leave (the spec's MUST),
	// by their own leave event; the other members stay; no way back in.
	if _, err := alice.SendStateEvent(ctx, public.RoomID, event.StateGuestAccess, "", &event.GuestAccessEventContent{GuestAccess: event.GuestAccessForbidden}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		ev, err := alice.FullStateEvent(ctx, public.RoomID, event.StateMember, string(g.UserID))
		if err != nil {
			return err
		}
		if m := ev.Content.AsMember().Membership; m != event.MembershipLeave || ev.Sender != g.UserID {
			return fmt.Errorf("guest membership %s by %s", m, ev.Sender)
		}
		return nil
	})
	members, err := alice.JoinedMembers(ctx, public.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	_, aliceIn := members.Joined[alice.UserID]
	_, guestIn := members.Joined[g.UserID]
	if !aliceIn || guestIn {
		t.Fatalf("members after guest removal: %+v", members.Joined)
	}
	if _, err := gcli.JoinRoomByID(ctx, public.RoomID); !strings.Contains(fmt.Sprint(err), "M_GUEST_ACCESS_FORBIDDEN") {
		t.Fatalf("guest rejoin after revocation: %v", err)
	}

	// Deactivation (UIA with the password) leaves every room and erases
	// the profile.
	_, err = bob.MakeRequest(ctx, "POST", bob.BuildClientURL("v3", "account", "deactivate"), map[string]any{
		"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "pw-bob"},
	}, nil)
	if err != nil {
		t.Fatalf("deactivate: %v", err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		c, err := memberContent(ctx, alice, room.RoomID, bob.UserID)
		if err != nil || c.Membership != event.MembershipLeave {
			return fmt.Errorf("bob's membership after deactivation: %+v %v", c, err)
		}
		return nil
	})
	if _, err := alice.GetProfile(ctx, bob.UserID); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("profile after deactivation: %v", err)
	}
	if _, err := bob.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("token after deactivation: %v", err)
	}
}
