package media

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/media/store"
)

// remoteMedia fetches other servers' media over federation and keeps it
// in the service's storage and store.
type remoteMedia struct {
	svc *Service
	// fed signs and sends the requests; nil when federation is off.
	fed *federation.Client
	// web follows the Location of multipart answers.
	web *http.Client
	// group makes concurrent requests for one remote file fetch it once.
	group singleflight.Group
}

// remoteRef is a request's remote media: another server's name and the
// media ID.
type remoteRef struct {
	server  spec.ServerName
	mediaID string
}

// ref tells whether the request is for another server's media,
// and checks its server name and media ID as the spec asks (a valid
// server name; A-Za-z0-9_- in the ID): anything else is 404.
func (rm *remoteMedia) ref(r *http.Request) (remoteRef, bool, error) {
	s := rm.svc
	server, err := pathParam(r, "serverName")
	if err != nil || server == s.serverName {
		return remoteRef{}, false, err
	}
	mediaID, err := pathParam(r, "mediaId")
	if err != nil {
		return remoteRef{}, false, err
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok || !mediaIDPattern.MatchString(mediaID) {
		return remoteRef{}, true, matrixhttp.NotFound("Media not found")
	}
	// allow_remote=false (a parameter of the deprecated endpoints, which
	// servers fetching from us set): this server's media only.
	if r.URL.Query().Get("allow_remote") == "false" {
		return remoteRef{}, true, matrixhttp.NotFound("Remote media not requested (allow_remote=false)")
	}
	if !s.cfg.Remote.Enabled || rm.fed == nil {
		return remoteRef{}, true, errRemoteUnavailable()
	}
	return remoteRef{server: spec.ServerName(server), mediaID: mediaID}, true, nil
}

func errRemoteUnavailable() error {
	return matrixhttp.NotFound("Remote media is not available: this server does not fetch media from other servers")
}

// maxRemoteWait bounds the timeout_ms passed on to a remote server: it
// may hold its answer's headers that long, and the federation transport
// waits 30 s for them.
const maxRemoteWait = 25 * time.Second

// remoteWait is the timeout_ms passed on to the remote server (how long
// it may wait for content not uploaded yet).
func remoteWait(r *http.Request) (int64, error) {
	ms, err := queryInt(r, "timeout_ms", defaultMediaWait.Milliseconds())
	if err != nil {
		return 0, err
	}
	return min(max(ms, 0), maxRemoteWait.Milliseconds()), nil
}

// download serves another server's media: from what is kept here,
// else fetched over federation (once, however many requests wait for
// it), streamed into the storage and kept.
func (rm *remoteMedia) download(r *http.Request, ref remoteRef) (any, error) {
	s := rm.svc
	waitMS, err := remoteWait(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	m, err := s.store.RemoteMediaOf(ctx, string(ref.server), ref.mediaID)
	if errors.Is(err, store.ErrNotFound) {
		m, err = fetchOnce(ctx, rm, "download/"+string(ref.server)+"/"+ref.mediaID, func(ctx context.Context) (store.RemoteMedia, error) {
			if m, err := s.store.RemoteMediaOf(ctx, string(ref.server), ref.mediaID); err == nil {
				return m, nil // kept by a fetch that ended just now
			}
			return rm.fetchMedia(ctx, ref, waitMS)
		})
	}
	if err != nil {
		return nil, err
	}
	name := m.UploadName
	if n := optionalParam(r, "fileName"); n != "" {
		name = n
	}
	return s.openContent(ctx, m.StorageKey, m.ContentType, name, m.Size)
}

// thumbnail serves a thumbnail of another server's media: the
// request is rounded up to the spec's recommended sizes (so a media has
// at most five), and that size is asked of the remote server and kept.
// A request larger than all of them gets the original.
func (rm *remoteMedia) thumbnail(r *http.Request, ref remoteRef, width, height int, method string) (any, error) {
	s := rm.svc
	w, h, method, ok := standardThumbnail(width, height, method)
	if !ok {
		resp, err := rm.download(r, ref)
		if cr, isContent := resp.(*contentResponse); isContent {
			cr.fileName = ""
		}
		return resp, err
	}
	waitMS, err := remoteWait(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	t, err := s.store.RemoteThumbnailOf(ctx, string(ref.server), ref.mediaID, w, h, method)
	if errors.Is(err, store.ErrNotFound) {
		key := fmt.Sprintf("thumbnail/%s/%s/%dx%d-%s", ref.server, ref.mediaID, w, h, method)
		t, err = fetchOnce(ctx, rm, key, func(ctx context.Context) (store.RemoteThumbnail, error) {
			if t, err := s.store.RemoteThumbnailOf(ctx, string(ref.server), ref.mediaID, w, h, method); err == nil {
				return t, nil
			}
			return rm.fetchThumbnail(ctx, ref, w, h, method, waitMS)
		})
	}
	if err != nil {
		return nil, err
	}
	return s.openContent(ctx, t.StorageKey, t.ContentType, "", t.Size)
}

// fetchOnce runs fetch for key once at a time in this process: concurrent
// requests for the same remote file wait for one fetch. The fetch runs on
// a context of its own, bounded by remote.timeout, so that a client that
// gives up does not fail the others.
func fetchOnce[T any](ctx context.Context, rm *remoteMedia, key string, fetch func(context.Context) (T, error)) (T, error) {
	ch := rm.group.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rm.svc.cfg.Remote.Timeout)
		defer cancel()
		return fetch(fctx)
	})
	var zero T
	select {
	case res := <-ch:
		if res.Err != nil {
			return zero, res.Err
		}
		return res.Val.(T), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// fetchMedia fetches remote media and keeps it.
func (rm *remoteMedia) fetchMedia(ctx context.Context, ref remoteRef, waitMS int64) (store.RemoteMedia, error) {
	s := rm.svc
	q := "?timeout_ms=" + strconv.FormatInt(waitMS, 10)
	a, err := rm.get(ctx, ref.server,
		"/_matrix/federation/v1/media/download/"+ref.mediaID+q,
		"/_matrix/media/v3/download/"+url.PathEscape(string(ref.server))+"/"+ref.mediaID+q+"&allow_remote=false")
	if err != nil {
		return store.RemoteMedia{}, err
	}
	defer a.Close()
	key := "remote/" + shard(ref.mediaID) + "/" + ref.mediaID + "." + randomBase64(6)
	n, err := rm.keep(ctx, a, key)
	if err != nil {
		return store.RemoteMedia{}, err
	}
	m := store.RemoteMedia{ServerName: string(ref.server), MediaID: ref.mediaID, ContentType: a.contentType,
		UploadName: a.fileName, Size: n, StorageKey: key, FetchedTS: s.now().UnixMilli()}
	stored, err := s.store.PutRemoteMedia(ctx, m)
	if err != nil || !stored {
		s.discard(ctx, key)
	}
	if err != nil {
		return store.RemoteMedia{}, err
	}
	if !stored {
		return s.store.RemoteMediaOf(ctx, string(ref.server), ref.mediaID)
	}
	s.log.Debug("fetched remote media", zap.String("server", string(ref.server)), zap.String("media_id", ref.mediaID), zap.Int64("size", n))
	return m, nil
}

// fetchThumbnail fetches a remote thumbnail and keeps it.
func (rm *remoteMedia) fetchThumbnail(ctx context.Context, ref remoteRef, w, h int, method string, waitMS int64) (store.RemoteThumbnail, error) {
	s := rm.svc
	q := fmt.Sprintf("?width=%d&height=%d&method=%s&timeout_ms=%d", w, h, method, waitMS)
	a, err := rm.get(ctx, ref.server,
		"/_matrix/federation/v1/media/thumbnail/"+ref.mediaID+q,
		"/_matrix/media/v3/thumbnail/"+url.PathEscape(string(ref.server))+"/"+ref.mediaID+q+"&allow_remote=false")
	if err != nil {
		return store.RemoteThumbnail{}, err
	}
	defer a.Close()
	key := fmt.Sprintf("remote-thumbnails/%s/%s/%dx%d-%s.%s", shard(ref.mediaID), ref.mediaID, w, h, method, randomBase64(6))
	n, err := rm.keep(ctx, a, key)
	if err != nil {
		return store.RemoteThumbnail{}, err
	}
	t := store.RemoteThumbnail{ServerName: string(ref.server), MediaID: ref.mediaID, Width: w, Height: h, Method: method,
		ContentType: a.contentType, Size: n, StorageKey: key, FetchedTS: s.now().UnixMilli()}
	stored, err := s.store.PutRemoteThumbnail(ctx, t)
	if err != nil || !stored {
		s.discard(ctx, key)
	}
	if err != nil {
		return store.RemoteThumbnail{}, err
	}
	if !stored {
		return s.store.RemoteThumbnailOf(ctx, string(ref.server), ref.mediaID, w, h, method)
	}
	return t, nil
}

// keep streams a remote answer into the storage under key, at most
// remote.max_size bytes: a larger one (declared or counted) is 502
// M_TOO_LARGE and leaves nothing.
func (rm *remoteMedia) keep(ctx context.Context, a *remoteAnswer, key string) (int64, error) {
	s := rm.svc
	limit := s.cfg.Remote.MaxSize
	tooLarge := matrixhttp.Errorf(http.StatusBadGateway, "M_TOO_LARGE", "The remote media is larger than this server's limit of %d bytes", limit)
	if a.length > limit {
		return 0, tooLarge
	}
	n, err := s.putContent(ctx, key, a.body, a.length, limit)
	switch {
	case errors.Is(err, ErrTooLarge):
		return 0, tooLarge
	case errors.Is(err, errReadBody):
		if ctx.Err() != nil {
			return 0, matrixhttp.Errorf(http.StatusGatewayTimeout, "M_UNKNOWN", "Fetching the remote media took too long")
		}
		return 0, matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The remote server's answer broke off: %v", err)
	case err != nil:
		return 0, err
	}
	if a.length >= 0 && n != a.length {
		s.discard(ctx, key)
		return 0, matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The remote server sent %d bytes of %d", n, a.length)
	}
	return n, nil
}
