package keyserver

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/myelin-chat/myelin/pkg/federation"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// maxQueriedKeys bounds one QueryServerKeys call; maxQueriedServers one
// notary query.
const (
	maxQueriedKeys    = 1000
	maxQueriedServers = 100
	// fetchTimeout bounds one fetch of a server's keys (directly, then
	// through each notary).
	fetchTimeout = 45 * time.Second
	// fetchParallel is how many servers are fetched at once.
	fetchParallel = 16
	// maxFailures bounds the remembered fetch failures (origins of
	// requests are free to make up).
	maxFailures = 10000
	// missRefetch: a server that answered but without the key asked for
	// is asked again at most this often (a made-up key ID must not make
	// us fetch its keys per request), or every FetchRetryInterval if that
	// is shorter.
	missRefetch = 10 * time.Second
)

// want is one key asked for: a server's key ID ("" = every key) that must
// be valid at least until minValid (0 = now).
type want struct {
	server   spec.ServerName
	keyID    gomatrixserverlib.KeyID
	minValid spec.Timestamp
}

// remoteKeys finds other servers' verify keys: from the cache in the
// key-server's schema (keyDatabase, gomatrixserverlib's KeyDatabase), else
// through gomatrixserverlib's key fetchers, in order: the server itself
// (DirectKeyFetcher), then each configured notary (PerspectiveKeyFetcher).
// Fetches of one server are coalesced; a server that could not be reached
// is not asked again for Config.FetchRetryInterval, one that answered
// without the key asked for not within missRefetch.
type remoteKeys struct {
	s    *Service
	ring gomatrixserverlib.KeyRing
	// notaries' keys, for keeping only responses they really signed.
	notaries map[spec.ServerName]map[gomatrixserverlib.KeyID]ed25519.PublicKey

	group  singleflight.Group
	mu     sync.Mutex
	failed map[spec.ServerName]fetchFailure
}

// fetchFailure is the last fetch of a server that did not give what was
// asked: unreachable (every fetcher failed) or answered without the key.
type fetchFailure struct {
	at          time.Time
	unreachable bool
}

func newRemoteKeys(s *Service, transport *federation.Transport) (*remoteKeys, error) {
	r := &remoteKeys{
		s:        s,
		ring:     gomatrixserverlib.KeyRing{KeyDatabase: &keyDatabase{store: s.store}},
		notaries: map[spec.ServerName]map[gomatrixserverlib.KeyID]ed25519.PublicKey{},
		failed:   map[spec.ServerName]fetchFailure{},
	}
	for _, n := range s.cfg.Notaries {
		keys, err := n.publicKeys()
		if err != nil {
			return nil, err
		}
		nk := map[gomatrixserverlib.KeyID]ed25519.PublicKey{}
		for id, k := range keys {
			nk[gomatrixserverlib.KeyID(id)] = k
		}
		r.notaries[spec.ServerName(n.ServerName)] = nk
	}
	if transport == nil || !transport.Enabled() {
		return r, nil // nothing can be fetched: the cache and our own keys answer
	}
	client := &recordingKeyClient{KeyClient: transport.NewKeyClient(), r: r}
	r.ring.KeyFetchers = append(r.ring.KeyFetchers, &gomatrixserverlib.DirectKeyFetcher{
		Client:            client,
		IsLocalServerName: func(name spec.ServerName) bool { return name == s.server },
		LocalPublicKey:    spec.Base64Bytes(s.current().Private.Public().(ed25519.PublicKey)),
	})
	for _, n := range s.cfg.Notaries {
		r.ring.KeyFetchers = append(r.ring.KeyFetchers, &gomatrixserverlib.PerspectiveKeyFetcher{
			PerspectiveServerName: spec.ServerName(n.ServerName),
			PerspectiveServerKeys: r.notaries[spec.ServerName(n.ServerName)],
			Client:                client,
		})
	}
	return r, nil
}

