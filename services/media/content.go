package media

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"

	"go.uber.org/zap"
)

// mediaIDPattern is what the spec allows in a media ID.
var mediaIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func randomBase64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

// newMediaID returns a fresh media ID (24 random URL-safe characters).
func newMediaID() string { return randomBase64(18) }

// shard spreads keys over directories by the media ID's first two
// characters (a directory of every file of a server gets slow).
func shard(mediaID string) string {
	if len(mediaID) < 2 {
		return "_" + mediaID
	}
	return mediaID[:2]
}

// contentKey is a fresh storage key for a media's content. Every upload
// gets its own key, so two uploads racing for one created media ID never
// write the same object, and the loser can delete its own.
func contentKey(mediaID string) string {
	return "content/" + shard(mediaID) + "/" + mediaID + "." + randomBase64(6)
}

// thumbnailKey is a fresh storage key for a thumbnail.
func thumbnailKey(mediaID string, width, height int, method string) string {
	return fmt.Sprintf("thumbnails/%s/%s/%dx%d-%s.%s", shard(mediaID), mediaID, width, height, method, randomBase64(6))
}

// errReadBody wraps a failure to read what is being stored (the client's
// request body, an import stream): not the storage's fault.
var errReadBody = errors.New("reading the content failed")

// putContent streams r to the storage under key, failing with ErrTooLarge
// once more than limit bytes came (limit < 0: none). The key is recorded
// as pending first, so that content a dying process leaves behind is
// found by the janitor; the caller's store write that names the key
// clears that record. On failure nothing is left.
func (s *Service) putContent(ctx context.Context, key string, r io.Reader, size, limit int64) (int64, error) {
	if err := s.store.AddPendingObject(ctx, key, s.now().UnixMilli()); err != nil {
		return 0, err
	}
	src := &sourceReader{r: r, left: limit}
	n, err := s.content.Put(ctx, key, src, size)
	if err != nil {
		s.discard(ctx, key)
		switch {
		case src.tooLarge:
			return n, ErrTooLarge
		case src.err != nil:
			return n, fmt.Errorf("%w: %w", errReadBody, src.err)
		}
		return n, err
	}
	return n, nil
}

// discard deletes content that no row will name, and its pending record
// (kept when the delete fails, so the janitor tries again).
func (s *Service) discard(ctx context.Context, key string) {
	ctx = context.WithoutCancel(ctx)
	if err := s.content.Delete(ctx, key); err != nil {
		s.log.Warn("deleting unused content failed; the janitor retries", zap.String("key", key), zap.Error(err))
		return
	}
	if err := s.store.RemovePendingObject(ctx, key); err != nil {
		s.log.Warn("forgetting deleted content failed", zap.String("key", key), zap.Error(err))
	}
}

// sourceReader counts what it passes on and fails once more than left
// bytes came (left < 0: no limit); it remembers why it failed.
type sourceReader struct {
	r        io.Reader
	left     int64
	tooLarge bool
	err      error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if s.tooLarge {
		return 0, ErrTooLarge
	}
	if s.left >= 0 && int64(len(p)) > s.left+1 {
		p = p[:s.left+1] // one byte past the limit tells an oversized upload
	}
	n, err := s.r.Read(p)
	if s.left >= 0 {
		if int64(n) > s.left {
			s.tooLarge = true
			return 0, ErrTooLarge
		}
		s.left -= int64(n)
	}
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}
