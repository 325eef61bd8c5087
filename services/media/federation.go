package media

// Federation media (server-server API v1.11): other homeservers download
// this server's content, and thumbnails of it, from
// /_matrix/federation/v1/media/download/{mediaId} and .../thumbnail/
// {mediaId}, with X-Matrix authentication (pkg/federation), answered as
// multipart/mixed: a JSON metadata part ({}) and the content. The media
// service serves them itself, on the federation listener (and, when
// federation is on, on its HTTP listener, where the edge's federation
// listener forwards them in the split shape): it owns the content.

import (
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/media/store"
)

// FederationPrefix is the path prefix of federation media.
const FederationPrefix = "/_matrix/federation/v1/media/"

// mountFederation mounts the federation media routes on r behind X-Matrix
// authentication (nothing when the service has no authenticator, i.e.
// federation is off).
func (s *Service) mountFederation(r chi.Router) {
	if s.fedAuth == nil {
		return
	}
	r.Group(func(r chi.Router) {
		r.Use(s.fedAuth.Middleware)
		r.Get(FederationPrefix+"download/{mediaId}", s.federationHandler(func(req *http.Request, m store.Media) (any, error) {
			return s.openContent(req.Context(), m.StorageKey, m.ContentType, m.UploadName, m.Size)
		}))
		r.Get(FederationPrefix+"thumbnail/{mediaId}", s.federationHandler(func(req *http.Request, m store.Media) (any, error) {
			return s.thumbnail(req, &m)
		}))
	})
}

// federationHandler loads the path's local media and writes what serve
// makes of it as multipart/mixed.
func (s *Service) federationHandler(serve func(*http.Request, store.Media) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := url.PathUnescape(chi.URLParam(r, "mediaId"))
		if err != nil || !mediaIDPattern.MatchString(id) {
			matrixhttp.WriteError(w, matrixhttp.NotFound("Media not found"))
			return
		}
		m, err := s.waitMedia(r, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		resp, err := serve(r, m)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		cr, ok := resp.(*contentResponse)
		if !ok {
			s.writeError(w, r, matrixhttp.Unknown("No content"))
			return
		}
		s.writeMultipart(w, r, cr)
	}
}

// writeMultipart writes the spec's two parts: the metadata ({}) and the
// content with its Content-Type and Content-Disposition.
func (s *Service) writeMultipart(w http.ResponseWriter, r *http.Request, c *contentResponse) {
	defer c.body.Close()
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", mime.FormatMediaType("multipart/mixed", map[string]string{"boundary": mw.Boundary()}))
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err == nil {
		_, err = meta.Write([]byte("{}"))
	}
	if err != nil {
		return
	}
	ctype, disposition := contentHeaders(c)
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {ctype}, "Content-Disposition": {disposition}})
	if err != nil {
		return
	}
	if n, err := io.Copy(part, c.body); err != nil && r.Context().Err() == nil {
		s.log.Error("streaming content failed", zap.Int64("sent", n), zap.Int64("size", c.size), zap.Error(err))
		return
	}
	_ = mw.Close()
}