// queryServerKeys answers QueryServerKeys: the wanted keys, this server's
// from memory, others' from the cache, fetched first when the cache has no
// key valid at a want's minValid (nor an old key). When that fetch fails
// the cached key is still returned, with its own valid_until_ts: whether
// it may verify something is the caller's rule (room versions 1 to 4 do
// not enforce key validity). Keys not found at all are left out; the error
// is a database failure (or the caller giving up).
func (s *Service) queryServerKeys(ctx context.Context, wants []want) ([]*keyserverv1.ServerVerifyKey, error) {
	now := spec.AsTimestamp(time.Now())
	byServer := map[spec.ServerName][]want{}
	for _, w := range wants {
		if w.minValid == 0 {
			w.minValid = now
		}
		byServer[w.server] = append(byServer[w.server], w)
	}
	var out []*keyserverv1.ServerVerifyKey
	if ws, ok := byServer[s.server]; ok {
		out = append(out, selectKeys(s.ownKeys(), ws)...)
		delete(byServer, s.server)
	}
	if len(byServer) == 0 {
		return out, nil
	}
	cached, err := s.remote.cachedKeys(ctx, byServer)
	if err != nil {
		return nil, err
	}
	var stale []spec.ServerName
	for server, ws := range byServer {
		if !satisfied(cached[server], ws) && s.remote.mayFetch(server) {
			stale = append(stale, server)
		}
	}
	if len(stale) > 0 {
		if err := s.remote.fetchAll(ctx, stale, byServer); err != nil {
			return nil, err
		}
		if cached, err = s.remote.cachedKeys(ctx, byServer); err != nil {
			return nil, err
		}
	}
	for server, ws := range byServer {
		out = append(out, selectKeys(cached[server], ws)...)
	}
	return out, nil
}

// ownKeys are this server's keys in cache form.
func (s *Service) ownKeys() []store.RemoteKey {
	keys := s.keys.Load()
	out := []store.RemoteKey{{
		ServerName: string(s.server), KeyID: keys.current.ID,
		PublicKey:    keys.current.Private.Public().(ed25519.PublicKey),
		ValidUntilTS: time.Now().Add(s.cfg.KeyValidity).UnixMilli(),
	}}
	for _, k := range keys.old {
		out = append(out, store.RemoteKey{
			ServerName: string(s.server), KeyID: k.ID,
			PublicKey: k.Private.Public().(ed25519.PublicKey), ExpiredTS: k.ExpiredAt.UnixMilli(),
		})
	}
	return out
}

// usable: an old key always (it is valid for what it signed before it
// expired); a current key while valid_until_ts reaches minValid.
func usable(k store.RemoteKey, minValid spec.Timestamp) bool {
	return k.ExpiredTS != 0 || spec.Timestamp(k.ValidUntilTS) >= minValid
}

