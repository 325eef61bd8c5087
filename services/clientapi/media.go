package clientapi

// The content repository (client-server API, "Content repository"), for
// local media: uploads (POST /media/v3/upload, and POST /media/v1/create
// followed by PUT /media/v3/upload/{serverName}/{mediaId}), downloads and
// thumbnails on the authenticated /_matrix/client/v1/media endpoints, and
// /media/config. Content is stored in PostgreSQL (store/media.go), so any
// replica serves any upload.
//
// The deprecated unauthenticated /_matrix/media/{v3,r0}/download and
// /thumbnail endpoints are frozen, as the spec asks (every Myelin upload is
// newer than the freeze): they answer 404 unless
// media.unauthenticated_download is set. Remote media (another server
// name) needs federation and is not found. URL previews are not served.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/draw"
	_ "image/gif" // decoders for image.Decode
	"image/jpeg"
	"image/png"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// mediaRoutes are the content repository's routes, all absolute.
func (s *Service) mediaRoutes() []route {
	var rts []route
	for _, v := range []string{"v3", "r0"} {
		rts = append(rts,
			route{method: http.MethodPost, path: "/_matrix/media/" + v + "/upload", abs: true, auth: true, limit: limitMedia, serve: s.uploadMedia},
			route{method: http.MethodPut, path: "/_matrix/media/" + v + "/upload/{serverName}/{mediaId}", abs: true, auth: true, limit: limitMedia, serve: s.uploadCreatedMedia},
			route{method: http.MethodGet, path: "/_matrix/media/" + v + "/config", abs: true, auth: true, serve: s.mediaConfig},
			route{method: http.MethodGet, path: "/_matrix/media/" + v + "/download/{serverName}/{mediaId}", abs: true, serve: s.legacyDownload},
			route{method: http.MethodGet, path: "/_matrix/media/" + v + "/download/{serverName}/{mediaId}/{fileName}", abs: true, serve: s.legacyDownload},
			route{method: http.MethodGet, path: "/_matrix/media/" + v + "/thumbnail/{serverName}/{mediaId}", abs: true, serve: s.legacyThumbnail},
		)
	}
	return append(rts,
		route{method: http.MethodPost, path: "/_matrix/media/v1/create", abs: true, auth: true, limit: limitMedia, serve: s.createMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/config", abs: true, auth: true, serve: s.mediaConfig},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/download/{serverName}/{mediaId}", abs: true, auth: true, serve: s.downloadMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", abs: true, auth: true, serve: s.downloadMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", abs: true, auth: true, serve: s.thumbnailMedia},
	)
}

// mediaIDPattern is what the spec allows in a media ID.
var mediaIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// newMediaID returns a fresh media ID (24 random URL-safe characters).
func newMediaID() string { return randomBase64(18) }

func (s *Service) contentURI(mediaID string) string {
	return "mxc://" + s.serverName + "/" + mediaID
}

// mediaConfig is GET /media/config.
func (s *Service) mediaConfig(*http.Request, *device) (any, error) {
	return map[string]any{"m.upload.size": s.cfg.Media.MaxUploadSize}, nil
}

// readUpload reads an upload body: its content (413 M_TOO_LARGE past
// max_upload_size), its Content-Type header and its filename parameter.
func (s *Service) readUpload(r *http.Request) (store.Media, error) {
	max := s.cfg.Media.MaxUploadSize
	if r.ContentLength > max {
		return store.Media{}, tooLarge(fmt.Sprintf("Uploads are limited to %d bytes", max))
	}
	content, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return store.Media{}, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "reading the upload: %v", err)
	}
	if int64(len(content)) > max {
		return store.Media{}, tooLarge(fmt.Sprintf("Uploads are limited to %d bytes", max))
	}

	ctype := r.Header.Get("Content-Type")
	if ctype != "" {
		if _, _, err := mime.ParseMediaType(ctype); err != nil {
			return store.Media{}, matrixhttp.InvalidParam("Content-Type is not a media type")
		}
	}
	name := r.URL.Query().Get("filename")
	if len(name) > 255 {
		return store.Media{}, matrixhttp.InvalidParam("filename is longer than 255 bytes")
	}
	return store.Media{ContentType: ctype, UploadName: name, Content: content}, nil
}

