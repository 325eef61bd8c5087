// Package storage holds the media service's content stores: where the
// bytes of uploads and thumbnails go (their metadata is in PostgreSQL,
// package store). Two backends implement Backend: a directory (File) and
// an S3-compatible bucket (S3). Content streams in and out; neither
// backend reads a whole object into memory.
package storage

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound: no object under that key.
var ErrNotFound = errors.New("object not found")

// Backend stores objects by key. Keys are relative slash-separated paths
// made of [A-Za-z0-9_.-] segments, chosen by the media service.
type Backend interface {
	// Put stores everything r yields under key, replacing nothing: keys
	// are never reused. size is the content's length if known, else -1.
	// It returns the bytes written. When it fails, including when r fails
	// (a client that went away, an upload over the size cap), nothing is
	// left under key.
	Put(ctx context.Context, key string, r io.Reader, size int64) (int64, error)
	// Get opens an object for reading (ErrNotFound if there is none).
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Delete removes an object; a missing one is not an error.
	Delete(ctx context.Context, key string) error
	// Ping checks that the storage answers (readiness).
	Ping(ctx context.Context) error
}

// validKey reports whether key is a key the media service makes.
func validKey(key string) bool {
	if key == "" || key[0] == '/' || key[len(key)-1] == '/' {
		return false
	}
	seg := 0
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '/':
			if seg == 0 {
				return false
			}
			seg = 0
			continue
		case c == '.':
			if seg == 0 && (i+1 == len(key) || key[i+1] == '/' || key[i+1] == '.') {
				return false // "." and ".." segments
			}
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
		seg++
	}
	return true
}

// errBadKey is returned for a key validKey refuses.
var errBadKey = errors.New("storage: invalid object key")
