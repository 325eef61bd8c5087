package media_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"io"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// listFiles lists the file backend's objects (temporary files included).
func listFiles(root string) func(t *testing.T) []string {
	return func(t *testing.T) []string {
		var keys []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				rel, _ := filepath.Rel(root, p)
				keys = append(keys, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		return keys
	}
}

// TestMedia drives the content repository on the file backend (the
// default, under data_dir/media) through mautrix-go.
func TestMedia(t *testing.T) {
	s := startStack(t, func(cfg *myelin.Config) { cfg.Media.MaxUploadSize = 1 << 20 })
	exerciseMedia(t, s, listFiles(filepath.Join(s.Config.DataDir, "media")))
}

// exerciseMedia is the content repository's behaviour, whatever the
// storage: uploads and authenticated downloads with their safety headers,
// the size cap (with and without Content-Length) and aborted uploads that
// leave nothing behind, thumbnails by both methods kept in the storage,
// the frozen unauthenticated endpoints, token errors, and create-then-
// upload with its waiting download. list returns the storage's objects.
// The stack's max_upload_size is 1 MiB.
func exerciseMedia(t *testing.T, s *stack.Stack, list func(*testing.T) []string) {
	hs := s.URL()
	serverName := s.Config.ServerName
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")

	conf, err := bob.GetMediaConfig(ctx)
	if err != nil || conf.UploadSize != 1<<20 {
		t.Fatalf("media config: %+v, %v", conf, err)
	}

	// Upload and download: the bytes, type and name come back, and the
	// content is in the storage, not in the database.
	pic := testPNG(t, 400, 300)
	up, err := alice.UploadBytesWithName(ctx, pic, "image/png", "holiday pic.png")
	if err != nil {
		t.Fatal(err)
	}
	if up.ContentURI.Homeserver != serverName || up.ContentURI.FileID == "" {
		t.Fatalf("content URI %s", up.ContentURI)
	}
	if objs := list(t); !slices.ContainsFunc(objs, func(k string) bool { return strings.Contains(k, up.ContentURI.FileID) }) {
		t.Errorf("storage after the upload: %v, want an object of %s", objs, up.ContentURI.FileID)
	}
	resp, body, err := mediaBody(bob.Download(ctx, up.ContentURI))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, pic) {
		t.Errorf("downloaded %d bytes, uploaded %d", len(body), len(pic))
	}
	for h, want := range map[string]string{
		"Content-Type":                 "image/png",
		"Content-Disposition":          "inline; filename*=utf-8''holiday%20pic.png",
		"Cross-Origin-Resource-Policy": "cross-origin",
		"Content-Length":               fmt.Sprint(len(pic)),
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox;") {
		t.Errorf("Content-Security-Policy %q", resp.Header.Get("Content-Security-Policy"))
	}
	// The name in the path wins.
	_, resp, err = bob.MakeFullRequestWithResp(ctx, mautrix.FullRequest{Method: http.MethodGet, DontReadResponse: true,
		URL: bob.BuildClientURL("v1", "media", "download", serverName, up.ContentURI.FileID, "other name.png")})
	if err == nil {
		resp.Body.Close()
	}
	if err != nil || resp.Header.Get("Content-Disposition") != "inline; filename*=utf-8''other%20name.png" {
		t.Errorf("download with a file name: %v, disposition %q", err, resp.Header.Get("Content-Disposition"))
	}
	// A type that could run script is an attachment.
	page, err := alice.UploadBytes(ctx, []byte("<script>alert(1)</script>"), "text/html")
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err = mediaBody(bob.Download(ctx, page.ContentURI))
	if err != nil || resp.Header.Get("Content-Disposition") != "attachment" {
		t.Errorf("HTML download: %v, disposition %q", err, resp.Header.Get("Content-Disposition"))
	}
	// Exactly the cap is fine.
	full := bytes.Repeat([]byte{7}, 1<<20)
	fullUp, err := alice.UploadBytes(ctx, full, "application/octet-stream")
	if err != nil {
		t.Fatalf("upload of max_upload_size bytes: %v", err)
	}
	if _, body, err := mediaBody(bob.Download(ctx, fullUp.ContentURI)); err != nil || !bytes.Equal(body, full) {
		t.Errorf("download of max_upload_size bytes: %d bytes, %v", len(body), err)
	}

	// Too large, declared or found while streaming, and an upload the
	// client abandons: 413 or nothing, and nothing left behind in the
	// storage or the database.
	before := list(t)
	_, err = alice.UploadBytes(ctx, make([]byte, 1<<20+1), "application/octet-stream")
	wantMatrixError(t, "oversized upload", err, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	// io.MultiReader hides the length: the body goes chunked.
	code, raw := rawRequest(t, http.MethodPost, hs+"/_matrix/media/v3/upload", alice.AccessToken,
		io.MultiReader(bytes.NewReader(make([]byte, 3<<20))))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(string(raw), "M_TOO_LARGE") {
		t.Errorf("oversized upload without Content-Length: %d %s", code, raw)
	}
	abandonUpload(t, s.Process.HTTPAddr(), alice.AccessToken)
	testkit.Eventually(t, 10*time.Second, func() error {
		if after := list(t); !slices.Equal(after, before) {
			return fmt.Errorf("storage before the failed uploads %v, after %v", before, after)
		}
		if n := countRows(t, s, "pending_objects"); n != 0 {
			return fmt.Errorf("%d pending objects left", n)
		}
		return nil
	})

	// Thumbnails: never smaller than asked, aspect kept by scale, exact by
	// crop, the original when it is no larger than asked; each size is
	// made once and kept in the storage.
	for round := range 2 {
		for _, c := range []struct {
			w, h          int
			method        string
			wantW, wantH  int
			wantUnchanged bool
		}{
			{96, 96, "crop", 96, 96, false},
			{320, 240, "scale", 320, 240, false},
			{100, 50, "scale", 320, 240, false}, // the smallest recommended size that covers it
			{20, 20, "crop", 32, 32, false},
			{640, 480, "scale", 400, 300, true},
			{1000, 1000, "scale", 400, 300, true}, // larger than any recommended size: the original
		} {
			_, body, err := mediaBody(bob.DownloadThumbnail(ctx, up.ContentURI, c.h, c.w, mautrix.DownloadThumbnailExtra{Method: c.method}))
			if err != nil {
				t.Fatalf("thumbnail %dx%d %s: %v", c.w, c.h, c.method, err)
			}
			img, _, err := image.Decode(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("thumbnail %dx%d %s: %v", c.w, c.h, c.method, err)
			}
			if b := img.Bounds(); b.Dx() != c.wantW || b.Dy() != c.wantH {
				t.Errorf("round %d: thumbnail %dx%d %s: %dx%d, want %dx%d", round, c.w, c.h, c.method, b.Dx(), b.Dy(), c.wantW, c.wantH)
			}
			if unchanged := bytes.Equal(body, pic); unchanged != c.wantUnchanged {
				t.Errorf("round %d: thumbnail %dx%d %s: original served %v, want %v", round, c.w, c.h, c.method, unchanged, c.wantUnchanged)
			}
		}
		// 96 and 32 crop, 320x240 scale: three kept, however often asked.
		var thumbs []string
		for _, k := range list(t) {
			if strings.Contains(k, "thumbnails/") {
				thumbs = append(thumbs, k)
			}
		}
		if len(thumbs) != 3 || countRows(t, s, "thumbnails") != 3 {
			t.Errorf("round %d: thumbnails in the storage %v (%d rows), want 3", round, thumbs, countRows(t, s, "thumbnails"))
		}
	}
	_, _, err = mediaBody(bob.DownloadThumbnail(ctx, page.ContentURI, 32, 32))
	wantMatrixError(t, "thumbnail of HTML", err, http.StatusBadRequest, "M_UNKNOWN")
	_, _, err = mediaBody(bob.DownloadThumbnail(ctx, up.ContentURI, 0, 32))
	wantMatrixError(t, "thumbnail of height 0", err, http.StatusBadRequest, "M_INVALID_PARAM")
	_, _, err = mediaBody(bob.DownloadThumbnail(ctx, up.ContentURI, 32, 32, mautrix.DownloadThumbnailExtra{Method: "stretch"}))
	wantMatrixError(t, "thumbnail by an unknown method", err, http.StatusBadRequest, "M_INVALID_PARAM")

	// Unknown, remote (federation is off) and malformed media IDs; token
	// errors; frozen endpoints.
	for _, uri := range []id.ContentURI{
		{Homeserver: serverName, FileID: "doesnotexist"},
		{Homeserver: "elsewhere.test", FileID: up.ContentURI.FileID},
	} {
		_, _, err := mediaBody(bob.Download(ctx, uri))
		wantMatrixError(t, "download of "+uri.String(), err, http.StatusNotFound, "M_NOT_FOUND")
	}
	mediaPath := "/" + serverName + "/" + up.ContentURI.FileID
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/download"+mediaPath, "", nil); code != 401 || !strings.Contains(string(body), "M_MISSING_TOKEN") {
		t.Errorf("authenticated download without a token: %d %s", code, body)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/download"+mediaPath, "myl_nonsense", nil); code != 401 ||
		!strings.Contains(string(body), "M_UNKNOWN_TOKEN") || !strings.Contains(string(body), `"soft_logout":false`) {
		t.Errorf("download with an unknown token: %d %s", code, body)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/download"+mediaPath+"?access_token="+bob.AccessToken, "", nil); code != 200 || !bytes.Equal(body, pic) {
		t.Errorf("download with the token in the query: %d", code)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/download/"+serverName+"/a.b", bob.AccessToken, nil); code != 404 {
		t.Errorf("malformed media ID: %d %s", code, body)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/preview_url?url=https://example.org", bob.AccessToken, nil); code != 403 || !strings.Contains(string(body), "M_FORBIDDEN") {
		t.Errorf("URL previews (off by default): %d %s", code, body)
	}
	for _, legacy := range []string{"/_matrix/media/v3/download" + mediaPath, "/_matrix/media/r0/download" + mediaPath, "/_matrix/media/v3/thumbnail" + mediaPath + "?width=32&height=32"} {
		if code, body := rawRequest(t, http.MethodGet, hs+legacy, "", nil); code != 404 || !strings.Contains(string(body), "M_NOT_FOUND") {
			t.Errorf("frozen %s: %d %s", legacy, code, body)
		}
	}

	// Create, then upload: a download waits for the content.
	created, err := alice.CreateMXC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if created.UnusedExpiresAt.Before(time.Now()) {
		t.Errorf("create: unused_expires_at %v is not in the future", created.UnusedExpiresAt)
	}
	_, _, err = mediaBody(bob.DownloadWithParams(ctx, created.ContentURI, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "100"}}))
	wantMatrixError(t, "download before the upload", err, http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED")
	waited := make(chan []byte, 1)
	go func() {
		_, body, err := mediaBody(bob.DownloadWithParams(ctx, created.ContentURI, mautrix.DownloadExtra{Query: map[string]string{"timeout_ms": "10000"}}))
		if err != nil {
			t.Errorf("waiting download: %v", err)
		}
		waited <- body
	}()
	asyncPut := func(cli *mautrix.Client, data []byte) error {
		_, err := cli.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: data, ContentType: "text/plain", MXC: created.ContentURI})
		return err
	}
	wantMatrixError(t, "upload to another user's media ID", asyncPut(bob, []byte("not yours")), http.StatusForbidden, "M_FORBIDDEN")
	if err := asyncPut(alice, []byte("later content")); err != nil {
		t.Fatal(err)
	}
	wantMatrixError(t, "second upload", asyncPut(alice, []byte("again")), http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA")
	select {
	case body := <-waited:
		if string(body) != "later content" {
			t.Errorf("waiting download got %q", body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("waiting download did not return")
	}
	_, err = alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("x"), ContentType: "text/plain",
		MXC: id.ContentURI{Homeserver: serverName, FileID: "neverCreated"}})
	wantMatrixError(t, "upload to a media ID never created", err, http.StatusNotFound, "M_NOT_FOUND")
}

