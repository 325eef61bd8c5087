package roomserver

// Local event building and signing.
//
// The room-server never holds the server's private key: the key-server
// does. gomatrixserverlib's EventBuilder.Build, however, wants a private key
// and returns a signed event. So Build runs with a throwaway ed25519 key
// generated once per process; that yields the event JSON with its content
// hash and (for room versions 3+) its reference-hash event ID, which does
// not depend on any signature (the reference hash is computed without
// "signatures"). Then the throwaway signature is removed, the JSON is
// redacted with the room version's redaction algorithm (signatures cover
// the redacted form), the key-server signs that with KeyService.SignJSON,
// and its signature for (server_name, key_id) becomes the event's only
// signature. The result is re-parsed with NewEventFromTrustedJSON and then
// goes through the input pipeline like any other event, where the signature
// is verified against the key-server's published keys.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// ephemeralKeyID names the throwaway key; its signatures never leave Build.
const ephemeralKeyID gomatrixserverlib.KeyID = "ed25519:myelin_build"

// signer builds events and has the key-server sign them.
type signer struct {
	serverName spec.ServerName
	keys       keyserverv1.KeyServiceClient
	ephemeral  ed25519.PrivateKey
}

func newSigner(serverName spec.ServerName, keys keyserverv1.KeyServiceClient) (*signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate build key: %w", err)
	}
	return &signer{serverName: serverName, keys: keys, ephemeral: priv}, nil
}

// build turns a proto-event into a complete PDU signed by this server.
// Errors from gomatrixserverlib's checks (size limits, bad fields) wrap
// ErrBadRequest.
func (b *signer) build(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, error) {
	eb := verImpl.NewEventBuilderFromProtoEvent(proto)
	built, err := eb.Build(time.Now(), b.serverName, ephemeralKeyID, b.ephemeral)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	unsigned, err := sjson.DeleteBytes(built.JSON(), "signatures")
	if err != nil {
		return nil, err
	}
	redacted, err := verImpl.RedactEventJSON(unsigned)
	if err != nil {
		return nil, fmt.Errorf("redact for signing: %w", err)
	}
	resp, err := b.keys.SignJSON(ctx, &keyserverv1.SignJSONRequest{Json: redacted})
	if err != nil {
		return nil, fmt.Errorf("key-server SignJSON: %w", err)
	}
	if spec.ServerName(resp.GetServerName()) != b.serverName {
		return nil, fmt.Errorf("key-server signs for %q, this room-server is %q", resp.GetServerName(), b.serverName)
	}
	sigs, err := json.Marshal(map[string]map[string]spec.Base64Bytes{
		resp.GetServerName(): {resp.GetKeyId(): resp.GetSignature()},
	})
	if err != nil {
		return nil, err
	}
	// Replacing the build key's signatures in place keeps the keys in
	// canonical order, so with sigs canonical the whole event stays
	// canonical JSON without sorting it again.
	sigs = gomatrixserverlib.CanonicalJSONAssumeValid(sigs)
	signed, err := sjson.SetRawBytes(built.JSON(), "signatures", sigs)
	if err != nil {
		return nil, err
	}
	// The event ID (a reference hash, computed without signatures) is the
	// one Build computed; the tests check that it matches the stored JSON.
	ev, err := verImpl.NewEventFromTrustedJSONWithEventID(built.EventID(), signed, false)
	if err != nil {
		return nil, fmt.Errorf("re-parse signed event: %w", err)
	}
	// The key-server's signature may be a little longer than the build
	// key's: the size limits must still hold.
	if err := gomatrixserverlib.CheckFields(ev); err != nil {
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
