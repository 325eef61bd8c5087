package media

import (
	"errors"
	"fmt"
	"mime"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/media/store"
)

func (s *Service) contentURI(mediaID string) string {
	return "mxc://" + s.serverName + "/" + mediaID
}

// mediaConfig is GET /media/config.
func (s *Service) mediaConfig(*http.Request, *caller) (any, error) {
	return map[string]any{"m.upload.size": s.cfg.MaxUploadSize}, nil
}

// uploadMeta reads an upload's Content-Type header and filename
// parameter, and refuses a declared length over max_upload_size before
// anything is read.
func (s *Service) uploadMeta(r *http.Request) (store.Media, error) {
	if r.ContentLength > s.cfg.MaxUploadSize {
		return store.Media{}, s.errTooLarge()
	}
	ctype := r.Header.Get("Content-Type")
	if ctype != "" {
		// Go's server refuses control bytes in headers itself (a Matrix
		// error through matrixhttp.MatrixErrorsListener); bytes above
		// 0x7F pass it, and no store holds them unless they are UTF-8.
		if err := matrixhttp.CheckText(ctype); err != nil {
			return store.Media{}, matrixhttp.InvalidParam("Content-Type: " + err.Error())
		}
		if _, _, err := mime.ParseMediaType(ctype); err != nil {
			return store.Media{}, matrixhttp.InvalidParam("Content-Type is not a media type")
		}
	}
	name := r.URL.Query().Get("filename")
	if len(name) > 255 {
		return store.Media{}, matrixhttp.InvalidParam("filename is longer than 255 bytes")
	}
	return store.Media{ContentType: ctype, UploadName: name}, nil
}

func (s *Service) errTooLarge() error {
	return tooLarge(fmt.Sprintf("Uploads are limited to %d bytes", s.cfg.MaxUploadSize))
}

func (s *Service) errQuota() error {
	return matrixhttp.Forbidden(fmt.Sprintf("Your uploads would exceed your quota of %d bytes", s.cfg.MaxUserTotal))
}

// checkQuotaEarly refuses an upload whose declared length cannot fit the
// uploader's quota, before it is streamed (the binding check is made
// when the row is stored).
func (s *Service) checkQuotaEarly(r *http.Request, c *caller) error {
	if s.cfg.MaxUserTotal <= 0 || r.ContentLength < 0 {
		return nil
	}
	used, err := s.store.UsedBytes(r.Context(), string(c.UserID))
	if err != nil {
		return err
	}
	if used+r.ContentLength > s.cfg.MaxUserTotal {
		return s.errQuota()
	}
	return nil
}

// receive streams the request body into the storage under key.
func (s *Service) receive(r *http.Request, key string) (int64, error) {
	n, err := s.putContent(r.Context(), key, r.Body, r.ContentLength, s.cfg.MaxUploadSize)
	switch {
	case errors.Is(err, ErrTooLarge):
		return 0, s.errTooLarge()
	case errors.Is(err, errReadBody):
		return 0, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN", "Reading the upload failed: %v", err)
	}
	return n, err
}

// uploadMedia is POST /media/v3/upload: the body streams to the storage,
// then the row is stored (under the uploader's quota).
func (s *Service) uploadMedia(r *http.Request, c *caller) (any, error) {
	m, err := s.uploadMeta(r)
	if err != nil {
		return nil, err
	}
	if err := s.checkQuotaEarly(r, c); err != nil {
		return nil, err
	}
	m.MediaID, m.Uploader = newMediaID(), string(c.UserID)
	m.StorageKey = contentKey(m.MediaID)
	if m.Size, err = s.receive(r, m.StorageKey); err != nil {
		return nil, err
	}
	m.UploadedTS = s.now().UnixMilli()
	if err := s.store.PutMedia(r.Context(), m, s.cfg.MaxUserTotal); err != nil {
		s.discard(r.Context(), m.StorageKey)
		if errors.Is(err, store.ErrQuota) {
			return nil, s.errQuota()
		}
		return nil, err
	}
	return map[string]string{"content_uri": s.contentURI(m.MediaID)}, nil
}

// createMedia is POST /media/v1/create: a media ID whose content comes
// later, through uploadCreatedMedia.
func (s *Service) createMedia(r *http.Request, c *caller) (any, error) {
	id := newMediaID()
	now := s.now()
	expires := now.Add(s.cfg.CreateExpiry)
	ok, err := s.store.CreateMedia(r.Context(), id, string(c.UserID), now.UnixMilli(), expires.UnixMilli(), s.cfg.MaxPendingCreates)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, matrixhttp.Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many media IDs waiting for their content")
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

// uploadCreatedMedia is PUT /media/v3/upload/{serverName}/{mediaId}: 403
// for another user's media ID, 409 M_CANNOT_OVERWRITE_MEDIA when it has
// content already (checked before and after streaming the body).
func (s *Service) uploadCreatedMedia(r *http.Request, c *caller) (any, error) {
	id, remote, err := s.mediaParams(r)
	if err != nil {
		return nil, err
	}
	if remote {
		return nil, matrixhttp.NotFound("Media IDs are created by this server only")
	}
	now := s.now()
	existing, err := s.store.MediaByID(r.Context(), id, now.UnixMilli())
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("Unknown media ID")
	} else if err != nil {
		return nil, err
	}
	if existing.Uploader != string(c.UserID) {
		return nil, matrixhttp.Forbidden("This media ID was created by another user")
	}
	if existing.Uploaded() {
		return nil, errOverwrite()
	}
	m, err := s.uploadMeta(r)
	if err != nil {
		return nil, err
	}
	if err := s.checkQuotaEarly(r, c); err != nil {
		return nil, err
	}
	m.MediaID, m.Uploader, m.StorageKey = id, string(c.UserID), contentKey(id)
	if m.Size, err = s.receive(r, m.StorageKey); err != nil {
		return nil, err
	}
	m.UploadedTS = s.now().UnixMilli()
	err = s.store.UploadCreated(r.Context(), m, s.cfg.MaxUserTotal)
	if err != nil {
		s.discard(r.Context(), m.StorageKey)
	}
	switch {
	case errors.Is(err, store.ErrQuota):
		return nil, s.errQuota()
	case errors.Is(err, store.ErrMediaExists):
		return nil, errOverwrite()
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrExpired):
		return nil, matrixhttp.NotFound("The media ID has expired")
	case err != nil:
		return nil, err
	}
	return struct{}{}, nil
}

func errOverwrite() error {
	return matrixhttp.Errorf(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "This media already has content")
}
