package media

import (
	"context"
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/services/media/store"
)

// importMedia stores a media item another service held (ImportMedia):
// the content streams from r to the storage, then the row is stored.
// already is true when the media ID was stored before; then r is not
// read at all. Idempotent: a retry after any failure is safe.
func (s *Service) importMedia(ctx context.Context, m store.Media, r io.Reader) (already bool, err error) {
	if err := s.checkImport(m); err != nil {
		return false, err
	}
	if exists, err := s.store.HasMedia(ctx, m.MediaID); err != nil {
		return false, err
	} else if exists {
		return true, nil
	}
	if m.Uploaded() {
		m.StorageKey = contentKey(m.MediaID)
		n, err := s.putContent(ctx, m.StorageKey, r, m.Size, m.Size)
		if err != nil {
			return false, fmt.Errorf("import %s: %w", m.MediaID, err)
		}
		if n != m.Size {
			s.discard(ctx, m.StorageKey)
			return false, fmt.Errorf("%w: %s: %d bytes of content, the header says %d", ErrBadRequest, m.MediaID, n, m.Size)
		}
	} else if n, _ := r.Read(make([]byte, 1)); n != 0 {
		return false, fmt.Errorf("%w: %s: content for a media ID without upload", ErrBadRequest, m.MediaID)
	}
	stored, err := s.store.ImportMedia(ctx, m)
	if err != nil {
		if m.Uploaded() {
			s.discard(ctx, m.StorageKey)
		}
		return false, err
	}
	if !stored {
		// Imported concurrently by another call.
		if m.Uploaded() {
			s.discard(ctx, m.StorageKey)
		}
		return true, nil
	}
	s.log.Debug("imported media", zap.String("media_id", m.MediaID), zap.Int64("size", m.Size))
	return false, nil
}

// checkImport validates an import header.
func (s *Service) checkImport(m store.Media) error {
	_, server, err := id.UserID(m.Uploader).Parse()
	switch {
	case !mediaIDPattern.MatchString(m.MediaID):
		return fmt.Errorf("%w: media_id %q", ErrBadRequest, m.MediaID)
	case err != nil || server != s.serverName:
		return fmt.Errorf("%w: uploader %q is not a local user", ErrBadRequest, m.Uploader)
	case m.CreatedTS <= 0 || m.UploadedTS < 0 || m.Size < 0:
		return fmt.Errorf("%w: %s: bad times or size", ErrBadRequest, m.MediaID)
	case !m.Uploaded() && (m.ExpiresTS <= 0 || m.Size != 0):
		return fmt.Errorf("%w: %s: a created media ID needs unused_expires_ts and no size", ErrBadRequest, m.MediaID)
	case len(m.UploadName) > 255 || strings.ContainsRune(m.ContentType, '\n'):
		return fmt.Errorf("%w: %s: bad content type or name", ErrBadRequest, m.MediaID)
	}
	return nil
}
