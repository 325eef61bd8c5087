// Package signing is the room-server's side of the server's keys: it
// builds and signs the events this server makes, with the signing key the
// key-server owns and hands out, and verifies other servers' signatures
// with the verify keys the key-server has.
package signing

// Local event building and signing.
//
// The key-server owns the server's signing key; the room-server holds a
// copy in memory (federation.SigningKey: ServerKeyService.SigningKey, asked
// for again once the key-server's valid_until_ts has passed, so a rotation
// reaches it within a minute) and builds and signs events itself with
// gomatrixserverlib's EventBuilder: origin_server_ts, content hash, event
// ID, the one signature. So a send costs no key-server round trip (there
// used to be one per event, inside the room's lock). The result goes
// through the input pipeline; TestBuild and TestLocalEventsVerify check
// that what the room-server builds parses as untrusted with its event ID
// as reference hash and verifies against the key-server's published keys.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// Errors of building and verifying. The room-server maps them to its
// answers (handler.go).
var (
	// ErrKeyServer: the key-server could not be asked (for the signing key
	// or another server's verify keys); not a verdict on the event.
	ErrKeyServer = errors.New("key-server unavailable")
	// ErrInvalidEvent: gomatrixserverlib refused to build the event (bad fields).
	ErrInvalidEvent = errors.New("invalid event")
	// ErrTooLarge: the signed event would exceed the spec's size limits.
	ErrTooLarge = errors.New("event too large")
)

// Signer builds and signs events with this server's key.
type Signer struct {
	serverName spec.ServerName
	// keys signs what is not an event this server builds (SignJoin's
	// signature on a remote user's join: KeyService.SignJSON).
	keys keyserverv1.KeyServiceClient
	// Key is the held copy (tests make it ask again with Key.Forget).
	Key *federation.SigningKey
}

// NewSigner holds the key ServerKeyService hands out; keys signs the
// other JSON (SignJSON).
func NewSigner(serverName spec.ServerName, keys keyserverv1.KeyServiceClient, serverKeys keyserverv1.ServerKeyServiceClient) *Signer {
	return &Signer{serverName: serverName, keys: keys, Key: federation.NewSigningKey(serverKeys)}
}

// Identity returns the held signing key, asking the key-server first when
// it is due (at most once a minute). Callers that hold a room's lock call
// it before taking the lock, so the round trip is never made under it.
func (b *Signer) Identity(ctx context.Context) (*fclient.SigningIdentity, error) {
	id, err := b.Key.Identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyServer, err)
	}
	if id.ServerName != b.serverName {
		return nil, fmt.Errorf("key-server signs for %q, this room-server is %q", id.ServerName, b.serverName)
	}
	return id, nil
}

// Build turns a proto-event into a complete PDU signed by this server.
// Errors from gomatrixserverlib's checks (size limits, bad fields) wrap
// ErrInvalidEvent or ErrTooLarge.
func (b *Signer) Build(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, error) {
	return b.BuildAt(ctx, verImpl, proto, nil)
}

// BuildAt is Build with the event's origin_server_ts (ms since the epoch)
// set by the sender (an application service's ts); nil means now.
func (b *Signer) BuildAt(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent, originTS *int64) (gomatrixserverlib.PDU, error) {
	id, err := b.Identity(ctx)
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
		return nil, fmt.Errorf("%w: %v", ErrTooLarge, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	return ev, nil
}

// SignJSON signs JSON that is not an event this server builds (the
// server's signature on a remote user's join) through the key-server.
func (b *Signer) SignJSON(ctx context.Context, js []byte) (*keyserverv1.SignJSONResponse, error) {
	return b.keys.SignJSON(ctx, &keyserverv1.SignJSONRequest{Json: js})
}
