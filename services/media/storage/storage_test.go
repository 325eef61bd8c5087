package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/media/storage"
)

// errClientGone is what a reader fails with halfway (a client that went
// away mid-upload).
var errClientGone = errors.New("client went away")

// failingReader yields n bytes, then fails (calling cancel first, if
// set, as a request's context ends when its client hangs up).
type failingReader struct {
	n      int
	cancel context.CancelFunc
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		if f.cancel != nil {
			f.cancel()
		}
		return 0, errClientGone
	}
	k := min(len(p), f.n)
	for i := range k {
		p[i] = 'x'
	}
	f.n -= k
	return k, nil
}

// noLen hides a reader's type, so that a backend cannot learn its length.
type noLen struct{ r io.Reader }

func (n noLen) Read(p []byte) (int, error) { return n.r.Read(p) }

// contract checks what every Backend promises, with list returning the
// keys the backend holds (for "nothing is left behind").
func contract(t *testing.T, b storage.Backend, list func() []string) {
	ctx := context.Background()
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB: several S3 parts
	for _, c := range []struct {
		name string
		key  string
		data []byte
		size int64
	}{
		{"small, length known", "content/ab/small.1", []byte("hello"), 5},
		{"empty", "content/ab/empty.1", nil, 0},
		{"large, length unknown", "content/cd/large.1", big, -1},
		{"large, length known", "content/cd/large.2", big, int64(len(big))},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := b.Put(ctx, c.key, noLen{bytes.NewReader(c.data)}, c.size)
			if err != nil || n != int64(len(c.data)) {
				t.Fatalf("Put: %d, %v", n, err)
			}
			rc, err := b.Get(ctx, c.key)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, c.data) {
				t.Fatalf("Get: %d bytes (%v), want %d", len(got), err, len(c.data))
			}
		})
	}
	if _, err := b.Get(ctx, "content/zz/missing.1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get of a missing key: %v, want ErrNotFound", err)
	}
	// A reader that fails, with and without a known length, leaves
	// nothing behind.
	before := list()
	for _, size := range []int64{-1, 12 << 20} {
		_, err := b.Put(ctx, "content/ef/aborted.1", noLen{&failingReader{n: 6 << 20}}, size)
		if !errors.Is(err, errClientGone) {
			t.Errorf("Put from a failing reader (size %d): %v, want its error", size, err)
		}
	}
	// A client that hangs up: the request's context ends with the read.
	for _, size := range []int64{-1, 12 << 20} {
		cctx, cancel := context.WithCancel(ctx)
		_, err := b.Put(cctx, "content/ef/cancelled.1", noLen{&failingReader{n: 6 << 20, cancel: cancel}}, size)
		if err == nil {
			t.Errorf("Put whose context ended (size %d) succeeded", size)
		}
		cancel()
	}
	if after := list(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("a failed Put left objects: before %v, after %v", before, after)
	}
	if _, err := b.Get(ctx, "content/ef/aborted.1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get after a failed Put: %v, want ErrNotFound", err)
	}
	// Delete, twice.
	for range 2 {
		if err := b.Delete(ctx, "content/ab/small.1"); err != nil {
			t.Errorf("Delete: %v", err)
		}
	}
	if _, err := b.Get(ctx, "content/ab/small.1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	// Keys that could leave the store are refused.
	for _, k := range []string{"../x", "a/../../x", "/abs", "a//b", "a/./b", ""} {
		if _, err := b.Put(ctx, k, strings.NewReader("x"), 1); err == nil {
			t.Errorf("Put accepted key %q", k)
		}
	}
}

func TestFile(t *testing.T) {
	root := t.TempDir()
	b, err := storage.NewFile(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	contract(t, b, func() []string {
		var keys []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(root, p)
				keys = append(keys, filepath.ToSlash(rel))
			}
			return nil
		})
		return keys
	})
}

// A temporary file a dead process left behind is deleted when it is
// older than the given age; a young one (another replica's upload in
// progress) is kept.
func TestFileRemovesStaleTemporaryFiles(t *testing.T) {
	root := t.TempDir()
	if _, err := storage.NewFile(root, time.Hour); err != nil {
		t.Fatal(err)
	}
	old, young := filepath.Join(root, ".tmp", "upload-old"), filepath.Join(root, ".tmp", "upload-young")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(old, time.Now().Add(-2*time.Hour), time.Now().Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.NewFile(root, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary file: %v, want deleted", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("young temporary file: %v, want kept", err)
	}
}

// TestS3 runs the contract against a real S3-compatible server
// (versitygw), through the same minio-go client production uses.
func TestS3(t *testing.T) {
	srv := testkit.S3(t)
	ctx := context.Background()
	admin, err := minio.New(srv.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	const bucket = "myelin-media"
	if err := admin.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: srv.Region}); err != nil {
		t.Fatal(err)
	}
	b, err := storage.NewS3(storage.S3Options{
		Endpoint: srv.Endpoint, Insecure: true, Region: srv.Region, Bucket: bucket, Prefix: "test/",
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	contract(t, b, func() []string {
		var keys []string
		for o := range admin.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			keys = append(keys, o.Key)
		}
		// Aborted multipart uploads count as left behind too.
		for u := range admin.ListIncompleteUploads(ctx, bucket, "", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			keys = append(keys, "incomplete:"+u.Key)
		}
		return keys
	})
	// Objects live under the prefix.
	if _, err := admin.StatObject(ctx, bucket, "test/content/cd/large.1", minio.StatObjectOptions{}); err != nil {
		t.Errorf("object under the prefix: %v", err)
	}
	// A missing bucket fails Ping.
	nb, err := storage.NewS3(storage.S3Options{Endpoint: srv.Endpoint, Insecure: true, Region: srv.Region, Bucket: "nope",
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := nb.Ping(ctx); err == nil {
		t.Error("Ping of a missing bucket succeeded")
	}
}

// A multipart upload that a dead process left incomplete goes with Delete
// of its key.
func TestS3DeleteAbortsIncompleteUpload(t *testing.T) {
	srv := testkit.S3(t)
	ctx := context.Background()
	core, err := minio.NewCore(srv.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	const bucket = "myelin-media"
	if err := core.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: srv.Region}); err != nil {
		t.Fatal(err)
	}
	uploadID, err := core.NewMultipartUpload(ctx, bucket, "content/ab/dead.1", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := bytes.Repeat([]byte("x"), 5<<20)
	if _, err := core.PutObjectPart(ctx, bucket, "content/ab/dead.1", uploadID, 1, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}
	incomplete := func() int {
		n := 0
		for u := range core.ListIncompleteUploads(ctx, bucket, "", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			n++
		}
		return n
	}
	if n := incomplete(); n != 1 {
		t.Fatalf("%d incomplete uploads, want the dead one", n)
	}
	b, err := storage.NewS3(storage.S3Options{Endpoint: srv.Endpoint, Insecure: true, Region: srv.Region, Bucket: bucket,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "content/ab/dead.1"); err != nil {
		t.Fatal(err)
	}
	if n := incomplete(); n != 0 {
		t.Errorf("%d incomplete uploads after Delete", n)
	}
}