// satisfied reports whether keys answer every want of one server: the key
// asked for is usable, or, for every key (""), some current key is.
func satisfied(keys []store.RemoteKey, ws []want) bool {
	for _, w := range ws {
		found := false
		for _, k := range keys {
			if (w.keyID == "" && k.ExpiredTS == 0 || gomatrixserverlib.KeyID(k.KeyID) == w.keyID) && usable(k, w.minValid) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// selectKeys returns the keys of one server that its wants name (every
// key for "").
func selectKeys(keys []store.RemoteKey, ws []want) []*keyserverv1.ServerVerifyKey {
	var out []*keyserverv1.ServerVerifyKey
	seen := map[string]bool{}
	for _, w := range ws {
		for _, k := range keys {
			if (w.keyID != "" && gomatrixserverlib.KeyID(k.KeyID) != w.keyID) || seen[k.KeyID] {
				continue
			}
			seen[k.KeyID] = true
			out = append(out, &keyserverv1.ServerVerifyKey{
				ServerName: k.ServerName, KeyId: k.KeyID, PublicKey: k.PublicKey,
				ValidUntilTs: k.ValidUntilTS, ExpiredTs: k.ExpiredTS,
			})
		}
	}
	return out
}

// cachedKeys reads the cached keys of the servers asked for.
func (r *remoteKeys) cachedKeys(ctx context.Context, byServer map[spec.ServerName][]want) (map[spec.ServerName][]store.RemoteKey, error) {
	servers := make([]string, 0, len(byServer))
	for server := range byServer {
		servers = append(servers, string(server))
	}
	rows, err := r.s.store.ServerKeys(ctx, servers)
	if err != nil {
		return nil, fmt.Errorf("read cached server keys: %w", err)
	}
	out := map[spec.ServerName][]store.RemoteKey{}
	for _, k := range rows {
		out[spec.ServerName(k.ServerName)] = append(out[spec.ServerName(k.ServerName)], k)
	}
	return out, nil
}

// mayFetch: fetching is possible and the server's last fetch did not fail
// within FetchRetryInterval.
func (r *remoteKeys) mayFetch(server spec.ServerName) bool {
	if len(r.ring.KeyFetchers) == 0 {
		return false
	}
	if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.failed[server]
	if !ok {
		return true
	}
	wait := r.s.cfg.FetchRetryInterval
	if !f.unreachable {
		wait = min(wait, missRefetch)
	}
	return time.Since(f.at) >= wait
}

// fetchAll fetches the servers' keys, several at a time; a server that
// cannot be fetched is only logged (and remembered, see mayFetch).
func (r *remoteKeys) fetchAll(ctx context.Context, servers []spec.ServerName, byServer map[spec.ServerName][]want) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchParallel)
	for _, server := range servers {
		g.Go(func() error { return r.fetch(gctx, server, byServer[server]) })
	}
	return g.Wait()
}

// fetch asks the fetchers in turn for one server's keys until one gives
// what ws want, storing everything they return. Concurrent fetches of the
// same server share one; the caller waits at most until its ctx ends.
func (r *remoteKeys) fetch(ctx context.Context, server spec.ServerName, ws []want) error {
	ch := r.group.DoChan(string(server), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		return nil, r.fetchNow(fctx, server, ws)
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *remoteKeys) fetchNow(ctx context.Context, server spec.ServerName, ws []want) error {
	requests := map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp{}
	for _, w := range ws {
		req := gomatrixserverlib.PublicKeyLookupRequest{ServerName: server, KeyID: w.keyID}
		if requests[req] < w.minValid {
			requests[req] = w.minValid
		}
	}
	var got []store.RemoteKey
	answered := false
	for _, f := range r.ring.KeyFetchers {
		results, err := f.FetchKeys(ctx, requests)
		if err != nil {
			r.s.log.Debug("key fetch failed", zap.String("server", string(server)), zap.String("fetcher", f.FetcherName()), zap.Error(err))
			continue
		}
		if err := r.ring.KeyDatabase.StoreKeys(ctx, results); err != nil {
			return fmt.Errorf("store fetched keys: %w", err)
		}
		for req, res := range results {
			if req.ServerName == server {
				got = append(got, remoteKey(req, res))
				answered = true
			}
		}
		if satisfied(got, ws) {
			r.mu.Lock()
			delete(r.failed, server)
			r.mu.Unlock()
			return nil
		}
	}
	r.s.log.Info("could not fetch the keys asked for", zap.String("server", string(server)),
		zap.Bool("server_answered", answered), zap.Int("fetchers", len(r.ring.KeyFetchers)))
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failed) >= maxFailures {
		for name, f := range r.failed {
			if time.Since(f.at) >= r.s.cfg.FetchRetryInterval || len(r.failed) >= maxFailures {
				delete(r.failed, name)
			}
		}
	}
	r.failed[server] = fetchFailure{at: time.Now(), unreachable: !answered}
	return nil
}

func remoteKey(req gomatrixserverlib.PublicKeyLookupRequest, res gomatrixserverlib.PublicKeyLookupResult) store.RemoteKey {
	k := store.RemoteKey{
		ServerName: string(req.ServerName), KeyID: string(req.KeyID), PublicKey: res.Key,
		ValidUntilTS: int64(res.ValidUntilTS), ExpiredTS: int64(res.ExpiredTS),
	}
	if k.ExpiredTS != 0 {
		k.ValidUntilTS = 0
	}
	return k
}

// keyDatabase is gomatrixserverlib's KeyDatabase over the key-server's
// server_keys table.
type keyDatabase struct{ store *store.Store }

var _ gomatrixserverlib.KeyDatabase = (*keyDatabase)(nil)

func (d *keyDatabase) FetcherName() string { return "key-server database" }

// FetchKeys returns the cached keys among those asked for, whatever their
// validity: the key ring (and queryServerKeys) judge that.
func (d *keyDatabase) FetchKeys(ctx context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	servers := map[string]bool{}
	for req := range requests {
		servers[string(req.ServerName)] = true
	}
	list := make([]string, 0, len(servers))
	for s := range servers {
		list = append(list, s)
	}
	rows, err := d.store.ServerKeys(ctx, list)
	if err != nil {
		return nil, err
	}
	out := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	for _, k := range rows {
		req := gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(k.ServerName), KeyID: gomatrixserverlib.KeyID(k.KeyID)}
		if _, ok := requests[req]; ok {
			out[req] = gomatrixserverlib.PublicKeyLookupResult{
				VerifyKey: gomatrixserverlib.VerifyKey{Key: k.PublicKey}, ValidUntilTS: spec.Timestamp(k.ValidUntilTS), ExpiredTS: spec.Timestamp(k.ExpiredTS),
			}
		}
	}
	return out, nil
}

