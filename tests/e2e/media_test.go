package e2e

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// mediaScenario uploads through one user and downloads through the other,
// with mautrix-go, so in the split shape the media service is reached
// through the edge router (/_matrix/media/* and /_matrix/client/v1/media/*);
// the content lands in the media service's storage (its file backend
// directory), and a thumbnail is made from it.
func mediaScenario(t *testing.T, s *server, alice, bob *mautrix.Client) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("myelin media "), 1000)
	up, err := alice.UploadBytesWithName(ctx, data, "text/plain", "notes.txt")
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	resp, err := bob.Download(ctx, up.ContentURI)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download: %d bytes (%v), want the %d uploaded", len(got), err, len(data))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain" {
		t.Errorf("Content-Type %q", ct)
	}
	found := false
	_ = filepath.WalkDir(s.mediaDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, up.ContentURI.FileID) {
			found = true
		}
		return nil
	})
	if !found {
		t.Errorf("no file of %s under the media service's storage %s", up.ContentURI.FileID, s.mediaDir)
	}

	img := image.NewRGBA(image.Rect(0, 0, 200, 100))
	for x := range 200 {
		img.Set(x, x/2, color.RGBA{R: 255, A: 255})
	}
	var pic bytes.Buffer
	if err := png.Encode(&pic, img); err != nil {
		t.Fatal(err)
	}
	picUp, err := alice.UploadBytes(ctx, pic.Bytes(), "image/png")
	if err != nil {
		t.Fatalf("upload of a picture: %v", err)
	}
	thumb, err := bob.DownloadThumbnail(ctx, picUp.ContentURI, 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"})
	if err != nil {
		t.Fatalf("thumbnail: %v", err)
	}
	defer thumb.Body.Close()
	ti, _, err := image.Decode(thumb.Body)
	if err != nil || ti.Bounds().Dx() != 32 || ti.Bounds().Dy() != 32 {
		t.Errorf("thumbnail: %v", err)
	}
}
