package media

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/rpc"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/media/storage"
	"github.com/myelin-chat/myelin/services/media/store"
)

// The preview cache by ts bucket and expiry, on a clock the test moves: a
// preview is served from the cache within its bucket; a later bucket
// fetches again; a ts in an earlier bucket gets that bucket's version
// while it has not expired, else the current one; the janitor deletes a
// preview a TTL after its expiry, with its image's row and content.
func TestPreviewCacheBuckets(t *testing.T) {
	ctx := context.Background()
	var title atomic.Value
	title.Store("v1")
	var pageHits atomic.Int32
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	img.Set(1, 1, color.White)
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/img.png" {
			w.Header().Set("Content-Type", "image/png")
			_ = png.Encode(w, img)
			return
		}
		pageHits.Add(1)
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<html><head><meta property="og:title" content="%s"><meta property="og:image" content="/img.png"></head></html>`, title.Load())
	}))
	t.Cleanup(site.Close)

	conn, err := rpc.Dial("127.0.0.1:1") // nothing here authenticates
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	cfg := DefaultConfig()
	cfg.Storage.Path = t.TempDir()
	cfg.URLPreview.Enabled = true
	cfg.URLPreview.AllowedNetworks = []string{"127.0.0.0/8"}
	svc, err := New(ctx, cfg, Deps{Logger: zaptest.NewLogger(t), ServerName: "example.test", DatabaseURL: testDatabase(t),
		Users: clientapiv1.NewUserServiceClient(conn)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	ttl := cfg.URLPreview.CacheTTL
	t0 := time.Now().Truncate(ttl) // a bucket's start
	clock := t0
	svc.now = func() time.Time { return clock }

	preview := func(ts time.Time) (title, image string) {
		t.Helper()
		q := "?url=" + url.QueryEscape(site.URL+"/page")
		if !ts.IsZero() {
			q += fmt.Sprintf("&ts=%d", ts.UnixMilli())
		}
		out, err := svc.previewURL(httptest.NewRequest(http.MethodGet, "/_matrix/client/v1/media/preview_url"+q, nil), nil)
		if err != nil {
			t.Fatalf("preview at %v (ts %v): %v", clock.Sub(t0), ts, err)
		}
		var p map[string]any
		if err := json.Unmarshal(out.(json.RawMessage), &p); err != nil {
			t.Fatal(err)
		}
		title, _ = p["og:title"].(string)
		image, _ = p["og:image"].(string)
		return title, image
	}
	check := func(what, gotTitle, wantTitle string, wantHits int32) {
		t.Helper()
		if gotTitle != wantTitle || pageHits.Load() != wantHits {
			t.Errorf("%s: title %q, %d fetches; want %q, %d", what, gotTitle, pageHits.Load(), wantTitle, wantHits)
		}
	}

	// Fetched late in the first bucket; served from the cache in it.
	clock = t0.Add(50 * time.Minute)
	got, oldImage := preview(time.Time{})
	check("first request", got, "v1", 1)
	clock = t0.Add(55 * time.Minute)
	got, _ = preview(time.Time{})
	check("same bucket", got, "v1", 1)

	// The next bucket fetches again (the page changed meanwhile)...
	title.Store("v2")
	clock = t0.Add(ttl + 10*time.Minute)
	got, newImage := preview(time.Time{})
	check("next bucket", got, "v2", 2)
	if newImage == oldImage || !strings.HasPrefix(newImage, "mxc://example.test/") {
		t.Errorf("images: %q then %q", oldImage, newImage)
	}
	// ...while a ts in the first bucket gets its version (not expired
	// yet), and a ts in a bucket never fetched gets the current one.
	got, _ = preview(t0.Add(20 * time.Minute))
	check("ts in the first bucket", got, "v1", 2)
	got, _ = preview(t0.Add(-5 * ttl))
	check("ts in an unknown bucket", got, "v2", 2)
	// Past its expiry the first version is not served any more.
	clock = t0.Add(ttl + 51*time.Minute)
	got, _ = preview(t0.Add(20 * time.Minute))
	check("ts in the first bucket, expired", got, "v2", 2)

	// The janitor: the first preview expired more than a TTL ago; it and
	// its image (row and content) go, the current one stays.
	oldID := strings.TrimPrefix(oldImage, "mxc://example.test/")
	old, err := svc.store.MediaByID(ctx, oldID, clock.UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	clock = t0.Add(50*time.Minute + 2*ttl + time.Minute)
	svc.sweep(ctx)
	if _, err := svc.store.MediaByID(ctx, oldID, clock.UnixMilli()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the expired preview's image: %v, want deleted", err)
	}
	if _, err := svc.content.Get(ctx, old.StorageKey); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the expired preview's image content: %v, want deleted", err)
	}
	if _, err := svc.store.MediaByID(ctx, strings.TrimPrefix(newImage, "mxc://example.test/"), clock.UnixMilli()); err != nil {
		t.Errorf("the current preview's image: %v", err)
	}
	bucket := (t0.Add(ttl)).UnixMilli()
	if _, err := svc.store.PreviewOf(ctx, site.URL+"/page", bucket, t0.Add(ttl+20*time.Minute).UnixMilli()); err != nil {
		t.Errorf("the current preview's row: %v", err)
	}
}