// StoreKeys caches fetched keys (store.StoreServerKeys says which news
// wins over what is cached).
func (d *keyDatabase) StoreKeys(ctx context.Context, results map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	keys := make([]store.RemoteKey, 0, len(results))
	for req, res := range results {
		if len(res.Key) != ed25519.PublicKeySize {
			continue
		}
		keys = append(keys, remoteKey(req, res))
	}
	return d.store.StoreServerKeys(ctx, keys)
}

// recordingKeyClient is the fetchers' key client: gomatrixserverlib's
// plain client, keeping a copy of each key response that passes the same
// checks the fetchers make (signed by the server itself, and by the notary
// when one relayed it), exactly as signed, for the notary endpoints.
type recordingKeyClient struct {
	gomatrixserverlib.KeyClient
	r *remoteKeys
}

func (c *recordingKeyClient) GetServerKeys(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	keys, err := c.KeyClient.GetServerKeys(ctx, server)
	if err == nil && keys.ServerName == server {
		c.record(ctx, keys)
	}
	return keys, err
}

func (c *recordingKeyClient) LookupServerKeys(ctx context.Context, via spec.ServerName, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) ([]gomatrixserverlib.ServerKeys, error) {
	list, err := c.KeyClient.LookupServerKeys(ctx, via, requests)
	if err != nil {
		return list, err
	}
	for _, keys := range list {
		if keys.ServerName != via && !c.r.signedByNotary(via, keys.Raw) {
			continue
		}
		c.record(ctx, keys)
	}
	return list, nil
}

func (c *recordingKeyClient) record(ctx context.Context, keys gomatrixserverlib.ServerKeys) {
	if checks, _ := gomatrixserverlib.CheckKeys(keys.ServerName, time.Unix(0, 0), keys); !checks.AllChecksOK {
		return
	}
	err := c.r.s.store.StoreKeyResponse(ctx, store.KeyResponse{
		ServerName: string(keys.ServerName), JSON: keys.Raw, ValidUntilTS: int64(keys.ValidUntilTS),
	})
	if err != nil {
		c.r.s.log.Warn("store key response", zap.String("server", string(keys.ServerName)), zap.Error(err))
	}
}

// signedByNotary: raw carries a valid signature of the configured notary.
func (r *remoteKeys) signedByNotary(notary spec.ServerName, raw []byte) bool {
	keys, ok := r.notaries[notary]
	if !ok {
		return false
	}
	ids, err := gomatrixserverlib.ListKeyIDs(string(notary), raw)
	if err != nil {
		return false
	}
	for _, id := range ids {
		if k, ok := keys[id]; ok && gomatrixserverlib.VerifyJSON(string(notary), id, k, raw) == nil {
			return true
		}
	}
	return false
}
