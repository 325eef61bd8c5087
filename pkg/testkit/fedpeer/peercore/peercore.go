// Package peercore is the error-returning core of a peer homeserver that
// drives a Myelin server over federation: its signing identity (events,
// key responses and X-Matrix requests signed with its own key) and the
// auth events of the events it builds. The test peer (pkg/testkit/fedpeer,
// which fails its test on an error) and the load generator's peer
// (pkg/loadgen, which returns errors) are built on it; it imports neither
// testing nor the test kit. Everything protocol-level is
// gomatrixserverlib's.
package peercore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Identity is a homeserver's name and ed25519 signing key.
type Identity struct {
	Name  spec.ServerName
	KeyID gomatrixserverlib.KeyID
	Key   ed25519.PrivateKey
}

// NewIdentity makes an identity with a fresh key.
func NewIdentity(name spec.ServerName, keyID gomatrixserverlib.KeyID) (Identity, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Name: name, KeyID: keyID, Key: key}, nil
}

// Sign builds and signs a proto-event of the room version as the server,
// timestamped now.
func (id Identity) Sign(verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, error) {
	pe.Version = verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), id.Name, id.KeyID, id.Key)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", pe.Type, err)
	}
	return ev, nil
}

// KeyResponse is the server's signed key response (the server-server
// API's "Publishing Keys") at now, valid for validity.
func (id Identity) KeyResponse(now time.Time, validity time.Duration) ([]byte, error) {
	keys := gomatrixserverlib.ServerKeys{ServerKeyFields: gomatrixserverlib.ServerKeyFields{
		ServerName:    id.Name,
		VerifyKeys:    map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{id.KeyID: {Key: spec.Base64Bytes(id.Key.Public().(ed25519.PublicKey))}},
		OldVerifyKeys: map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey{},
		ValidUntilTS:  spec.AsTimestamp(now.Add(validity)),
	}}
	raw, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(string(id.Name), id.KeyID, id.Key, raw)
}

// Request is a federation request to dest signed by the server (X-Matrix),
// sent over HTTPS to addr (host:port). body (nil: none) is marshalled as
// JSON; a json.RawMessage goes as it is.
func (id Identity) Request(ctx context.Context, method string, dest spec.ServerName, addr, path string, body any) (*http.Request, error) {
	fr := fclient.NewFederationRequest(method, id.Name, dest, path)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			return nil, err
		}
	}
	if err := fr.Sign(id.Name, id.KeyID, id.Key); err != nil {
		return nil, err
	}
	hr, err := fr.HTTPRequest()
	if err != nil {
		return nil, err
	}
	hr = hr.WithContext(ctx)
	hr.URL.Scheme, hr.URL.Host = "https", addr
	return hr, nil
}

// AddAuthEvents sets the proto-event's auth_events to those of state (the
// room's current state, by type and state key) that the auth rules name
// for it.
func AddAuthEvents(verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent, state map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU) error {
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(pe)
	if err != nil {
		return err
	}
	var evs []gomatrixserverlib.PDU
	for _, tuple := range needed.Tuples() {
		if ev := state[tuple]; ev != nil {
			evs = append(evs, ev)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(evs)
	if err != nil {
		return err
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		return err
	}
	pe.AuthEvents = eb.AuthEvents
	return nil
}
