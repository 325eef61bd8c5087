package media

import (
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/media/store"
)

func testDatabase(t *testing.T) string { return testkit.Postgres(t) }

func mediaRow(mediaID, key string, at time.Time) store.Media {
	return store.Media{MediaID: mediaID, Uploader: "@a:example.test", UploadedTS: at.UnixMilli(), Size: 4, StorageKey: key}
}

func TestStandardThumbnail(t *testing.T) {
	for _, c := range []struct {
		w, h         int
		method       string
		wantW, wantH int
		wantMethod   string
		ok           bool
	}{
		{1, 1, "crop", 32, 32, "crop", true},
		{33, 20, "crop", 96, 96, "crop", true},
		{97, 97, "crop", 320, 240, "scale", true}, // past the crop sizes: by scale
		{320, 240, "scale", 320, 240, "scale", true},
		{321, 10, "scale", 640, 480, "scale", true},
		{800, 600, "scale", 800, 600, "scale", true},
		{801, 600, "scale", 0, 0, "", false},
	} {
		w, h, m, ok := standardThumbnail(c.w, c.h, c.method)
		if w != c.wantW || h != c.wantH || m != c.wantMethod || ok != c.ok {
			t.Errorf("%dx%d %s: %dx%d %s %v", c.w, c.h, c.method, w, h, m, ok)
		}
	}
}
