package media_test

import (
	"context"
	"slices"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/media"
)

// TestMediaS3 runs the content repository's behaviour with the S3 backend
// against a real S3-compatible server (versitygw, started by the test;
// make test builds it), configured as an operator would: endpoint, bucket,
// credentials, path-style addressing.
func TestMediaS3(t *testing.T) {
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
	s := startStack(t, func(cfg *myelin.Config) {
		cfg.Media.MaxUploadSize = 1 << 20
		cfg.Media.Storage = media.StorageConfig{Backend: media.BackendS3, S3: media.S3Config{
			Endpoint: srv.Endpoint, Insecure: true, Region: srv.Region, Bucket: bucket, Prefix: "media/",
			AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20,
		}}
	})
	exerciseMedia(t, s, func(t *testing.T) []string {
		var keys []string
		for o := range admin.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			keys = append(keys, o.Key)
		}
		for u := range admin.ListIncompleteUploads(ctx, bucket, "", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			keys = append(keys, "incomplete upload: "+u.Key)
		}
		slices.Sort(keys)
		return keys
	})
}
