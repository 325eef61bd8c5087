package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// roomsAndDirectory drives the room-server RPCs added for membership and
// the directory (restricted joins, directory visibility, alias listing)
// across the deployment shape under test.
func roomsAndDirectory(t *testing.T, alice, bob *mautrix.Client) {
	ctx := context.Background()
	space, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "E2E directory", RoomAliasName: "e2e-dir"})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	restricted, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat", RoomVersion: "11",
		InitialState: []*event.Event{{
			Type: event.StateJoinRules, StateKey: new(string),
			Content: event.Content{Raw: map[string]any{"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space.RoomID.String()}}}},
		}},
	})
	if err != nil {
		t.Fatalf("createRoom restricted: %v", err)
	}
	if _, err := bob.JoinRoomByID(ctx, restricted.RoomID); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("restricted join before joining the allowed room: %v", err)
	}
	if _, err := bob.JoinRoom(ctx, "#e2e-dir:localhost", nil); err != nil {
		t.Fatalf("join by alias: %v", err)
	}
	if _, err := bob.JoinRoomByID(ctx, restricted.RoomID); err != nil {
		t.Fatalf("restricted join: %v", err)
	}
	if _, err := bob.KickUser(ctx, space.RoomID, &mautrix.ReqKickUser{UserID: alice.UserID}); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("kick without power: %v", err)
	}
	aliases, err := bob.GetAliases(ctx, space.RoomID)
	if err != nil || len(aliases.Aliases) != 1 || aliases.Aliases[0] != id.RoomAlias("#e2e-dir:localhost") {
		t.Fatalf("aliases %v %v", aliases, err)
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		resp, err := bob.PublicRooms(ctx, &mautrix.ReqPublicRooms{})
		if err != nil {
			return err
		}
		for _, r := range resp.Chunk {
			if r.RoomID == space.RoomID && r.NumJoinedMembers == 2 && r.Name == "E2E directory" {
				return nil
			}
		}
		return fmt.Errorf("directory entry not there yet: %+v", resp.Chunk)
	})
	joined, err := alice.JoinedMembers(ctx, restricted.RoomID)
	if err != nil || len(joined.Joined) != 2 {
		t.Fatalf("joined_members %v %v", joined, err)
	}
}
