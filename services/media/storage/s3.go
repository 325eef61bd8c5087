package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options configures an S3-compatible bucket.
type S3Options struct {
	Endpoint        string // host:port
	Insecure        bool   // plain HTTP
	Region          string
	Bucket          string
	Prefix          string // put before every key
	AccessKeyID     string
	SecretAccessKey string
	PathStyle       bool
	// PartSize is the multipart part size for content of unknown length;
	// such an upload holds one part in memory.
	PartSize int64
}

// S3 keeps objects in an S3-compatible bucket through minio-go. Content of
// known length goes up in one streamed PUT (or in parts for large
// objects); content of unknown length goes up as a multipart upload,
// which is aborted when the reader fails, so nothing is left.
type S3 struct {
	client *minio.Client
	opts   S3Options
}

// NewS3 returns the backend; it does not contact the server (Ping does).
func NewS3(opts S3Options) (*S3, error) {
	lookup := minio.BucketLookupDNS
	if opts.PathStyle {
		lookup = minio.BucketLookupPath
	}
	var creds *credentials.Credentials
	if opts.AccessKeyID != "" {
		creds = credentials.NewStaticV4(opts.AccessKeyID, opts.SecretAccessKey, "")
	} else {
		// The usual AWS environment, shared files and instance roles.
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	client, err := minio.New(opts.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       !opts.Insecure,
		Region:       opts.Region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("storage: s3 client: %w", err)
	}
	return &S3{client: client, opts: opts}, nil
}

func (s *S3) name(key string) (string, error) {
	if !validKey(key) {
		return "", errBadKey
	}
	return s.opts.Prefix + key, nil
}

// Put implements Backend.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) (int64, error) {
	name, err := s.name(key)
	if err != nil {
		return 0, err
	}
	// Errors of r itself come back wrapped or as they are, depending on
	// the path minio-go takes; remember the first so callers can tell a
	// failed client from a failed server.
	rr := &recordingReader{r: r}
	info, err := s.client.PutObject(ctx, s.opts.Bucket, name, rr, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    uint64(s.opts.PartSize),
	})
	if rr.err != nil {
		// The reader failed: a single PUT was never completed and a
		// multipart upload was aborted, so nothing is stored; delete
		// anyway in case the server kept a complete object of a reader
		// that failed after its last byte.
		_ = s.client.RemoveObject(context.WithoutCancel(ctx), s.opts.Bucket, name, minio.RemoveObjectOptions{})
		return rr.n, rr.err
	}
	if err != nil {
		return rr.n, fmt.Errorf("storage: s3 put: %w", err)
	}
	return info.Size, nil
}

// Get implements Backend. The object's first bytes are requested before it
// returns, so a missing object is ErrNotFound here and not at the first
// Read.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	name, err := s.name(key)
	if err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.opts.Bucket, name, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.mapErr(err)
	}
	if _, err := obj.Stat(); err != nil {
		_ = obj.Close()
		return nil, s.mapErr(err)
	}
	return obj, nil
}

// Delete implements Backend. It also aborts a multipart upload of the key
// that a process which died mid-upload left behind (keys are never reused,
// so no live upload has it).
func (s *S3) Delete(ctx context.Context, key string) error {
	name, err := s.name(key)
	if err != nil {
		return err
	}
	if err := s.client.RemoveIncompleteUpload(ctx, s.opts.Bucket, name); err != nil && !errors.Is(s.mapErr(err), ErrNotFound) {
		return fmt.Errorf("storage: s3 abort upload: %w", err)
	}
	if err := s.client.RemoveObject(ctx, s.opts.Bucket, name, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.mapErr(err), ErrNotFound) {
			return nil
		}
		return fmt.Errorf("storage: s3 delete: %w", err)
	}
	return nil
}

// Ping implements Backend: the bucket exists.
func (s *S3) Ping(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.opts.Bucket)
	if err != nil {
		return fmt.Errorf("storage: s3: %w", err)
	}
	if !ok {
		return fmt.Errorf("storage: s3 bucket %q does not exist", s.opts.Bucket)
	}
	return nil
}

func (s *S3) mapErr(err error) error {
	resp := minio.ToErrorResponse(err)
	if resp.StatusCode == http.StatusNotFound || resp.Code == "NoSuchKey" {
		return ErrNotFound
	}
	return fmt.Errorf("storage: s3: %w", err)
}

// recordingReader remembers the first error of the reader it wraps and
// the bytes read.
type recordingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += int64(n)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}
