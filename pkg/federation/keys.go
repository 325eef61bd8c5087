package federation

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// KeyCache is a gomatrixserverlib.KeyDatabase over the key-server's
// ServerKeyService.QueryServerKeys: every server's verify keys, as the
// key-server has them cached or fetches them. It keeps answers in memory
// for ttl, and asks again for a key it did not get, or got only with a
// validity that ends before the time asked for, at most once per
// minRefetch (an event or request naming a made-up key ID must not become
// a key-server call each time). A key is returned with its validity even
// when that ends before the asked time: the key ring's validity rule for
// the request decides.
//
// Put it in a gomatrixserverlib.KeyRing (NewVerifier) to get a JSONVerifier:
// the key ring does the signature checks.
type KeyCache struct {
	client     keyserverv1.ServerKeyServiceClient
	ttl        time.Duration
	minRefetch time.Duration
	now        func() time.Time

	mu      sync.Mutex
	entries map[gomatrixserverlib.PublicKeyLookupRequest]cachedKey
	misses  map[gomatrixserverlib.PublicKeyLookupRequest]time.Time
}

type cachedKey struct {
	result  gomatrixserverlib.PublicKeyLookupResult
	fetched time.Time
}

// DefaultMinRefetch is how often KeyCache asks again for a key it did not
// get.
const DefaultMinRefetch = time.Second

// maxMisses bounds the remembered misses (made-up key IDs are free to make).
const maxMisses = 10000

var _ gomatrixserverlib.KeyDatabase = (*KeyCache)(nil)

// NewKeyCache caches the key-server's answers for ttl.
func NewKeyCache(client keyserverv1.ServerKeyServiceClient, ttl time.Duration) *KeyCache {
	return &KeyCache{
		client: client, ttl: ttl, minRefetch: DefaultMinRefetch, now: time.Now,
		entries: map[gomatrixserverlib.PublicKeyLookupRequest]cachedKey{},
		misses:  map[gomatrixserverlib.PublicKeyLookupRequest]time.Time{},
	}
}

// NewVerifier is gomatrixserverlib's KeyRing over a KeyCache: a JSONVerifier
// for events and X-Matrix requests signed by any server.
func NewVerifier(client keyserverv1.ServerKeyServiceClient, ttl time.Duration) *gomatrixserverlib.KeyRing {
	return &gomatrixserverlib.KeyRing{KeyDatabase: NewKeyCache(client, ttl)}
}

// FetcherName implements gomatrixserverlib.KeyFetcher.
func (c *KeyCache) FetcherName() string { return "myelin key-server (QueryServerKeys)" }

// FetchKeys implements gomatrixserverlib.KeyFetcher. Each request's
// timestamp is the time the key must be valid at (min_valid_until_ts). A key
// the key-server does not have is left out; an error means the key-server
// could not be asked.
func (c *KeyCache) FetchKeys(ctx context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	now := c.now()
	out := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	var ask []*keyserverv1.ServerKeyID
	c.mu.Lock()
	for req, atTS := range requests {
		e, ok := c.entries[req]
		if ok && now.Sub(e.fetched) < c.ttl && validAt(e.result, atTS) {
			out[req] = e.result
			continue
		}
		if missed, recent := c.misses[req]; recent && now.Sub(missed) < c.minRefetch {
			if ok {
				out[req] = e.result // the best known; the key ring checks its validity
			}
			continue
		}
		ask = append(ask, &keyserverv1.ServerKeyID{ServerName: string(req.ServerName), KeyId: string(req.KeyID), MinValidUntilTs: int64(atTS)})
	}
	c.mu.Unlock()
	if len(ask) == 0 {
		return out, nil
	}
	resp, err := c.client.QueryServerKeys(ctx, &keyserverv1.QueryServerKeysRequest{Keys: ask})
	if err != nil {
		return nil, fmt.Errorf("QueryServerKeys: %w", err)
	}
	got := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	for _, k := range resp.GetKeys() {
		got[gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(k.GetServerName()), KeyID: gomatrixserverlib.KeyID(k.GetKeyId())}] = LookupResult(k)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for req, res := range got {
		c.entries[req] = cachedKey{result: res, fetched: now}
		delete(c.misses, req)
	}
	for _, a := range ask {
		req := gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(a.GetServerName()), KeyID: gomatrixserverlib.KeyID(a.GetKeyId())}
		if res, ok := got[req]; ok && validAt(res, spec.Timestamp(a.GetMinValidUntilTs())) {
			out[req] = res
			continue
		}
		if len(c.misses) >= maxMisses {
			for k, at := range c.misses {
				if now.Sub(at) >= c.minRefetch {
					delete(c.misses, k)
				}
			}
		}
		c.misses[req] = now
		if e, ok := c.entries[req]; ok {
			out[req] = e.result
		}
	}
	return out, nil
}

// validAt: an old key, or a current key valid until at least ts.
func validAt(res gomatrixserverlib.PublicKeyLookupResult, ts spec.Timestamp) bool {
	return res.ExpiredTS != gomatrixserverlib.PublicKeyNotExpired || res.ValidUntilTS >= ts
}

// StoreKeys implements gomatrixserverlib.KeyDatabase: the key ring hands
// back what FetchKeys gave it, which is cached already.
func (c *KeyCache) StoreKeys(context.Context, map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	return nil
}

// LookupResult converts a key-server answer into gomatrixserverlib's form.
func LookupResult(k *keyserverv1.ServerVerifyKey) gomatrixserverlib.PublicKeyLookupResult {
	res := gomatrixserverlib.PublicKeyLookupResult{
		VerifyKey:    gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(k.GetPublicKey())},
		ExpiredTS:    spec.Timestamp(k.GetExpiredTs()),
		ValidUntilTS: spec.Timestamp(k.GetValidUntilTs()),
	}
	if res.ExpiredTS != gomatrixserverlib.PublicKeyNotExpired {
		res.ValidUntilTS = gomatrixserverlib.PublicKeyNotValid
	}
	return res
}
