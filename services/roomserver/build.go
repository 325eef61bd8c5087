package roomserver

// Local event building and signing.
//
// The key-server owns the server's signing key; the room-server holds a
// copy in memory (federation.SigningKey: ServerKeyService.SigningKey, asked
// for again once the key-server's valid_until_ts has passed, so a rotation
// reaches it within a minute) and builds and signs events itself with
// gomatrixserverlib's EventBuilder: origin_server_ts, content hash, event
// ID, the one signature. So a send costs no key-server round trip (it used
// to be KeyService.BuildEvent, inside the room's lock). The result goes
// through the input pipeline; TestLocalEventsVerify checks that what the
// room-server builds parses as untrusted with its event ID as reference
// hash and verifies against the key-server's published keys.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// signer builds and signs events with this server's key.
type signer struct {
	serverName spec.ServerName
	// keys signs what is not an event this server builds (SignJoin's
	// signature on a remote user's join: KeyService.SignJSON).
	keys keyserverv1.KeyServiceClient
	key  *federation.SigningKey
}

func newSigner(serverName spec.ServerName, keys keyserverv1.KeyServiceClient, serverKeys keyserverv1.ServerKeyServiceClient) *signer {
	return &signer{serverName: serverName, keys: keys, key: federation.NewSigningKey(serverKeys)}
}

// identity returns the held signing key, asking the key-server first when
// it is due (at most once a minute). Callers that hold a room's lock call
// it before taking the lock, so the round trip is never made under it.
func (b *signer) identity(ctx context.Context) (*fclient.SigningIdentity, error) {
	id, err := b.key.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errKeyServer, err)
	}
	if id.ServerName != b.serverName {
		return nil, fmt.Errorf("key-server signs for %q, this room-server is %q", id.ServerName, b.serverName)
	}
	return id, nil
}

// build turns a proto-event into a complete PDU signed by this server.
// Errors from gomatrixserverlib's checks (size limits, bad fields) wrap
// ErrBadRequest or ErrEventTooLarge.
func (b *signer) build(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, error) {
	return b.buildAt(ctx, verImpl, proto, nil)
}

// buildAt is build with the event's origin_server_ts (ms since the epoch)
// set by the sender (an application service's ts); nil means now.
func (b *signer) buildAt(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent, originTS *int64) (gomatrixserverlib.PDU, error) {
	id, err := b.identity(ctx)
	if err != nil {
		return nil, err
	}
	ts := time.Now()
	if originTS != nil {
		ts = time.UnixMilli(*originTS)
	}
	// Build computes the content hash, the event ID (a reference hash
	// from room version 3 on) and the signature, and checks the fields and
	// the size limits of the signed event.
	ev, err := verImpl.NewEventBuilderFromProtoEvent(proto).Build(ts, id.ServerName, id.KeyID, id.PrivateKey)
	var invalid gomatrixserverlib.EventValidationError
	switch {
	case errors.As(err, &invalid) && invalid.Code == gomatrixserverlib.EventValidationTooLarge:
		return nil, fmt.Errorf("%w: %v", ErrEventTooLarge, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
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
