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
// the content streams from r to the storage, then the row is stored. A
// header with content_follows only announces an uploaded item; the call
// that brings its content completes it. already is true when there was
// nothing to do; then the content is not read. Idempotent: a retry after any
// failure is safe.
func (s *Service) importMedia(ctx context.Context, m store.Media, contentFollows bool, r io.Reader) (already bool, err error) {
	if err := s.checkImport(m, contentFollows); err != nil {
		return false, err
	}
	withContent := m.Uploaded() && !contentFollows
	if !withContent {
		if n, _ := r.Read(make([]byte, 1)); n != 0 {
			return false, fmt.Errorf("%w: %s: content in a call that brings none", ErrBadRequest, m.MediaID)
		}
	}
	exists, awaiting, err := s.store.ImportState(ctx, m.MediaID)
	if err != nil {
		return false, err
	}
	if exists && (contentFollows || !awaiting) {
		return true, nil
	}
	if withContent {
		m.StorageKey = contentKey(m.MediaID)
		n, err := s.putContent(ctx, m.StorageKey, r, m.Size, m.Size)
		if err != nil {
			return false, fmt.Errorf("import %s: %w", m.MediaID, err)
		}
		if n != m.Size {
			s.discard(ctx, m.StorageKey)
			return false, fmt.Errorf("%w: %s: %d bytes of content, the header says %d", ErrBadRequest, m.MediaID, n, m.Size)
		}
	}
	stored, err := s.store.ImportMedia(ctx, m)
	if err != nil {
		if m.Stored() {
			s.discard(ctx, m.StorageKey)
		}
		return false, err
	}
	if !stored {
		// Imported concurrently by another call, or the announced row
		// differs from this one (uploader or size): keep what is there.
		if m.Stored() {
			s.discard(ctx, m.StorageKey)
		}
		return true, nil
	}
	s.log.Debug("imported media", zap.String("media_id", m.MediaID), zap.Int64("size", m.Size), zap.Bool("announced_only", contentFollows))
	return false, nil
}

// checkImport validates an import header.
func (s *Service) checkImport(m store.Media, contentFollows bool) error {
	_, server, err := id.UserID(m.Uploader).Parse()
	switch {
	case !mediaIDPattern.MatchString(m.MediaID):
		return fmt.Errorf("%w: media_id %q", ErrBadRequest, m.MediaID)
	case err != nil || server != s.serverName:
		return fmt.Errorf("%w: uploader %q is not a local user", ErrBadRequest, m.Uploader)
	case m.CreatedTS <= 0 || m.UploadedTS < 0 || m.Size < 0:
		return fmt.Errorf("%w: %s: bad times or size", ErrBadRequest, m.MediaID)
	case !m.Uploaded() && (m.ExpiresTS <= 0 || m.Size != 0 || contentFollows):
		return fmt.Errorf("%w: %s: a created media ID needs unused_expires_ts, no size and no content to follow", ErrBadRequest, m.MediaID)
	case len(m.UploadName) > 255 || strings.ContainsRune(m.ContentType, '\n'):
		return fmt.Errorf("%w: %s: bad content type or name", ErrBadRequest, m.MediaID)
	}
	return nil
}