// uploadMedia is POST /media/v3/upload.
func (s *Service) uploadMedia(r *http.Request, dev *device) (any, error) {
	m, err := s.readUpload(r)
	if err != nil {
		return nil, err
	}
	m.MediaID, m.Uploader = newMediaID(), dev.UserID
	if err := s.store.PutMedia(r.Context(), m, s.now().UnixMilli(), s.cfg.Media.MaxUserTotal); err != nil {
		return nil, s.quotaError(err)
	}
	return map[string]string{"content_uri": s.contentURI(m.MediaID)}, nil
}

// createMedia is POST /media/v1/create: a media ID whose content comes
// later, through uploadCreatedMedia.
func (s *Service) createMedia(r *http.Request, dev *device) (any, error) {
	id := newMediaID()
	now := s.now()
	expires := now.Add(s.cfg.Media.CreateExpiry)
	ok, err := s.store.CreateMedia(r.Context(), id, dev.UserID, now.UnixMilli(), expires.UnixMilli(), s.cfg.Media.MaxPendingCreates)
	if err != nil {
		return nil, err
	}
	if !ok {
		e := matrixhttp.Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many media IDs waiting for their content")
		return nil, e
	}
	return map[string]any{"content_uri": s.contentURI(id), "unused_expires_at": expires.UnixMilli()}, nil
}

// mediaParams reads and checks {serverName} and {mediaId}; remote says
// whether the media is another server's.
func (s *Service) mediaParams(r *http.Request) (mediaID string, remote bool, err error) {
	server, err := pathParam(r, "serverName")
	if err != nil {
		return "", false, err
	}
	if mediaID, err = pathParam(r, "mediaId"); err != nil {
		return "", false, err
	}
	if !mediaIDPattern.MatchString(mediaID) {
		return "", false, matrixhttp.NotFound("Media not found")
	}
	return mediaID, server != s.serverName, nil
}

// uploadCreatedMedia is PUT /media/v3/upload/{serverName}/{mediaId}.
func (s *Service) uploadCreatedMedia(r *http.Request, dev *device) (any, error) {
	id, remote, err := s.mediaParams(r)
	if err != nil {
		return nil, err
	}
	if remote {
		return nil, matrixhttp.NotFound("Media IDs are created by this server only")
	}
	owner, err := s.store.Reader().MediaOwner(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("Unknown media ID")
	} else if err != nil {
		return nil, err
	}
	if owner != dev.UserID {
		return nil, matrixhttp.Forbidden("This media ID was created by another user")
	}
	m, err := s.readUpload(r)
	if err != nil {
		return nil, err
	}
	m.MediaID, m.Uploader = id, dev.UserID
	switch err := s.store.UploadCreated(r.Context(), m, s.now().UnixMilli(), s.cfg.Media.MaxUserTotal); {
	case errors.Is(err, store.ErrQuota):
		return nil, s.quotaError(err)
	case errors.Is(err, store.ErrMediaExists):
		return nil, matrixhttp.Errorf(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "This media already has content")
	case errors.Is(err, store.ErrNotFound):
		return nil, matrixhttp.NotFound("The media ID has expired")
	case err != nil:
		return nil, err
	}
	return struct{}{}, nil
}

// defaultMediaWait and maxMediaWait bound how long a download waits for
// the content of a created media ID (timeout_ms).
const (
	defaultMediaWait = 20 * time.Second
	maxMediaWait     = 2 * time.Minute
	mediaPoll        = 250 * time.Millisecond
)

