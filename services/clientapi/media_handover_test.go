package clientapi_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/pgstore"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// migrationsUpTo is the client-API's migrations up to version last, as
// main's code had them before the media service (037 was its last).
func migrationsUpTo(t *testing.T, last int) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	re := regexp.MustCompile(`^(\d+)_`)
	err := fs.WalkDir(os.DirFS("store/migrations"), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		v, _ := strconv.Atoi(re.FindStringSubmatch(p)[1])
		if v <= last {
			data, err := os.ReadFile("store/migrations/" + p)
			if err != nil {
				return err
			}
			out["migrations/"+p] = &fstest.MapFile{Data: data}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// handoverPNG is a w × h PNG.
func handoverPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(x * 7), G: uint8(y * 3), B: uint8(x ^ y), A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestMediaHandover is the upgrade path from a server whose client-API
// kept media in PostgreSQL (migration 033, up to 037 as main left it):
// the new stack starts on that database, the client-API hands every file
// over to the media service through ImportMedia and drops its old table,
// and mautrix-go downloads every file from the media service, a
// thumbnail is made again, and a created media ID still takes its upload.
func TestMediaHandover(t *testing.T) {
	ctx := context.Background()
	cfg := stack.TestConfig(t)
	db := cfg.Database.URL
	server := cfg.ServerName
	alice := "@alice:" + server

	// The database as main's code left it.
	pool, err := pgstore.Open(ctx, db, store.Schema, 4, migrationsUpTo(t, 37), "migrations")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	pic := handoverPNG(t, 640, 480)
	big := make([]byte, 3<<20+12345) // several hand-over chunks
	for i := range big {
		big[i] = byte(i*31 + i/4096)
	}
	files := map[string]struct {
		content     []byte
		ctype, name string
	}{
		"oldPicture00000000000001": {pic, "image/png", "old picture.png"},
		"oldBigFile00000000000002": {big, "application/octet-stream", "big.bin"},
		"oldNoName000000000000003": {[]byte("plain words"), "", ""},
		"oldEmpty0000000000000004": {nil, "text/plain", "empty.txt"},
	}
	for mediaID, f := range files {
		// PutMedia of main's store/media.go.
		if _, err := pool.Exec(ctx, `INSERT INTO media (media_id, uploader, created_ts, uploaded_ts, content_type, upload_name, size, content)
			VALUES ($1, $2, $3, $3, $4, $5, $6, $7)`, mediaID, alice, now-60_000, nullable(f.ctype), nullable(f.name), int64(len(f.content)), f.content); err != nil {
			t.Fatal(err)
		}
	}
	// CreateMedia's rows: one still waiting for its upload, one expired.
	for mediaID, expires := range map[string]int64{"oldCreated00000000000005": now + 3600_000, "oldExpired00000000000006": now - 1000} {
		if _, err := pool.Exec(ctx, `INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts) VALUES ($1, $2, $3, $4)`,
			mediaID, alice, now-7200_000, expires); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO media_thumbnails (media_id, width, height, method, content_type, content) VALUES ($1, 32, 32, 'crop', 'image/png', $2)`,
		"oldPicture00000000000001", []byte("an old thumbnail")); err != nil {
		t.Fatal(err)
	}
	pool.Close()

	// The new code on it.
	s := stack.StartWithConfig(t, cfg)
	hs := s.URL()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	testkit.Eventually(t, 60*time.Second, func() error {
		var media, thumbs *string
		if err := conn.QueryRow(ctx, `SELECT to_regclass('clientapi.media')::text, to_regclass('clientapi.media_thumbnails')::text`).Scan(&media, &thumbs); err != nil {
			return err
		}
		if media != nil || thumbs != nil {
			return fmt.Errorf("old tables still there: media %v, media_thumbnails %v", media != nil, thumbs != nil)
		}
		return nil
	})

	cli := newUser(t, hs, "alice")
	if cli.UserID != id.UserID(alice) {
		t.Fatalf("registered %s, the old media's uploader is %s", cli.UserID, alice)
	}
	for mediaID, f := range files {
		resp, body, err := downloadAll(cli.Download(ctx, id.ContentURI{Homeserver: server, FileID: mediaID}))
		if err != nil {
			t.Errorf("download of %s: %v", mediaID, err)
			continue
		}
		if !bytes.Equal(body, f.content) {
			t.Errorf("download of %s: %d bytes, want the %d stored", mediaID, len(body), len(f.content))
		}
		wantType := f.ctype
		if wantType == "" {
			wantType = "application/octet-stream"
		}
		if got := resp.Header.Get("Content-Type"); got != wantType {
			t.Errorf("%s: Content-Type %q, want %q", mediaID, got, wantType)
		}
		if f.name != "" && resp.Header.Get("Content-Disposition") == "attachment" {
			t.Errorf("%s: file name lost: %q", mediaID, resp.Header.Get("Content-Disposition"))
		}
	}
	// Thumbnails are made again, from the handed-over picture.
	_, body, err := downloadAll(cli.DownloadThumbnail(ctx, id.ContentURI{Homeserver: server, FileID: "oldPicture00000000000001"}, 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"}))
	if err != nil {
		t.Fatal(err)
	}
	if img, _, err := image.Decode(bytes.NewReader(body)); err != nil || img.Bounds().Dx() != 32 || img.Bounds().Dy() != 32 {
		t.Errorf("thumbnail of a handed-over picture: %v", err)
	}
	// The created media ID still takes its owner's upload; the expired
	// one is gone.
	created := id.ContentURI{Homeserver: server, FileID: "oldCreated00000000000005"}
	if _, err := cli.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("uploaded after the upgrade"), ContentType: "text/plain", MXC: created}); err != nil {
		t.Fatalf("upload to a created media ID from before the upgrade: %v", err)
	}
	if _, body, err := downloadAll(cli.Download(ctx, created)); err != nil || string(body) != "uploaded after the upgrade" {
		t.Errorf("download of it: %q, %v", body, err)
	}
	_, _, err = downloadAll(cli.Download(ctx, id.ContentURI{Homeserver: server, FileID: "oldExpired00000000000006"}))
	wantMatrixError(t, "download of an expired created ID", err, http.StatusNotFound, "M_NOT_FOUND")

	// A restart finds nothing more to hand over, and still serves.
	s.Stop()
	s = stack.StartWithConfig(t, cfg)
	cli.HomeserverURL = mustParse(t, s.URL())
	if _, body, err := downloadAll(cli.Download(ctx, id.ContentURI{Homeserver: server, FileID: "oldBigFile00000000000002"})); err != nil || !bytes.Equal(body, big) {
		t.Errorf("download after a restart: %d bytes, %v", len(body), err)
	}
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func downloadAll(resp *http.Response, err error) (*http.Response, []byte, error) {
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
