package roomserver

import (
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// A remoteServer is a peer of the harness: its keys are served over HTTPS
// (federationTo) and fetched by the harness's key-server through the
// federation transport when the room-server first verifies one of its
// signatures.
var _ peer = (*remoteServer)(nil)

func (r *remoteServer) serverName() string { return r.name }

// federationHandler answers GET /_matrix/key/v2/server with the server's
// key, as the server-server API's "Publishing Keys" describes: a
// gomatrixserverlib ServerKeys response valid for an hour, signed with
// that key.
func (r *remoteServer) federationHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/key/v2/server", func(w http.ResponseWriter, _ *http.Request) {
		r.keyRequests.Add(1)
		raw, err := r.keyResponse(time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(raw)
	})
	return mux
}

// keyResponse is the server's signed key response at now.
func (r *remoteServer) keyResponse(now time.Time) ([]byte, error) {
	keys := gomatrixserverlib.ServerKeys{ServerKeyFields: gomatrixserverlib.ServerKeyFields{
		ServerName: spec.ServerName(r.name),
		VerifyKeys: map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{
			r.keyID: {Key: spec.Base64Bytes(r.key.Public().(ed25519.PublicKey))},
		},
		OldVerifyKeys: map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey{},
		ValidUntilTS:  spec.AsTimestamp(now.Add(time.Hour)),
	}}
	raw, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.SignJSON(r.name, r.keyID, r.key, raw)
}