// loadMedia returns an uploaded local media with its content, waiting up to
// timeout_ms for a created one's content (504 M_NOT_YET_UPLOADED after).
func (s *Service) loadMedia(r *http.Request) (store.Media, error) {
	id, remote, err := s.mediaParams(r)
	if err != nil {
		return store.Media{}, err
	}
	if remote {
		return store.Media{}, matrixhttp.NotFound("Remote media is not available: this server does not federate yet")
	}
	waitMS, err := queryInt(r, "timeout_ms", defaultMediaWait.Milliseconds())
	if err != nil {
		return store.Media{}, err
	}
	wait := min(time.Duration(max(waitMS, 0))*time.Millisecond, maxMediaWait)
	ctx := r.Context()
	deadline := time.Now().Add(wait)
	for {
		m, err := s.store.Reader().MediaByID(ctx, id, true, s.now().UnixMilli())
		if errors.Is(err, store.ErrNotFound) {
			return store.Media{}, matrixhttp.NotFound("Media not found")
		} else if err != nil {
			return store.Media{}, err
		}
		if m.Uploaded {
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

// downloadMedia is GET /_matrix/client/v1/media/download/...
func (s *Service) downloadMedia(r *http.Request, _ *device) (any, error) {
	m, err := s.loadMedia(r)
	if err != nil {
		return nil, err
	}
	name := m.UploadName
	if n := chiParam(r, "fileName"); n != "" {
		name = n
	}
	return mediaResponse{contentType: m.ContentType, fileName: name, content: m.Content}, nil
}

// errFrozen answers the deprecated unauthenticated endpoints.
func errFrozen() error {
	return matrixhttp.NotFound("Unauthenticated media access is frozen: use /_matrix/client/v1/media")
}

// legacyDownload is GET /_matrix/media/{v3,r0}/download/...
func (s *Service) legacyDownload(r *http.Request, dev *device) (any, error) {
	if !s.cfg.Media.UnauthenticatedDownload {
		return nil, errFrozen()
	}
	return s.downloadMedia(r, dev)
}

// legacyThumbnail is GET /_matrix/media/{v3,r0}/thumbnail/...
func (s *Service) legacyThumbnail(r *http.Request, dev *device) (any, error) {
	if !s.cfg.Media.UnauthenticatedDownload {
		return nil, errFrozen()
	}
	return s.thumbnailMedia(r, dev)
}

// mediaResponse is a handler's answer that is content, not JSON.
type mediaResponse struct {
	contentType, fileName string
	content               []byte
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

func (m mediaResponse) write(w http.ResponseWriter) {
	ctype := m.contentType
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	base, _, _ := mime.ParseMediaType(ctype)
	disposition := "attachment"
	if inlineTypes[base] {
		disposition = "inline"
	}
	if m.fileName != "" {
		// RFC 6266 with RFC 5987's UTF-8 form, which keeps any name safe.
		disposition += "; filename*=utf-8''" + url.PathEscape(m.fileName)
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Length", strconv.Itoa(len(m.content)))
	h.Set("Content-Security-Policy", mediaCSP)
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	// Media never changes under its ID; authenticated, so private.
	h.Set("Cache-Control", "private, max-age=86400, immutable")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(m.content)
}

// thumbnailable are the image types thumbnails are made of.
var thumbnailable = map[string]bool{"image/jpeg": true, "image/png": true, "image/gif": true, "image/webp": true}

// maxThumbnailSide bounds the requested width and height.
const maxThumbnailSide = 4096

// thumbnailMedia is GET /_matrix/client/v1/media/thumbnail/...: a scaled or
// cropped copy, never smaller than asked (unless the image is) and never
// upscaled: an image no larger than asked is served as it is.
func (s *Service) thumbnailMedia(r *http.Request, _ *device) (any, error) {
	width, err := queryInt(r, "width", 0)
	if err != nil {
		return nil, err
	}
	height, err := queryInt(r, "height", 0)
	if err != nil {
		return nil, err
	}
	if width < 1 || height < 1 || width > maxThumbnailSide || height > maxThumbnailSide {
		return nil, matrixhttp.InvalidParam(fmt.Sprintf("width and height must be between 1 and %d", maxThumbnailSide))
	}
	method := r.URL.Query().Get("method")
	if method == "" {
		method = "scale"
	}
	if method != "scale" && method != "crop" {
		return nil, matrixhttp.InvalidParam("method must be crop or scale")
	}
	m, err := s.loadMedia(r)
	if err != nil {
		return nil, err
	}
	// Thumbnails are made in the spec's recommended sizes only, so one
	// image has at most five, whatever sizes clients ask for.
	w, h, method, ok := standardThumbnail(int(width), int(height), method)
	if !ok {
		return mediaResponse{contentType: m.ContentType, content: m.Content}, nil // larger than any: the original
	}
	width, height = int64(w), int64(h)
	ctx := r.Context()
	if t, err := s.store.Reader().MediaThumbnail(ctx, m.MediaID, int(width), int(height), method); err == nil {
		return mediaResponse{contentType: t.ContentType, content: t.Content}, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	base, _, _ := mime.ParseMediaType(m.ContentType)
	if !thumbnailable[base] {
		return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Cannot make a thumbnail of %q content", base)
	}
	t, same, err := makeThumbnail(m.Content, int(width), int(height), method, s.cfg.Media.MaxThumbnailPixels)
	if err != nil {
		return nil, err
	}
	if same {
		return mediaResponse{contentType: m.ContentType, content: m.Content}, nil
	}
	if err := s.store.PutMediaThumbnail(context.WithoutCancel(ctx), m.MediaID, int(width), int(height), method, t); err != nil {
		return nil, err
	}
	return mediaResponse{contentType: t.ContentType, content: t.Content}, nil
}

// thumbnailSizes are the spec's recommended thumbnail sizes, smallest
// first, by method.
var thumbnailSizes = map[string][][2]int{
	"crop":  {{32, 32}, {96, 96}},
	"scale": {{320, 240}, {640, 480}, {800, 600}},
}

// standardThumbnail returns the smallest recommended size at least as
// large as asked, by the asked method or else by scale; ok is false when
// the request is larger than all of them (the original is served).
func standardThumbnail(width, height int, method string) (int, int, string, bool) {
	for _, m := range []string{method, "scale"} {
		for _, sz := range thumbnailSizes[m] {
			if sz[0] >= width && sz[1] >= height {
				return sz[0], sz[1], m, true
			}
		}
	}
	return 0, 0, "", false
}

// makeThumbnail scales (or scales and crops) an image so that it covers
// width × height, keeping its aspect ratio; crop then cuts the middle
// width × height. same reports that the image is no larger than asked in
// both directions and is to be served as it is (never upscaled).
func makeThumbnail(content []byte, width, height int, method string, maxPixels int64) (t store.Thumbnail, same bool, err error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(content))
	if err != nil {
		return t, false, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "The content is not an image that can be read: %v", err)
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxPixels {
		return t, false, tooLarge("The image is too large to thumbnail")
	}
	if cfg.Width <= width && cfg.Height <= height {
		return t, true, nil
	}
	src, _, err := image.Decode(bytes.NewReader(content))
	if err != nil {
		return t, false, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "The image cannot be decoded: %v", err)
	}
	sw, sh := src.Bounds().Dx(), src.Bounds().Dy()
	// The smallest scale at which the image covers the box, at most 1.
	scale := min(max(float64(width)/float64(sw), float64(height)/float64(sh)), 1)
	dw, dh := max(int(float64(sw)*scale+0.5), 1), max(int(float64(sh)*scale+0.5), 1)
	scaled := image.NewRGBA(image.Rect(0, 0, dw, dh))
	xdraw.BiLinear.Scale(scaled, scaled.Bounds(), src, src.Bounds(), draw.Src, nil)
	var out image.Image = scaled
	if method == "crop" {
		cw, ch := min(width, dw), min(height, dh)
		x0, y0 := (dw-cw)/2, (dh-ch)/2
		out = scaled.SubImage(image.Rect(x0, y0, x0+cw, y0+ch))
	}
	var buf bytes.Buffer
	// PNG keeps transparency (PNG and GIF sources); photos go to JPEG.
	if format == "png" || format == "gif" {
		t.ContentType = "image/png"
		err = png.Encode(&buf, out)
	} else {
		t.ContentType = "image/jpeg"
		err = jpeg.Encode(&buf, out, &jpeg.Options{Quality: 85})
	}
	if err != nil {
		return t, false, fmt.Errorf("encode thumbnail: %w", err)
	}
	t.Content = buf.Bytes()
	return t, false, nil
}

// chiParam is an optional path parameter, unescaped ("" if absent).
func chiParam(r *http.Request, name string) string {
	v, err := pathParam(r, name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(v)
}

// quotaError turns store.ErrQuota into the spec's 403.
func (s *Service) quotaError(err error) error {
	if errors.Is(err, store.ErrQuota) {
		return matrixhttp.Forbidden(fmt.Sprintf("Your uploads would exceed your quota of %d bytes", s.cfg.Media.MaxUserTotal))
	}
	return err
}
