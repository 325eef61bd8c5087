package e2e

import (
	"bytes"
	"context"
	"io"
	"testing"

	"maunium.net/go/mautrix"
)

// mediaScenario uploads through one user and downloads through the other,
// with mautrix-go, so in the split shape the content repository is reached
// through the edge router (/_matrix/media/* and /_matrix/client/v1/media/*).
func mediaScenario(t *testing.T, alice, bob *mautrix.Client) {
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
}
