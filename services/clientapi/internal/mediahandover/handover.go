// Package mediahandover hands the media stored by the client-API before
// the media service existed over to the media service.
package mediahandover

// The hand-over of media stored by the client-API before the media service
// existed (store/media_legacy.go). The media service never reads this
// schema, so the client-API sends the rows through its ImportMedia RPC:
// first every uploaded row's header alone (content_follows), so that the
// media service knows every file at once and a download waits for the
// content rather than finding nothing; then each row with its content in
// chunks, deleting the row once the media service has answered, and
// finally it drops the old table when it is empty. It runs in the
// background from the start of Run until the table is gone, and again
// after any failure (the media service may not be up yet); every replica
// takes part, each row handed over by one of them at a time.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

const (
	// handoverChunk is the content sent per ImportMedia message.
	handoverChunk = 1 << 20
	// handoverFileTimeout bounds the hand-over of one file.
	handoverFileTimeout = 10 * time.Minute
	// handoverMaxBackoff caps the wait after a failure.
	handoverMaxBackoff = time.Minute
	// handoverLogEvery is how often progress is logged.
	handoverLogEvery = 10 * time.Second
)

// Handover moves the old media to the media service.
type Handover struct {
	store *store.Store
	// media receives the old media rows; nil leaves them where they are.
	media mediav1.MediaServiceClient
	log   *zap.Logger
	now   func() time.Time
}

// New returns the hand-over of st's old media to media (nil: none).
func New(st *store.Store, media mediav1.MediaServiceClient, log *zap.Logger) *Handover {
	return &Handover{store: st, media: media, log: log, now: time.Now}
}

