package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// tmpDir is the File backend's directory of uploads in progress, below
// its root; objects become visible by a rename out of it.
const tmpDir = ".tmp"

// File keeps objects as files below a directory. A Put writes a
// temporary file, syncs it and renames it into place, so an object is
// either whole or absent.
type File struct {
	root string
}

// NewFile opens (creating if needed) the directory root, and deletes
// temporary files older than staleAfter that a process which died during
// an upload left behind (0 keeps them).
func NewFile(root string, staleAfter time.Duration) (*File, error) {
	if root == "" {
		return nil, errors.New("storage: the file backend needs a directory")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o750); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	f := &File{root: abs}
	if staleAfter > 0 {
		f.removeStaleTemp(staleAfter)
	}
	return f, nil
}

func (f *File) path(key string) (string, error) {
	if !validKey(key) || strings.HasPrefix(key, tmpDir+"/") {
		return "", errBadKey
	}
	return filepath.Join(f.root, filepath.FromSlash(key)), nil
}

// Put implements Backend.
func (f *File) Put(ctx context.Context, key string, r io.Reader, _ int64) (n int64, err error) {
	dst, err := f.path(key)
	if err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(filepath.Join(f.root, tmpDir), "upload-*")
	if err != nil {
		return 0, fmt.Errorf("storage: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	n, err = io.Copy(tmp, ctxReader{ctx, r})
	if err != nil {
		return n, err
	}
	if err = tmp.Sync(); err != nil {
		return n, fmt.Errorf("storage: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return n, fmt.Errorf("storage: %w", err)
	}
	if err = os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return n, fmt.Errorf("storage: %w", err)
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return n, fmt.Errorf("storage: %w", err)
	}
	return n, nil
}

// Get implements Backend.
func (f *File) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := f.path(key)
	if err != nil {
		return nil, err
	}
	file, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	return file, nil
}

// Delete implements Backend.
func (f *File) Delete(_ context.Context, key string) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("storage: %w", err)
	}
	return nil
}

// Ping implements Backend: the directory is there.
func (f *File) Ping(context.Context) error {
	if _, err := os.Stat(filepath.Join(f.root, tmpDir)); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return nil
}

// removeStaleTemp deletes temporary files older than age (uploads of a
// process that died; another replica's uploads in progress are younger).
func (f *File) removeStaleTemp(age time.Duration) {
	dir := filepath.Join(f.root, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > age {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
