package roomserver

// Local event building and signing.
//
// The room-server never holds the server's private key: the key-server
// does. So the room-server fills in a proto-event (prev_events, auth_events,
// depth, content) and the key-server completes it with gomatrixserverlib's
// EventBuilder (KeyService.BuildEvent: origin_server_ts, content hash,
// event ID, the one signature). The result is parsed with
// NewEventFromTrustedJSONWithEventID and then goes through the input
// pipeline; TestLocalEventsVerify checks that what comes back parses as
// untrusted with its event ID as reference hash and verifies against the
// key-server's published keys.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// signer builds events through the key-server.
type signer struct {
	serverName spec.ServerName
	keys       keyserverv1.KeyServiceClient
}

func newSigner(serverName spec.ServerName, keys keyserverv1.KeyServiceClient) *signer {
	return &signer{serverName: serverName, keys: keys}
}

// build turns a proto-event into a complete PDU signed by this server.
// Errors from gomatrixserverlib's checks (size limits, bad fields) wrap
// ErrBadRequest.
func (b *signer) build(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, error) {
	return b.buildAt(ctx, verImpl, proto, nil)
}

// buildAt is build with the event's origin_server_ts (ms since the epoch)
// set by the sender (an application service's ts); nil means now.
func (b *signer) buildAt(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent, originTS *int64) (gomatrixserverlib.PDU, error) {
	protoJSON, err := json.Marshal(proto)
	if err != nil {
		return nil, err
	}
	resp, err := b.keys.BuildEvent(ctx, &keyserverv1.BuildEventRequest{
		RoomVersion: string(verImpl.Version()), ProtoEvent: protoJSON, OriginServerTs: originTS,
	})
	switch status.Code(err) {
	case codes.OK:
	case codes.InvalidArgument:
		return nil, fmt.Errorf("%w: %s", ErrBadRequest, status.Convert(err).Message())
	case codes.OutOfRange:
		return nil, fmt.Errorf("%w: %s", ErrEventTooLarge, status.Convert(err).Message())
	default:
		return nil, fmt.Errorf("key-server BuildEvent: %w", err)
	}
	if spec.ServerName(resp.GetServerName()) != b.serverName {
		return nil, fmt.Errorf("key-server signs for %q, this room-server is %q", resp.GetServerName(), b.serverName)
	}
	// The key-server's Build computed the event ID (a reference hash from
	// room version 3 on) and checked the fields and size limits of the
	// signed event.
	ev, err := verImpl.NewEventFromTrustedJSONWithEventID(resp.GetEventId(), resp.GetEventJson(), false)
	if err != nil {
		return nil, fmt.Errorf("parse built event: %w", err)
	}
	return ev, nil
}

// roomIDAlphabet is what random room ID localparts are made of.
const roomIDAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// newRoomID returns "!<18 random letters>:<server>" for room versions whose
// room IDs are not derived from the create event.
func newRoomID(server spec.ServerName) (string, error) {
	local := make([]byte, 18)
	for i := range local {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(roomIDAlphabet))))
		if err != nil {
			return "", err
		}
		local[i] = roomIDAlphabet[n.Int64()]
	}
	return "!" + string(local) + ":" + string(server), nil
}