// Run moves the old media table's rows to the media service and
// drops the table; it returns when the table is gone or ctx ends. Errors
// are logged and retried, never returned: the rest of the client-API
// works without it.
func (s *Handover) Run(ctx context.Context) error {
	if s.media == nil {
		return nil
	}
	exists, err := s.store.HasLegacyMedia(ctx)
	for err != nil {
		s.log.Warn("media hand-over: checking for old media failed; retrying", zap.Error(err))
		if !sleepCtx(ctx, 5*time.Second) {
			return nil
		}
		exists, err = s.store.HasLegacyMedia(ctx)
	}
	if !exists {
		return nil
	}
	rows, size, err := s.store.LegacyMediaCount(ctx)
	if err != nil && ctx.Err() == nil {
		s.log.Warn("media hand-over: counting old media failed", zap.Error(err))
	}
	s.log.Info("media hand-over: moving the client-API's stored media to the media service",
		zap.Int64("files", rows), zap.Int64("bytes", size))
	if !s.announceLegacyMedia(ctx) {
		return nil
	}
	s.log.Info("media hand-over: the media service knows every file; moving the content")
	var moved, movedBytes, expired int64
	backoff := time.Second
	lastLog := time.Now()
	for ctx.Err() == nil {
		var sent bool
		var size int64
		ok, err := s.store.HandOverLegacyMedia(ctx, s.now(), func(ctx context.Context, m store.LegacyMedia, read store.ReadChunk) error {
			if err := s.importMedia(ctx, m, read); err != nil {
				return err
			}
			sent, size = true, m.Size
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("media hand-over: a file failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			backoff = min(backoff*2, handoverMaxBackoff)
			continue
		}
		backoff = time.Second
		if ok {
			if !sent {
				expired++ // a created media ID that expired unused: deleted
				continue
			}
			moved++
			movedBytes += size
			if time.Since(lastLog) >= handoverLogEvery {
				s.log.Info("media hand-over: progress", zap.Int64("files", moved), zap.Int64("bytes", movedBytes), zap.Int64("of_files", rows))
				lastLog = time.Now()
			}
			continue
		}
		// Nothing left for this replica: drop the table once every
		// replica's hand-overs are done.
		dropped, err := s.store.DropLegacyMedia(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("media hand-over: dropping the old table failed; retrying", zap.Error(err))
		}
		if dropped {
			s.log.Info("media hand-over: done; the old media table is dropped",
				zap.Int64("files", moved), zap.Int64("bytes", movedBytes), zap.Int64("expired_unused_deleted", expired))
			return nil
		}
		if !sleepCtx(ctx, time.Second) {
			return nil
		}
	}
	return nil
}

// announceLegacyMedia sends every uploaded old row's header with
// content_follows, page by page, retrying failures; false when ctx ended.
func (s *Handover) announceLegacyMedia(ctx context.Context) bool {
	after := ""
	backoff := time.Second
	for ctx.Err() == nil {
		page, err := s.store.LegacyUploads(ctx, after, 500)
		if err == nil && len(page) == 0 {
			return true
		}
		for _, m := range page {
			if err = s.announceMedia(ctx, m); err != nil {
				break
			}
			after = m.MediaID
		}
		if err == nil {
			backoff = time.Second
			continue
		}
		if ctx.Err() != nil {
			return false
		}
		s.log.Warn("media hand-over: announcing a file failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
		if !sleepCtx(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, handoverMaxBackoff)
	}
	return false
}

// announceMedia sends one uploaded old row's header with content_follows.
func (s *Handover) announceMedia(ctx context.Context, m store.LegacyMedia) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := s.media.ImportMedia(ctx)
	if err != nil {
		return fmt.Errorf("announce %s: %w", m.MediaID, err)
	}
	h := legacyHeader(m)
	h.ContentFollows = true
	if err := stream.Send(&mediav1.ImportMediaRequest{Part: &mediav1.ImportMediaRequest_Header{Header: h}}); err != nil {
		return importFailed(stream, m, err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return fmt.Errorf("announce %s: %w", m.MediaID, err)
	}
	return nil
}

func legacyHeader(m store.LegacyMedia) *mediav1.MediaHeader {
	return &mediav1.MediaHeader{
		MediaId: m.MediaID, Uploader: m.Uploader, CreatedTs: m.CreatedTS, UploadedTs: m.UploadedTS,
		UnusedExpiresTs: m.ExpiresTS, ContentType: m.ContentType, UploadName: m.UploadName, Size: m.Size,
	}
}

// importMedia sends one old row through ImportMedia: the header, then the
// content in chunks. It fails unless the media service stored it (or had
// it already).
func (s *Handover) importMedia(ctx context.Context, m store.LegacyMedia, read store.ReadChunk) error {
	ctx, cancel := context.WithTimeout(ctx, handoverFileTimeout)
	defer cancel()
	stream, err := s.media.ImportMedia(ctx)
	if err != nil {
		return fmt.Errorf("import %s: %w", m.MediaID, err)
	}
	if err := stream.Send(&mediav1.ImportMediaRequest{Part: &mediav1.ImportMediaRequest_Header{Header: legacyHeader(m)}}); err != nil {
		return importFailed(stream, m, err)
	}
	if m.UploadedTS != 0 {
		for off := int64(0); off < m.Size; off += handoverChunk {
			chunk, err := read(ctx, off, min(handoverChunk, m.Size-off))
			if err != nil {
				return fmt.Errorf("import %s: read content: %w", m.MediaID, err)
			}
			if len(chunk) == 0 {
				return fmt.Errorf("import %s: content shorter than its size %d", m.MediaID, m.Size)
			}
			if err := stream.Send(&mediav1.ImportMediaRequest{Part: &mediav1.ImportMediaRequest_Chunk{Chunk: chunk}}); err != nil {
				return importFailed(stream, m, err)
			}
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return fmt.Errorf("import %s: %w", m.MediaID, err)
	}
	return nil
}

// importFailed settles a failed Send: io.EOF from Send means the server
// ended the call, with its answer or error from CloseAndRecv. An answer
// before all of the content is the media service saying it has the file
// already (ImportMedia is idempotent): a success.
func importFailed(stream mediav1.MediaService_ImportMediaClient, m store.LegacyMedia, err error) error {
	if !errors.Is(err, io.EOF) {
		return fmt.Errorf("import %s: %w", m.MediaID, err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("import %s: %w", m.MediaID, err)
	}
	if !resp.GetAlreadyStored() {
		return fmt.Errorf("import %s: the media service answered before taking all of the content", m.MediaID)
	}
	return nil
}

// sleepCtx waits d or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
