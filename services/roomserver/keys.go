package roomserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// ErrUnknownServerKeys is the signature error for events whose signing
// server's keys this room-server cannot obtain.
var ErrUnknownServerKeys = errors.New("signing keys of this server are unknown")

// keyVerifier is what the input pipeline needs to check signatures. It is
// gomatrixserverlib's JSONVerifier, so gomatrixserverlib.VerifyEventSignatures
// decides which servers must have signed an event and this only answers
// "is this JSON signed by that server".
type keyVerifier = gomatrixserverlib.JSONVerifier

// localKeys verifies signatures of this homeserver with the public keys the
// key-server publishes (cached for Config.KeyCacheTTL). Keys of other
// servers are unknown until federation (and a key fetcher) lands, so events
// signed only by other servers fail verification and are INVALID for now.
type localKeys struct {
	client     keyserverv1.KeyServiceClient
	serverName spec.ServerName
	ttl        time.Duration

	mu      sync.Mutex
	fetched time.Time
	keys    map[gomatrixserverlib.KeyID]gomatrixserverlib.PublicKeyLookupResult
}

var _ keyVerifier = (*localKeys)(nil)

// minRefetch rate-limits refetching when an event names a key ID we do not
// know (a forged key ID must not turn into a key-server request per event).
const minRefetch = time.Second

func newLocalKeys(client keyserverv1.KeyServiceClient, serverName spec.ServerName, ttl time.Duration) *localKeys {
	return &localKeys{client: client, serverName: serverName, ttl: ttl}
}

// lookup returns the key-server's keys, fetching them when the cache is
// stale or misses one of want.
func (k *localKeys) lookup(ctx context.Context, want []gomatrixserverlib.KeyID) (map[gomatrixserverlib.KeyID]gomatrixserverlib.PublicKeyLookupResult, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	age := time.Since(k.fetched)
	stale := k.keys == nil || age > k.ttl
	if !stale && age > minRefetch {
		for _, id := range want {
			if _, ok := k.keys[id]; !ok {
				stale = true
				break
			}
		}
	}
	if !stale {
		return k.keys, nil
	}
	resp, err := k.client.ServerKeys(ctx, &keyserverv1.ServerKeysRequest{})
	if err != nil {
		return nil, fmt.Errorf("%w: ServerKeys: %w", errKeyServer, err)
	}
	keys := map[gomatrixserverlib.KeyID]gomatrixserverlib.PublicKeyLookupResult{}
	for _, vk := range resp.GetVerifyKeys() {
		keys[gomatrixserverlib.KeyID(vk.GetKeyId())] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    gomatrixserverlib.VerifyKey{Key: vk.GetPublicKey()},
			ExpiredTS:    gomatrixserverlib.PublicKeyNotExpired,
			ValidUntilTS: spec.Timestamp(resp.GetValidUntilTs()),
		}
	}
	for _, vk := range resp.GetOldVerifyKeys() {
		keys[gomatrixserverlib.KeyID(vk.GetKeyId())] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    gomatrixserverlib.VerifyKey{Key: vk.GetPublicKey()},
			ExpiredTS:    spec.Timestamp(vk.GetExpiredTs()),
			ValidUntilTS: gomatrixserverlib.PublicKeyNotValid,
		}
	}
	k.keys, k.fetched = keys, time.Now()
	return keys, nil
}

// VerifyJSONs implements gomatrixserverlib.JSONVerifier. An error return
// means the key-server could not be asked (not that a signature is bad).
func (k *localKeys) VerifyJSONs(ctx context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results := make([]gomatrixserverlib.VerifyJSONResult, len(requests))
	for i, req := range requests {
		if req.ServerName != k.serverName {
			results[i].Error = fmt.Errorf("%w: %s", ErrUnknownServerKeys, req.ServerName)
			continue
		}
		ids, err := gomatrixserverlib.ListKeyIDs(string(req.ServerName), req.Message)
		if err != nil || len(ids) == 0 {
			results[i].Error = fmt.Errorf("not signed by %s", req.ServerName)
			continue
		}
		keys, err := k.lookup(ctx, ids)
		if err != nil {
			return nil, err
		}
		results[i].Error = fmt.Errorf("no known key of %s signed this", req.ServerName)
		for _, id := range ids {
			key, ok := keys[id]
			if !ok {
				continue
			}
			if !key.WasValidAt(req.AtTS, req.ValidityCheckingFunc) {
				results[i].Error = fmt.Errorf("key %s of %s was not valid at %d", id, req.ServerName, req.AtTS)
				continue
			}
			if err := gomatrixserverlib.VerifyJSON(string(req.ServerName), id, ed25519.PublicKey(key.Key), req.Message); err != nil {
				results[i].Error = err
				continue
			}
			results[i].Error = nil
			break
		}
	}
	return results, nil
}
