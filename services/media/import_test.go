package media_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
)

// importOne streams one media item to ImportMedia: the header, then the
// content in chunks of chunk bytes.
func importOne(t *testing.T, c mediav1.MediaServiceClient, h *mediav1.MediaHeader, content []byte, chunk int) (*mediav1.ImportMediaResponse, error) {
	t.Helper()
	stream, err := c.ImportMedia(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	send := func(m *mediav1.ImportMediaRequest) error {
		if err := stream.Send(m); err != nil && err != io.EOF {
			return err
		}
		return nil
	}
	if h != nil {
		if err := send(&mediav1.ImportMediaRequest{Part: &mediav1.ImportMediaRequest_Header{Header: h}}); err != nil {
			return nil, err
		}
	}
	for off := 0; off < len(content); off += chunk {
		if err := send(&mediav1.ImportMediaRequest{Part: &mediav1.ImportMediaRequest_Chunk{Chunk: content[off:min(off+chunk, len(content))]}}); err != nil {
			return nil, err
		}
	}
	return stream.CloseAndRecv()
}

// ImportMedia over the process's real gRPC listener: content in chunks
// lands in the storage and downloads whole; a repeat is answered
// already_stored and changes nothing; a created media ID keeps waiting for
// its owner's upload; bad headers and content that does not match its
// size are refused and leave nothing behind.
func TestImportMedia(t *testing.T) {
	s := startStack(t, func(cfg *myelin.Config) { cfg.Media.MaxUploadSize = 1 << 20 })
	hs := s.URL()
	ctx := context.Background()
	conn, err := rpc.Dial(s.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := mediav1.NewMediaServiceClient(conn)
	alice := newUser(t, hs, "alice")
	server := s.Config.ServerName
	now := time.Now().UnixMilli()

	// Larger than max_upload_size: imports are what the server held
	// already, not new uploads.
	big := bytes.Repeat([]byte("imported media "), 200_000) // ~3 MiB
	h := &mediav1.MediaHeader{MediaId: "importedBig", Uploader: alice.UserID.String(), CreatedTs: now - 1000, UploadedTs: now - 1000,
		ContentType: "text/plain", UploadName: "big.txt", Size: int64(len(big))}
	resp, err := importOne(t, c, h, big, 1<<20)
	if err != nil || resp.GetAlreadyStored() {
		t.Fatalf("import: %v, %v", resp, err)
	}
	objects := listFiles(s.Config.DataDir + "/media")
	stored := len(objects(t))
	resp, err = importOne(t, c, h, big, 1<<20)
	if err != nil || !resp.GetAlreadyStored() {
		t.Fatalf("second import: %v, %v; want already_stored", resp, err)
	}
	if n := len(objects(t)); n != stored {
		t.Errorf("second import changed the storage: %d objects, then %d", stored, n)
	}
	uri := id.ContentURI{Homeserver: server, FileID: "importedBig"}
	dl, body, err := mediaBody(alice.Download(ctx, uri))
	if err != nil || !bytes.Equal(body, big) {
		t.Fatalf("download of the import: %d bytes, %v", len(body), err)
	}
	if dl.Header.Get("Content-Disposition") != "inline; filename*=utf-8''big.txt" {
		t.Errorf("imported name: %q", dl.Header.Get("Content-Disposition"))
	}

	// A created media ID without content waits for its owner's upload.
	pending := &mediav1.MediaHeader{MediaId: "importedPending", Uploader: alice.UserID.String(), CreatedTs: now, UnusedExpiresTs: now + 3600_000}
	if _, err := importOne(t, c, pending, nil, 1); err != nil {
		t.Fatalf("import of a created media ID: %v", err)
	}
	puri := id.ContentURI{Homeserver: server, FileID: "importedPending"}
	_, _, err = mediaBody(alice.DownloadWithParams(ctx, puri, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "50"}}))
	wantMatrixError(t, "download of an imported created ID", err, http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED")
	if _, err := alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("at last"), ContentType: "text/plain", MXC: puri}); err != nil {
		t.Fatalf("upload to an imported created ID: %v", err)
	}
	if _, body, err := mediaBody(alice.Download(ctx, puri)); err != nil || string(body) != "at last" {
		t.Errorf("download after the upload: %q, %v", body, err)
	}

	// An announced item (content_follows): downloads wait for its content,
	// it cannot be uploaded to, and the import with content completes it.
	ann := &mediav1.MediaHeader{MediaId: "announced", Uploader: alice.UserID.String(), CreatedTs: now, UploadedTs: now,
		ContentType: "text/plain", Size: 11, ContentFollows: true}
	for i, wantAlready := range []bool{false, true} {
		if resp, err := importOne(t, c, ann, nil, 1); err != nil || resp.GetAlreadyStored() != wantAlready {
			t.Fatalf("announcement %d: %v, %v; want already_stored %v", i, resp, err, wantAlready)
		}
	}
	auri := id.ContentURI{Homeserver: server, FileID: "announced"}
	_, _, err = mediaBody(alice.DownloadWithParams(ctx, auri, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "50"}}))
	wantMatrixError(t, "download of an announced item", err, http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED")
	_, err = alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("mine"), ContentType: "text/plain", MXC: auri})
	wantMatrixError(t, "upload to an announced item", err, http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA")
	if _, err := importOne(t, c, ann, []byte("hello world"), 4); status.Code(err) != codes.InvalidArgument {
		t.Errorf("announcement with content: %v, want InvalidArgument", err)
	}
	waited := make(chan []byte, 1)
	go func() {
		_, body, err := mediaBody(alice.DownloadWithParams(ctx, auri, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "20000"}}))
		if err != nil {
			t.Errorf("waiting download of an announced item: %v", err)
		}
		waited <- body
	}()
	full := proto.CloneOf(ann)
	full.ContentFollows = false
	if resp, err := importOne(t, c, full, []byte("hello world"), 4); err != nil || resp.GetAlreadyStored() {
		t.Fatalf("import of the announced item's content: %v, %v", resp, err)
	}
	select {
	case body := <-waited:
		if string(body) != "hello world" {
			t.Errorf("waiting download got %q", body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("waiting download did not return")
	}
	if resp, err := importOne(t, c, full, []byte("hello world"), 4); err != nil || !resp.GetAlreadyStored() {
		t.Errorf("second import with content: %v, %v; want already_stored", resp, err)
	}

	// Refused, and nothing left behind.
	before := objects(t)
	for name, c2 := range map[string]struct {
		h       *mediav1.MediaHeader
		content []byte
	}{
		"content shorter than its size": {&mediav1.MediaHeader{MediaId: "short", Uploader: alice.UserID.String(), CreatedTs: now, UploadedTs: now, Size: 10}, []byte("12345")},
		"content longer than its size":  {&mediav1.MediaHeader{MediaId: "long", Uploader: alice.UserID.String(), CreatedTs: now, UploadedTs: now, Size: 3}, []byte("12345")},
		"a remote uploader":             {&mediav1.MediaHeader{MediaId: "remote", Uploader: "@bob:elsewhere.test", CreatedTs: now, UploadedTs: now, Size: 1}, []byte("1")},
		"a malformed media ID":          {&mediav1.MediaHeader{MediaId: "a/b", Uploader: alice.UserID.String(), CreatedTs: now, UploadedTs: now, Size: 1}, []byte("1")},
		"content without an upload":     {&mediav1.MediaHeader{MediaId: "nocontent", Uploader: alice.UserID.String(), CreatedTs: now, UnusedExpiresTs: now + 1000}, []byte("1")},
		"a created ID announced":        {&mediav1.MediaHeader{MediaId: "createdann", Uploader: alice.UserID.String(), CreatedTs: now, UnusedExpiresTs: now + 1000, ContentFollows: true}, nil},
		"no header":                     {nil, []byte("1")},
	} {
		if _, err := importOne(t, c, c2.h, c2.content, 2); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if after := objects(t); len(after) != len(before) {
		t.Errorf("refused imports left objects: %v, before %v", after, before)
	}
	if n := countRows(t, s, "pending_objects"); n != 0 {
		t.Errorf("%d pending objects after refused imports", n)
	}
	for _, mid := range []string{"short", "long", "nocontent", "createdann"} {
		_, _, err := mediaBody(alice.Download(ctx, id.ContentURI{Homeserver: server, FileID: mid}))
		wantMatrixError(t, "download of refused import "+mid, err, http.StatusNotFound, "M_NOT_FOUND")
	}
}