// abandonUpload starts an upload with a Content-Length, sends half of it
// and hangs up.
func abandonUpload(t *testing.T, addr, token string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/octet-stream\r\nContent-Length: 200000\r\n\r\n", addr, token)
	_, _ = conn.Write(make([]byte, 100000))
	_ = conn.Close()
}

// countRows counts a table of the media service's schema.
func countRows(t *testing.T, s *stack.Stack, table string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), s.Config.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM media.`+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUploadBadHeaderText: an upload's Content-Type and filename that no
// store can hold get 400 with an errcode, over real HTTP to the real
// process: control bytes (refused by Go's server before any handler, made
// a Matrix error by matrixhttp.MatrixErrorsListener), bytes that are not
// UTF-8, and U+0000 or invalid UTF-8 in the filename. Nothing is stored.
func TestUploadBadHeaderText(t *testing.T) {
	s := startStack(t, nil)
	alice := newUser(t, s.URL(), "alice")
	addr := strings.TrimPrefix(s.URL(), "http://")
	send := func(contentType, query string) (int, map[string]any) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := "POST /_matrix/media/v3/upload" + query + " HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer " + alice.AccessToken +
			"\r\nContent-Type: " + contentType + "\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("Content-Type %q%s: %d, body not JSON: %v", contentType, query, resp.StatusCode, err)
		}
		return resp.StatusCode, body
	}
	for _, c := range []struct{ ctype, query string }{
		{"image/png\x01", ""},
		{"image/\x7fpng", ""},
		{"text/plain; charset=\"\xff\"", ""},
		{"text/plain", "?filename=a%00b"},
		{"text/plain", "?filename=%FF"},
	} {
		status, body := send(c.ctype, c.query)
		if status != http.StatusBadRequest || body["errcode"] != "M_INVALID_PARAM" {
			t.Errorf("Content-Type %q%s: %d %v, want 400 M_INVALID_PARAM", c.ctype, c.query, status, body)
		}
	}
	if status, body := send("text/plain; charset=utf-8", "?filename=ok.txt"); status != http.StatusOK || body["content_uri"] == nil {
		t.Fatalf("a good upload: %d %v", status, body)
	}
}
