package signing

import (
	"context"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/pkg/federation"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// Verifier verifies signatures of any server, this one included, with the
// verify keys the key-server has (ServerKeyService.QueryServerKeys: its
// cache, or fetched from the server or through notaries). It is
// gomatrixserverlib's KeyRing over federation.KeyCache, which caches the
// key-server's answers for Config.KeyCacheTTL and asks again for a key ID
// it did not get at most once a second (a forged key ID must not turn into
// a key-server request per event). A key must be valid at the event's
// origin_server_ts: old keys verify what they signed before they expired.
type Verifier struct {
	ring *gomatrixserverlib.KeyRing
}

var _ gomatrixserverlib.JSONVerifier = (*Verifier)(nil)

// NewVerifier caches the key-server's answers for ttl.
func NewVerifier(client keyserverv1.ServerKeyServiceClient, ttl time.Duration) *Verifier {
	return &Verifier{ring: federation.NewVerifier(client, ttl)}
}

// VerifyJSONs implements gomatrixserverlib.JSONVerifier. An error return
// means the key-server could not be asked (not that a signature is bad).
func (k *Verifier) VerifyJSONs(ctx context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results, err := k.ring.VerifyJSONs(ctx, requests)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyServer, err)
	}
	return results, nil
}
