package media_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
)

// webSite is a real HTTP server on a loopback address that counts the
// requests of each path.
type webSite struct {
	srv  *httptest.Server
	hits map[string]*atomic.Int32
}

func newWebSite(t *testing.T, ip string, routes map[string]http.HandlerFunc) *webSite {
	t.Helper()
	lis, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	w := &webSite{hits: map[string]*atomic.Int32{}}
	mux := http.NewServeMux()
	for path, h := range routes {
		n := &atomic.Int32{}
		w.hits[path] = n
		mux.HandleFunc(path, func(rw http.ResponseWriter, r *http.Request) {
			n.Add(1)
			h(rw, r)
		})
	}
	w.srv = &httptest.Server{Listener: lis, Config: &http.Server{Handler: mux}}
	w.srv.Start()
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webSite) url(path string) string { return w.srv.URL + path }

func (w *webSite) port() string {
	_, port, _ := net.SplitHostPort(w.srv.Listener.Addr().String())
	return port
}

func htmlPage(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(body))
	}
}

// TestURLPreview drives GET /media/preview_url through mautrix-go and raw
// HTTP with a real access token against real web servers on loopback.
// The allow-list opens 127.0.0.2 only: the "site" there is fetched, while
// the "internal" server on 127.0.0.1 must never see a request, whether
// named by its address, by a DNS name (localhost) or through a redirect.
func TestURLPreview(t *testing.T) {
	pic := testPNG(t, 40, 30)
	var site *webSite
	site = newWebSite(t, "127.0.0.2", map[string]http.HandlerFunc{
		"/article": htmlPage(`<!doctype html><html><head>
			<title>Fallback title</title>
			<meta property="og:title" content="An  article &amp; more">
			<meta property="og:description" content="What it is about">
			<meta property="og:site_name" content="The Site">
			<meta property="og:type" content="article">
			<meta property="og:image" content="/pic.png">
			<meta property="og:image:width" content="999">
			</head><body><meta property="og:title" content="not in the head"></body></html>`),
		"/plain": htmlPage(`<html><head><title> Plain
			page </title><meta name="description" content="No Open Graph here"></head><body>text</body></html>`),
		"/latin1": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=iso-8859-1")
			_, _ = w.Write([]byte("<html><head><title>Caf\xe9</title></head></html>"))
		},
		"/untyped": func(w http.ResponseWriter, _ *http.Request) {
			w.Header()["Content-Type"] = nil // no type, and none sniffed by net/http
			_, _ = w.Write([]byte(`<!DOCTYPE html><html><head><title>Untyped</title></head></html>`))
		},
		"/pic.png": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "image/png")
			_, _ = w.Write(pic)
		},
		"/doc.pdf": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/pdf")
			_, _ = w.Write([]byte("%PDF-1.4 not really"))
		},
		"/gone": func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "gone", http.StatusGone) },
		// A page that never ends: its title comes first, then padding
		// in the head forever. Only the byte limit ends its fetch.
		"/endless": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte(`<html><head><meta property="og:title" content="Endless">`))
			pad := []byte(strings.Repeat(`<meta name="pad" content="xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx">`, 100))
			for r.Context().Err() == nil {
				if _, err := w.Write(pad); err != nil {
					return
				}
			}
		},
		// Its title comes after the first 64 KiB: past the limit.
		"/late": htmlPage(`<html><head>` + strings.Repeat(`<meta name="pad" content="xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx">`, 2000) +
			`<title>Too late</title></head></html>`),
		// Never answers until the client gives up.
		"/slow":   func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		"/cached": htmlPage(`<html><head><meta property="og:title" content="Cached"></head></html>`),
	})
	internal := newWebSite(t, "127.0.0.1", map[string]http.HandlerFunc{
		"/": htmlPage(`<html><head><title>Internal secret</title></head></html>`),
	})
	redirectTo := func(target string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, target, http.StatusFound) }
	}
	redirects := newWebSite(t, "127.0.0.2", map[string]http.HandlerFunc{
		"/to-article":  redirectTo(site.url("/article")),
		"/to-internal": redirectTo(internal.url("/")),
		"/to-name":     redirectTo("http://localhost:" + internal.port() + "/"),
		"/to-file":     redirectTo("file:///etc/passwd"),
	})

	s := startStack(t, func(cfg *myelin.Config) {
		cfg.Media.URLPreview.Enabled = true
		cfg.Media.URLPreview.AllowedNetworks = []string{"127.0.0.2/32"}
		cfg.Media.URLPreview.MaxBytes = 64 << 10
		cfg.Media.URLPreview.Timeout = 3 * time.Second
		cfg.Media.URLPreview.DeniedHosts = []string{"denied.test"}
		// Buckets of a day: the requests below fall in one.
		cfg.Media.URLPreview.CacheTTL = 24 * time.Hour
		cfg.Media.RateLimit.Enabled = false
	})
	hs := s.URL()
	ctx := context.Background()
	alice := newUser(t, hs, "alice")

	// Open Graph, with the image kept as local media: og:image is an
	// mxc:// URI whose content is the site's image, with its real size.
	p, err := alice.GetURLPreview(ctx, site.url("/article"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Title != "An article & more" || p.Description != "What it is about" || p.SiteName != "The Site" || p.Type != "article" {
		t.Errorf("article preview: %+v", p)
	}
	imageURI, err := p.ImageURL.Parse()
	if err != nil || imageURI.Homeserver != s.Config.ServerName {
		t.Fatalf("og:image %q is not this server's mxc:// URI: %v", p.ImageURL, err)
	}
	if p.ImageType != "image/png" || int(p.ImageSize) != len(pic) || int(p.ImageWidth) != 40 || int(p.ImageHeight) != 30 {
		t.Errorf("image fields: type %q size %d %dx%d", p.ImageType, p.ImageSize, p.ImageWidth, p.ImageHeight)
	}
	if _, body, err := mediaBody(alice.Download(ctx, imageURI)); err != nil || !bytes.Equal(body, pic) {
		t.Errorf("downloading og:image: %v (%d bytes)", err, len(body))
	}

	// Through a redirect of an allowed site: the same preview.
	if p, err := alice.GetURLPreview(ctx, redirects.url("/to-article")); err != nil || p.Title != "An article & more" {
		t.Errorf("preview through a redirect: %+v %v", p, err)
	}

	// Fallbacks: <title> and the meta description; a page's charset.
	if p, err := alice.GetURLPreview(ctx, site.url("/plain")); err != nil || p.Title != "Plain page" || p.Description != "No Open Graph here" || p.ImageURL != "" {
		t.Errorf("plain page: %+v %v", p, err)
	}
	if p, err := alice.GetURLPreview(ctx, site.url("/latin1")); err != nil || p.Title != "Café" {
		t.Errorf("ISO-8859-1 page: %+v %v", p, err)
	}

	if p, err := alice.GetURLPreview(ctx, site.url("/untyped")); err != nil || p.Title != "Untyped" {
		t.Errorf("page without a Content-Type: %+v %v", p, err)
	}

	// An image is its own preview.
	p, err = alice.GetURLPreview(ctx, site.url("/pic.png"))
	if err != nil || p.ImageType != "image/png" || int(p.ImageSize) != len(pic) || int(p.ImageWidth) != 40 || int(p.ImageHeight) != 30 {
		t.Fatalf("image preview: %+v %v", p, err)
	}
	if u, err := p.ImageURL.Parse(); err != nil {
		t.Error(err)
	} else if _, body, err := mediaBody(alice.Download(ctx, u)); err != nil || !bytes.Equal(body, pic) {
		t.Errorf("downloading the previewed image: %v", err)
	}

	// Another type previews as {}.
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(site.url("/doc.pdf")), alice.AccessToken, nil); code != 200 || string(body) != "{}" {
		t.Errorf("PDF preview: %d %s", code, body)
	}

	// The byte limit: an endless page is previewed from its first 64 KiB
	// (within the 3 s timeout only because the limit cut it); a title
	// past them is not seen.
	if p, err := alice.GetURLPreview(ctx, site.url("/endless")); err != nil || p.Title != "Endless" {
		t.Errorf("endless page: %+v %v", p, err)
	}
	if p, err := alice.GetURLPreview(ctx, site.url("/late")); err != nil || p.Title != "" {
		t.Errorf("title past the byte limit: %+v %v", p, err)
	}

	// A site that does not answer in time, one that answers with an error.
	_, err = alice.GetURLPreview(ctx, site.url("/slow"))
	wantMatrixError(t, "slow site", err, http.StatusGatewayTimeout, "M_UNKNOWN")
	_, err = alice.GetURLPreview(ctx, site.url("/gone"))
	wantMatrixError(t, "410 page", err, http.StatusBadGateway, "M_UNKNOWN")

	// Refused: loopback and private addresses outside the allow-list, by
	// address, by DNS name and through redirects; the deny list; other
	// schemes.
	for _, target := range []string{
		internal.url("/"),
		"http://localhost:" + internal.port() + "/",
		"http://[::1]:" + internal.port() + "/",
		"http://10.1.2.3/",
		"http://169.254.169.254/latest/meta-data/",
		redirects.url("/to-internal"),
		redirects.url("/to-name"),
		redirects.url("/to-file"),
		"http://denied.test/",
		"http://www.denied.test/",
	} {
		_, err := alice.GetURLPreview(ctx, target)
		wantMatrixError(t, "preview of "+target, err, http.StatusForbidden, "M_FORBIDDEN")
	}
	if n := internal.hits["/"].Load(); n != 0 {
		t.Errorf("the internal server got %d requests", n)
	}
	for _, bad := range []string{"ftp://example.org/", "file:///etc/passwd", "not a url", "/relative", "http://"} {
		code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(bad), alice.AccessToken, nil)
		if code != 400 || !strings.Contains(string(body), "M_INVALID_PARAM") {
			t.Errorf("preview of %q: %d %s", bad, code, body)
		}
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/preview_url", alice.AccessToken, nil); code != 400 || !strings.Contains(string(body), "M_MISSING_PARAM") {
		t.Errorf("no url: %d %s", code, body)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(site.url("/cached")), "", nil); code != 401 || !strings.Contains(string(body), "M_MISSING_TOKEN") {
		t.Errorf("no token: %d %s", code, body)
	}
	if n := site.hits["/cached"].Load(); n != 0 {
		t.Fatalf("an unauthenticated request fetched the page (%d)", n)
	}

	// The cache: by the authenticated and the deprecated path, with and
	// without ts (two days back falls in an older bucket, which has no
	// version: the current one is served), the page is fetched once.
	previewPaths := []string{"/_matrix/client/v1/media/preview_url", "/_matrix/media/v3/preview_url"}
	for i, ts := range []string{"", fmt.Sprint(time.Now().UnixMilli()), fmt.Sprint(time.Now().Add(-48 * time.Hour).UnixMilli()), ""} {
		q := "?url=" + url.QueryEscape(site.url("/cached"))
		if ts != "" {
			q += "&ts=" + ts
		}
		code, body := rawRequest(t, http.MethodGet, hs+previewPaths[i%2]+q, alice.AccessToken, nil)
		var got map[string]any
		if code != 200 || json.Unmarshal(body, &got) != nil || got["og:title"] != "Cached" {
			t.Errorf("cached preview %d (ts %q): %d %s", i, ts, code, body)
		}
	}
	if n := site.hits["/cached"].Load(); n != 1 {
		t.Errorf("the cached page was fetched %d times, want 1", n)
	}
	conn, err := pgx.Connect(ctx, s.Config.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rows int
	var stored string
	if err := conn.QueryRow(ctx, `SELECT count(*) OVER (), preview::text FROM media.url_previews WHERE url = $1`, site.url("/cached")).Scan(&rows, &stored); err != nil || rows != 1 || !strings.Contains(stored, "Cached") {
		t.Errorf("cache rows of the page: %d %q %v", rows, stored, err)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/preview_url?ts=yesterday&url="+url.QueryEscape(site.url("/cached")), alice.AccessToken, nil); code != 400 || !strings.Contains(string(body), "M_INVALID_PARAM") {
		t.Errorf("bad ts: %d %s", code, body)
	}

	// The image of a preview is served to other users too.
	bob := newUser(t, hs, "bob")
	if _, _, err := mediaBody(bob.Download(ctx, id.ContentURI{Homeserver: imageURI.Homeserver, FileID: imageURI.FileID})); err != nil {
		t.Errorf("another user downloading og:image: %v", err)
	}
}
