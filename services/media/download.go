package media

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/media/storage"
	"github.com/myelin-chat/myelin/services/media/store"
)

// defaultMediaWait and maxMediaWait bound how long a download waits for
// the content of a created media ID (timeout_ms).
const (
	defaultMediaWait = 20 * time.Second
	maxMediaWait     = 2 * time.Minute
	mediaPoll        = 250 * time.Millisecond
)

// loadMedia returns an uploaded local media's row, waiting up to
// timeout_ms for a created one's content, or for the content of one being
// handed over by another service (504 M_NOT_YET_UPLOADED after).
// Remote media (another server name) is served by remote.go: not found
// here.
func (s *Service) loadMedia(r *http.Request) (store.Media, error) {
	id, remote, err := s.mediaParams(r)
	if err != nil {
		return store.Media{}, err
	}
	if remote {
		return store.Media{}, matrixhttp.NotFound("Media not found")
	}
	return s.waitMedia(r, id)
}

// waitMedia is loadMedia for a local media ID.
func (s *Service) waitMedia(r *http.Request, id string) (store.Media, error) {
	waitMS, err := queryInt(r, "timeout_ms", defaultMediaWait.Milliseconds())
	if err != nil {
		return store.Media{}, err
	}
	wait := min(time.Duration(max(waitMS, 0))*time.Millisecond, maxMediaWait)
	ctx := r.Context()
	deadline := time.Now().Add(wait)
	for {
		m, err := s.store.MediaByID(ctx, id, s.now().UnixMilli())
		if errors.Is(err, store.ErrNotFound) {
			return store.Media{}, matrixhttp.NotFound("Media not found")
		} else if err != nil {
			return store.Media{}, err
		}
		if m.Uploaded() && m.Stored() {
			return m, nil
		}
		if time.Now().After(deadline) {
			return store.Media{}, matrixhttp.Errorf(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "The media's content has not been uploaded yet")
		}
		select {
		case <-ctx.Done():
			return store.Media{}, ctx.Err()
		case <-time.After(mediaPoll):
		}
	}
}

// openContent opens a stored object for a response.
func (s *Service) openContent(ctx context.Context, key, contentType, fileName string, size int64) (*contentResponse, error) {
	body, err := s.content.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		// The row names content the storage does not have: lost or
		// deleted behind our back.
		s.log.Error("stored content is missing", zap.String("key", key))
		return nil, matrixhttp.Unknown("The media's content is missing from the storage")
	}
	if err != nil {
		return nil, err
	}
	return &contentResponse{contentType: contentType, fileName: fileName, size: size, body: body}, nil
}

// downloadMedia is GET /_matrix/client/v1/media/download/...
func (s *Service) downloadMedia(r *http.Request, _ *caller) (any, error) {
	if ref, remote, err := s.remote.ref(r); err != nil {
		return nil, err
	} else if remote {
		return s.remote.download(r, ref)
	}
	m, err := s.loadMedia(r)
	if err != nil {
		return nil, err
	}
	name := m.UploadName
	if n := optionalParam(r, "fileName"); n != "" {
		name = n
	}
	return s.openContent(r.Context(), m.StorageKey, m.ContentType, name, m.Size)
}

// errFrozen answers the deprecated unauthenticated endpoints.
func errFrozen() error {
	return matrixhttp.NotFound("Unauthenticated media access is frozen: use /_matrix/client/v1/media")
}

// legacyDownload is GET /_matrix/media/{v3,r0}/download/...
func (s *Service) legacyDownload(r *http.Request, c *caller) (any, error) {
	if !s.cfg.UnauthenticatedDownload {
		return nil, errFrozen()
	}
	return s.downloadMedia(r, c)
}

// legacyThumbnail is GET /_matrix/media/{v3,r0}/thumbnail/...
func (s *Service) legacyThumbnail(r *http.Request, c *caller) (any, error) {
	if !s.cfg.UnauthenticatedDownload {
		return nil, errFrozen()
	}
	return s.thumbnailMedia(r, c)
}

// contentResponse is a handler's answer that is content, not JSON; body
// streams from the storage and is closed once written.
type contentResponse struct {
	contentType, fileName string
	size                  int64
	body                  io.ReadCloser
}

// inlineTypes are the content types the spec lists as safe to serve with
// Content-Disposition: inline; everything else is an attachment.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true, "application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// mediaCSP is the spec's recommended Content-Security-Policy for content.
const mediaCSP = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"

// contentHeaders are the Content-Type and Content-Disposition of content:
// inline only for the spec's safe types.
func contentHeaders(c *contentResponse) (ctype, disposition string) {
	ctype = c.contentType
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	base, _, _ := mime.ParseMediaType(ctype)
	disposition = "attachment"
	if inlineTypes[base] {
		disposition = "inline"
	}
	if c.fileName != "" {
		// RFC 6266 with RFC 5987's UTF-8 form, which keeps any name safe.
		disposition += "; filename*=utf-8''" + url.PathEscape(c.fileName)
	}
	return ctype, disposition
}

// writeContent writes the spec's headers and streams the body.
func (s *Service) writeContent(w http.ResponseWriter, r *http.Request, c *contentResponse) {
	defer c.body.Close()
	ctype, disposition := contentHeaders(c)
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Length", strconv.FormatInt(c.size, 10))
	h.Set("Content-Security-Policy", mediaCSP)
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	// Media never changes under its ID; authenticated, so private.
	h.Set("Cache-Control", "private, max-age=86400, immutable")
	w.WriteHeader(http.StatusOK)
	if n, err := io.Copy(w, c.body); err != nil && r.Context().Err() == nil {
		// The status is sent; the client sees a short body.
		s.log.Error("streaming content failed", zap.Int64("sent", n), zap.Int64("size", c.size), zap.Error(err))
	}
}
