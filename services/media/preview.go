package media

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/media/store"
)

// maxPreviewURL bounds the length of a URL to preview.
const maxPreviewURL = 4096

// Accept headers of preview fetches.
const (
	acceptPage  = "text/html,application/xhtml+xml;q=0.9,image/*;q=0.8,*/*;q=0.1"
	acceptImage = "image/*"
)

// previewer makes URL previews: it fetches pages and keeps their images
// through the service's storage and store.
type previewer struct {
	svc *Service
	// web fetches pages and images; nil when url_preview.enabled is off.
	web *webClient
	// group makes concurrent requests for one URL fetch it once.
	group singleflight.Group
}

// previewURL is GET /_matrix/client/v1/media/preview_url (and the
// deprecated /_matrix/media/v3/preview_url): the page's Open Graph data,
// from the cache when it holds the version for ts (or for now), else
// fetched, with its og:image kept as local media.
func (s *Service) previewURL(r *http.Request, _ *caller) (any, error) {
	if s.preview.web == nil {
		return nil, matrixhttp.Forbidden("URL previews are disabled on this server")
	}
	raw := r.URL.Query().Get("url")
	if raw == "" {
		return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "The url parameter is required")
	}
	u, err := previewTarget(raw)
	if err != nil {
		return nil, err
	}
	ts, err := queryInt(r, "ts", 0)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	now := s.now().UnixMilli()
	ttl := s.cfg.URLPreview.CacheTTL.Milliseconds()
	current := now - now%ttl
	// The version of the bucket ts falls in, when it is kept; else the
	// current one (the spec lets a server answer with a newer version).
	buckets := []int64{current}
	if ts > 0 && ts < current {
		buckets = []int64{ts - ts%ttl, current}
	}
	key := u.String()
	for _, b := range buckets {
		p, err := s.store.PreviewOf(ctx, key, b, now)
		if err == nil {
			return json.RawMessage(p.Preview), nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	ch := s.preview.group.DoChan(key, func() (any, error) {
		// Not the request's context: other requests may be waiting for
		// this fetch after this one's client gives up.
		return s.preview.fetch(context.WithoutCancel(ctx), u, current)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, previewError(res.Err)
		}
		return json.RawMessage(res.Val.([]byte)), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// previewTarget parses and checks the url parameter: an absolute http or
// https URL with a host; the fragment is dropped (it never reaches the
// site).
func previewTarget(raw string) (*url.URL, error) {
	if len(raw) > maxPreviewURL {
		return nil, matrixhttp.InvalidParam("The URL is too long")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return nil, matrixhttp.InvalidParam("The url parameter must be an http or https URL")
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// previewError is the Matrix error of a failed preview fetch.
func previewError(err error) error {
	var me *matrixhttp.Error
	switch {
	case errors.As(err, &me):
		return err
	case errors.Is(err, errFetchRefused):
		return matrixhttp.Forbidden("This URL may not be previewed: " + err.Error())
	case errors.Is(err, errFetchTimeout):
		return matrixhttp.Errorf(http.StatusGatewayTimeout, "M_UNKNOWN", "Fetching the URL timed out")
	case errors.Is(err, errFetchFailed):
		return matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "Fetching the URL failed: %v", err)
	}
	return err
}

// fetch fetches u, builds its preview and caches it in bucket.
func (p *previewer) fetch(ctx context.Context, u *url.URL, bucket int64) ([]byte, error) {
	s := p.svc
	cfg := s.cfg.URLPreview
	preview, imageID, err := p.build(ctx, u)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(preview)
	if err != nil {
		return nil, err
	}
	now := s.now().UnixMilli()
	rec := store.URLPreview{URL: u.String(), BucketTS: bucket, FetchedTS: now, ExpiresTS: now + cfg.CacheTTL.Milliseconds(),
		Preview: body, ImageMediaID: imageID}
	stored, err := s.store.PutPreview(ctx, rec)
	if err == nil && !stored {
		// Another replica cached this bucket meanwhile: serve that one
		// and drop this fetch's image.
		if theirs, err := s.store.PreviewOf(ctx, rec.URL, bucket, now); err == nil {
			body = theirs.Preview
		}
	}
	if err == nil && !stored && imageID != "" {
		if _, derr := s.store.DeleteMedia(ctx, imageID); derr != nil {
			s.log.Warn("deleting an unused preview image failed", zap.String("media_id", imageID), zap.Error(derr))
		}
	}
	if err != nil {
		// The preview is made: serve it (and keep its image, which it
		// names) even though it could not be cached.
		s.log.Warn("caching a URL preview failed", zap.Error(err))
	}
	return body, nil
}

// build fetches the page: an HTML page gives its Open Graph data
// (with <title> and the meta description as fallbacks) and its og:image
// kept as local media; an image is kept and is the preview; anything
// else previews as {}. imageID is the kept image's media ID.
func (p *previewer) build(ctx context.Context, u *url.URL) (map[string]any, string, error) {
	s := p.svc
	cfg := s.cfg.URLPreview
	fctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	resp, err := p.web.get(fctx, u, acceptPage)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	page := bufio.NewReader(io.LimitReader(resp.Body, cfg.MaxBytes))
	ctype := resp.Header.Get("Content-Type")
	if ctype == "" {
		// No type given: an HTML page is recognised by its start.
		head, _ := page.Peek(512)
		if sniffed := http.DetectContentType(head); strings.HasPrefix(sniffed, "text/html") {
			ctype = sniffed
		}
	}
	base, _, _ := mime.ParseMediaType(ctype)
	switch {
	case base == "text/html" || base == "application/xhtml+xml":
		meta := parsePage(page, ctype)
		if fctx.Err() != nil {
			return nil, "", fetchError(fctx, fctx.Err())
		}
		resp.Body.Close()
		cancel()
		preview := meta.preview()
		for k := range preview {
			if strings.HasPrefix(k, "og:image") {
				delete(preview, k) // replaced by the kept image's, if any
			}
		}
		imageID := ""
		if src := meta.imageURL(); src != "" {
			// Relative to the page, after its redirects.
			if iu, err := resp.Request.URL.Parse(src); err == nil {
				img, err := p.fetchImage(ctx, iu)
				if err == nil {
					imageID = img.mediaID
					p.addImage(preview, img, meta)
				} else {
					s.log.Debug("preview image left out", zap.String("image", iu.Redacted()), zap.Error(err))
				}
			}
		}
		return preview, imageID, nil
	case strings.HasPrefix(base, "image/"):
		img, err := p.keepImage(fctx, resp, p.imageLimit())
		if errors.Is(err, errNotImage) {
			return map[string]any{}, "", nil // too large: nothing to show
		}
		if err != nil {
			return nil, "", err
		}
		preview := map[string]any{}
		p.addImage(preview, img, pageMeta{})
		return preview, img.mediaID, nil
	}
	return map[string]any{}, "", nil
}

// imageLimit is the size cap of a preview's image.
func (p *previewer) imageLimit() int64 {
	return min(p.svc.cfg.URLPreview.MaxBytes, p.svc.cfg.MaxUploadSize)
}

// fetchImage fetches a page's og:image and keeps it.
func (p *previewer) fetchImage(ctx context.Context, u *url.URL) (keptImage, error) {
	s := p.svc
	ctx, cancel := context.WithTimeout(ctx, s.cfg.URLPreview.Timeout)
	defer cancel()
	resp, err := p.web.get(ctx, u, acceptImage)
	if err != nil {
		return keptImage{}, err
	}
	defer resp.Body.Close()
	return p.keepImage(ctx, resp, p.imageLimit())
}

// addImage puts a kept image into a preview: og:image as an mxc:// URI,
// its type, its size in bytes (matrix:image:size) and its dimensions
// (read from the image, else the page's og:image:width and height).
func (p *previewer) addImage(preview map[string]any, img keptImage, meta pageMeta) {
	s := p.svc
	preview["og:image"] = s.contentURI(img.mediaID)
	preview["og:image:type"] = img.contentType
	preview["matrix:image:size"] = img.size
	page := meta.preview()
	for k, v := range map[string]int{"og:image:width": img.width, "og:image:height": img.height} {
		if v > 0 {
			preview[k] = v
		} else if pv, ok := page[k]; ok {
			preview[k] = pv
		}
	}
	if alt := meta.og["og:image:alt"]; alt != "" {
		preview["og:image:alt"] = alt
	}
}

// sweep deletes previews that expired a cache TTL ago (kept that
// long for requests with an older ts) and their images, whose content
// goes to the janitor's list of objects to delete.
func (p *previewer) sweep(ctx context.Context) {
	s := p.svc
	before := s.now().Add(-s.cfg.URLPreview.CacheTTL).UnixMilli()
	for ctx.Err() == nil {
		n, images, err := s.store.DeleteStalePreviews(ctx, before, 100)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("janitor: deleting expired URL previews failed", zap.Error(err))
			}
			return
		}
		for _, id := range images {
			if _, err := s.store.DeleteMedia(ctx, id); err != nil && ctx.Err() == nil {
				s.log.Warn("janitor: deleting a preview image failed", zap.String("media_id", id), zap.Error(err))
			}
		}
		if n < 100 {
			return
		}
	}
}
