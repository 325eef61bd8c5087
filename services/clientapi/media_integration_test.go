package clientapi_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/services/clientapi"
)

// testPNG is a w × h PNG with a gradient (so scaling has work to do).
func testPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(x), G: uint8(y), B: 128, A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// mediaBody reads a media response fully. A Matrix error comes back as
// err (mautrix's HTTPError).
func mediaBody(resp *http.Response, err error) (*http.Response, []byte, error) {
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// wantMatrixError checks that err is a Matrix error with this errcode and
// HTTP status.
func wantMatrixError(t *testing.T, what string, err error, status int, errcode string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != status || he.RespError == nil || he.RespError.ErrCode != errcode {
		t.Errorf("%s: got %v, want %d %s", what, err, status, errcode)
	}
}

// mediaGet is an HTTP GET with an optional access token.
func mediaGet(t *testing.T, url, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestMedia drives the content repository through mautrix-go: uploads,
// authenticated downloads with their safety headers, thumbnails by both
// methods, the frozen unauthenticated endpoints, create-then-upload with
// its waiting download, and the errors of each.
func TestMedia(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Media.MaxUploadSize = 1 << 20
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")

	conf, err := bob.GetMediaConfig(ctx)
	if err != nil || conf.UploadSize != 1<<20 {
		t.Fatalf("media config: %+v, %v", conf, err)
	}

	// Upload and download: the bytes, type and name come back.
	pic := testPNG(t, 400, 300)
	up, err := alice.UploadBytesWithName(ctx, pic, "image/png", "holiday pic.png")
	if err != nil {
		t.Fatal(err)
	}
	if up.ContentURI.Homeserver != serverName || up.ContentURI.FileID == "" {
		t.Fatalf("content URI %s", up.ContentURI)
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
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox;") {
		t.Errorf("Content-Security-Policy %q", resp.Header.Get("Content-Security-Policy"))
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

	// Too large.
	_, err = alice.UploadBytes(ctx, make([]byte, 1<<20+1), "application/octet-stream")
	wantMatrixError(t, "oversized upload", err, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")

	// Thumbnails: never smaller than asked, aspect kept by scale, exact by
	// crop, the original when it is no larger than asked.
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
			t.Errorf("thumbnail %dx%d %s: %dx%d, want %dx%d", c.w, c.h, c.method, b.Dx(), b.Dy(), c.wantW, c.wantH)
		}
		if unchanged := bytes.Equal(body, pic); unchanged != c.wantUnchanged {
			t.Errorf("thumbnail %dx%d %s: original served %v, want %v", c.w, c.h, c.method, unchanged, c.wantUnchanged)
		}
	}
	_, _, err = mediaBody(bob.DownloadThumbnail(ctx, page.ContentURI, 32, 32))
	wantMatrixError(t, "thumbnail of HTML", err, http.StatusBadRequest, "M_UNKNOWN")
	_, _, err = mediaBody(bob.DownloadThumbnail(ctx, up.ContentURI, 0, 32))
	wantMatrixError(t, "thumbnail of height 0", err, http.StatusBadRequest, "M_INVALID_PARAM")

	// Unknown, remote and malformed media IDs; no token; frozen endpoints.
	for _, uri := range []id.ContentURI{
		{Homeserver: serverName, FileID: "doesnotexist"},
		{Homeserver: "elsewhere.test", FileID: up.ContentURI.FileID},
	} {
		_, _, err := mediaBody(bob.Download(ctx, uri))
		wantMatrixError(t, "download of "+uri.String(), err, http.StatusNotFound, "M_NOT_FOUND")
	}
	mediaPath := "/" + serverName + "/" + up.ContentURI.FileID
	if code, body := mediaGet(t, hs+"/_matrix/client/v1/media/download"+mediaPath, ""); code != 401 || !strings.Contains(string(body), "M_MISSING_TOKEN") {
		t.Errorf("authenticated download without a token: %d %s", code, body)
	}
	if code, body := mediaGet(t, hs+"/_matrix/client/v1/media/download/"+serverName+"/a.b", bob.AccessToken); code != 404 {
		t.Errorf("malformed media ID: %d %s", code, body)
	}
	for _, legacy := range []string{"/_matrix/media/v3/download" + mediaPath, "/_matrix/media/r0/download" + mediaPath, "/_matrix/media/v3/thumbnail" + mediaPath + "?width=32&height=32"} {
		if code, body := mediaGet(t, hs+legacy, ""); code != 404 || !strings.Contains(string(body), "M_NOT_FOUND") {
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
	time.Sleep(300 * time.Millisecond)
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
}

// media.max_user_total caps what one user may upload in all.
func TestMediaQuota(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Media.MaxUserTotal = 1000
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	if _, err := alice.UploadBytes(ctx, make([]byte, 600), "application/octet-stream"); err != nil {
		t.Fatal(err)
	}
	_, err := alice.UploadBytes(ctx, make([]byte, 600), "application/octet-stream")
	wantMatrixError(t, "upload past the quota", err, http.StatusForbidden, "M_FORBIDDEN")
	if _, err := alice.UploadBytes(ctx, make([]byte, 400), "application/octet-stream"); err != nil {
		t.Errorf("upload up to the quota: %v", err)
	}
	if _, err := bob.UploadBytes(ctx, make([]byte, 600), "application/octet-stream"); err != nil {
		t.Errorf("another user's upload: %v", err)
	}
}

// With media.unauthenticated_download the deprecated endpoints serve media.
func TestMediaUnauthenticatedDownload(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Media.UnauthenticatedDownload = true
	hs := startStackWith(t, cfg)
	alice := newUser(t, hs, "alice")
	up, err := alice.UploadBytes(context.Background(), []byte("hello"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := mediaGet(t, hs+"/_matrix/media/v3/download/"+serverName+"/"+up.ContentURI.FileID, ""); code != 200 || string(body) != "hello" {
		t.Errorf("legacy download: %d %q", code, body)
	}
}
