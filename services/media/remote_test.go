package media_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap/zaptest"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// publishedKeys verifies X-Matrix signatures with the keys a server
// publishes on /_matrix/key/v2/server of its federation listener, fetched
// over HTTPS (checked against the test CA) on first use.
type publishedKeys struct {
	ca   *testkit.CA
	addr atomic.Pointer[string] // the federation listener, once it runs

	mu   sync.Mutex
	keys map[gomatrixserverlib.KeyID]ed25519.PublicKey
}

func (p *publishedKeys) fetch(ctx context.Context, server spec.ServerName) (map[gomatrixserverlib.KeyID]ed25519.PublicKey, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys != nil {
		return p.keys, nil
	}
	addr := p.addr.Load()
	if addr == nil {
		return nil, fmt.Errorf("no address for %s yet", server)
	}
	pem, err := os.ReadFile(p.ca.CertFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: string(server), MinVersion: tls.VersionTLS12}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+*addr+"/_matrix/key/v2/server", nil)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		ServerName spec.ServerName `json:"server_name"`
		VerifyKeys map[gomatrixserverlib.KeyID]struct {
			Key spec.Base64Bytes `json:"key"`
		} `json:"verify_keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.ServerName != server {
		return nil, fmt.Errorf("keys of %s: %v (server_name %q)", server, err, body.ServerName)
	}
	p.keys = map[gomatrixserverlib.KeyID]ed25519.PublicKey{}
	for kid, k := range body.VerifyKeys {
		p.keys[kid] = ed25519.PublicKey(k.Key)
	}
	return p.keys, nil
}

// VerifyJSONs implements gomatrixserverlib.JSONVerifier.
func (p *publishedKeys) VerifyJSONs(ctx context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		keys, err := p.fetch(ctx, r.ServerName)
		if err != nil {
			return nil, err
		}
		out[i].Error = fmt.Errorf("no key of %s verifies", r.ServerName)
		for kid, pub := range keys {
			if gomatrixserverlib.VerifyJSON(string(r.ServerName), kid, pub, r.Message) == nil {
				out[i].Error = nil
				break
			}
		}
	}
	return out, nil
}

// remoteServer is the other homeserver: real HTTPS with a certificate
// from the test CA for its server name (and 127.0.0.1, for the Location
// URLs it hands out), serving the spec's federation media endpoints behind
// X-Matrix verification (pkg/federation's Authenticator), or, for a server
// that predates them, only the deprecated /_matrix/media/v3 ones.
type remoteServer struct {
	name    string
	srv     *httptest.Server
	mu      sync.Mutex
	hits    map[string]int // "METHOD path?query" → count
	origins map[string]bool
	// release, when set, holds the answer for "slow" until closed.
	release chan struct{}
}

func (rs *remoteServer) hit(r *http.Request) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.hits[r.URL.Path]++
	if o := federation.Origin(r.Context()); o != "" {
		rs.origins[string(o)] = true
	}
}

func (rs *remoteServer) hitsOf(path string) int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.hits[path]
}

func (rs *remoteServer) addr() string { return rs.srv.Listener.Addr().String() }

// writeMultipart writes the spec's two-part answer: {} then either the
// content with its headers or a Location.
func writeMultipart(w http.ResponseWriter, partHeader textproto.MIMEHeader, content []byte) {
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	meta, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	_, _ = meta.Write([]byte("{}"))
	part, _ := mw.CreatePart(partHeader)
	_, _ = part.Write(content)
	_ = mw.Close()
}

func matrixError(w http.ResponseWriter, status int, errcode string, extra string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"errcode":%q,"error":"test"%s}`, errcode, extra)
}

// newRemoteServer starts the remote homeserver name. With legacy, it has
// no federation media endpoints (404 M_UNRECOGNIZED) and serves media on
// /_matrix/media/v3 only, when asked with allow_remote=false.
func newRemoteServer(t *testing.T, ca *testkit.CA, name string, keys *publishedKeys, legacy bool, files map[string][]byte, thumb []byte) *remoteServer {
	t.Helper()
	rs := &remoteServer{name: name, hits: map[string]int{}, origins: map[string]bool{}}
	r := chi.NewRouter()
	auth := federation.NewAuthenticator(spec.ServerName(name), keys, zaptest.NewLogger(t))
	contentHeader := textproto.MIMEHeader{"Content-Type": {"image/png"}, "Content-Disposition": {`inline; filename="remote pic.png"`}}
	r.Group(func(r chi.Router) {
		r.Use(auth.Middleware)
		r.Get("/_matrix/federation/v1/media/download/{mediaId}", func(w http.ResponseWriter, req *http.Request) {
			rs.hit(req)
			if legacy {
				matrixError(w, 404, "M_UNRECOGNIZED", "")
				return
			}
			switch mid := chi.URLParam(req, "mediaId"); mid {
			case "located":
				writeMultipart(w, textproto.MIMEHeader{"Location": {"https://" + rs.addr() + "/cdn/located"}}, nil)
			case "missing":
				matrixError(w, 404, "M_NOT_FOUND", "")
			case "busy":
				matrixError(w, 429, "M_LIMIT_EXCEEDED", `,"retry_after_ms":1234`)
			case "toolarge":
				matrixError(w, 502, "M_TOO_LARGE", "")
			case "notyet":
				matrixError(w, 504, "M_NOT_YET_UPLOADED", "")
			case "garbage":
				w.Header().Set("Content-Type", "text/plain")
				_, _ = w.Write([]byte("this is not multipart"))
			case "slow":
				<-rs.release
				writeMultipart(w, contentHeader, files["pic"])
			default:
				content, ok := files[mid]
				if !ok {
					matrixError(w, 404, "M_NOT_FOUND", "")
					return
				}
				writeMultipart(w, contentHeader, content)
			}
		})
		r.Get("/_matrix/federation/v1/media/thumbnail/{mediaId}", func(w http.ResponseWriter, req *http.Request) {
			rs.hit(req)
			if legacy {
				matrixError(w, 404, "M_UNRECOGNIZED", "")
				return
			}
			q := req.URL.Query()
			if chi.URLParam(req, "mediaId") != "pic" || q.Get("width") != "32" || q.Get("height") != "32" || q.Get("method") != "crop" {
				matrixError(w, 400, "M_UNKNOWN", "")
				return
			}
			writeMultipart(w, textproto.MIMEHeader{"Content-Type": {"image/png"}}, thumb)
		})
	})
	r.Get("/cdn/located", func(w http.ResponseWriter, req *http.Request) {
		rs.hit(req)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="notes.txt"`)
		_, _ = w.Write([]byte("content behind a Location"))
	})
	r.Get("/_matrix/media/v3/download/{server}/{mediaId}", func(w http.ResponseWriter, req *http.Request) {
		rs.hit(req)
		content, ok := files[chi.URLParam(req, "mediaId")]
		if !legacy || chi.URLParam(req, "server") != name || req.URL.Query().Get("allow_remote") != "false" || !ok {
			matrixError(w, 404, "M_NOT_FOUND", "")
			return
		}
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Disposition", `inline; filename="old pic.png"`)
		_, _ = w.Write(content)
	})
	r.Get("/_matrix/media/v3/thumbnail/{server}/{mediaId}", func(w http.ResponseWriter, req *http.Request) {
		rs.hit(req)
		if !legacy || req.URL.Query().Get("allow_remote") != "false" {
			matrixError(w, 404, "M_NOT_FOUND", "")
			return
		}
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(thumb)
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := ca.Issue(t, name, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	rs.srv = &httptest.Server{Listener: lis, Config: &http.Server{Handler: r}, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}
	rs.srv.StartTLS()
	t.Cleanup(rs.srv.Close)
	return rs
}

// TestRemoteMedia: clients of hs1.test ask for media of hs2.test (the
// federation media endpoints) and old.test (only the deprecated ones);
// hs1's media service fetches it over federation through the static
// server-name map, the test CA and the loopback allow-list, signed with
// X-Matrix that the remote verifies against hs1's published keys, keeps
// it, and serves it.
func TestRemoteMedia(t *testing.T) {
	ca := testkit.NewCA(t)
	keys := &publishedKeys{ca: ca}
	pic := testPNG(t, 200, 150)
	thumb := testPNG(t, 32, 32)
	files := map[string][]byte{"pic": pic, "big": bytes.Repeat([]byte("x"), 2<<20), "plain": []byte("plain old file")}
	hs2 := newRemoteServer(t, ca, "hs2.test", keys, false, files, thumb)
	hs2.release = make(chan struct{})
	old := newRemoteServer(t, ca, "old.test", keys, true, files, thumb)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := closed.Addr().String()
	closed.Close()

	cfg := stack.TestConfig(t)
	cfg.ServerName = "hs1.test"
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = ca.Issue(t, "hs1.test")
	cfg.Federation.TrustedCAFiles = []string{ca.CertFile}
	cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	cfg.Federation.ServerNameMap = map[string]string{"hs2.test": hs2.addr(), "old.test": old.addr(), "down.test": downAddr}
	cfg.Media.Remote.MaxSize = 1 << 20
	cfg.Media.UnauthenticatedDownload = true
	s := stack.StartWithConfig(t, cfg)
	fedAddr := s.Process.FederationAddr()
	keys.addr.Store(&fedAddr)
	hs := s.URL()
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	remote := func(server, mediaID string) id.ContentURI { return id.ContentURI{Homeserver: server, FileID: mediaID} }

	// Fetched over the federation endpoint, kept, served with the remote
	// file's type and name; the second download does not ask again.
	resp, body, err := mediaBody(alice.Download(ctx, remote("hs2.test", "pic")))
	if err != nil || !bytes.Equal(body, pic) {
		t.Fatalf("remote download: %v (%d bytes)", err, len(body))
	}
	if ct, cd := resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"); ct != "image/png" || cd != "inline; filename*=utf-8''remote%20pic.png" {
		t.Errorf("remote download headers: %q %q", ct, cd)
	}
	if _, body, err := mediaBody(bob.Download(ctx, remote("hs2.test", "pic"))); err != nil || !bytes.Equal(body, pic) {
		t.Errorf("second remote download: %v", err)
	}
	if n := hs2.hitsOf("/_matrix/federation/v1/media/download/pic"); n != 1 {
		t.Errorf("hs2 was asked %d times for pic, want 1", n)
	}
	if !hs2.origins["hs1.test"] {
		t.Errorf("hs2 verified no request from hs1.test: %v", hs2.origins)
	}
	// Thumbnails: a 30x30 crop is asked of the remote as the spec's 32x32
	// crop, kept, and served again without asking.
	for range 2 {
		_, body, err := mediaBody(alice.DownloadThumbnail(ctx, remote("hs2.test", "pic"), 30, 30, mautrix.DownloadThumbnailExtra{Method: "crop"}))
		if err != nil || !bytes.Equal(body, thumb) {
			t.Errorf("remote thumbnail: %v (%d bytes)", err, len(body))
		}
	}
	if n := hs2.hitsOf("/_matrix/federation/v1/media/thumbnail/pic"); n != 1 {
		t.Errorf("hs2 was asked %d times for the thumbnail, want 1", n)
	}
	// A thumbnail larger than every recommended size is the original.
	if _, body, err := mediaBody(alice.DownloadThumbnail(ctx, remote("hs2.test", "pic"), 1000, 1000)); err != nil || !bytes.Equal(body, pic) {
		t.Errorf("large remote thumbnail: %v", err)
	}

	// The answer's Location: fetched from there (never kept as a URL).
	resp, body, err = mediaBody(alice.Download(ctx, remote("hs2.test", "located")))
	if err != nil || string(body) != "content behind a Location" || resp.Header.Get("Content-Disposition") != "inline; filename*=utf-8''notes.txt" {
		t.Errorf("download through a Location: %v %q %q", err, body, resp.Header.Get("Content-Disposition"))
	}

	// A server without the federation media endpoints: the deprecated
	// ones, with allow_remote=false.
	resp, body, err = mediaBody(alice.Download(ctx, remote("old.test", "plain")))
	if err != nil || string(body) != "plain old file" || resp.Header.Get("Content-Disposition") != "inline; filename*=utf-8''old%20pic.png" {
		t.Errorf("download from a server without federation media: %v %q", err, body)
	}
	if _, body, err := mediaBody(alice.DownloadThumbnail(ctx, remote("old.test", "pic"), 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"})); err != nil || !bytes.Equal(body, thumb) {
		t.Errorf("thumbnail from a server without federation media: %v", err)
	}
	if old.hitsOf("/_matrix/federation/v1/media/download/plain") != 1 || old.hitsOf("/_matrix/media/v3/download/old.test/plain") != 1 {
		t.Errorf("old.test requests: %v", old.hits)
	}

	// Failures become the spec's errors.
	for _, c := range []struct {
		uri     id.ContentURI
		status  int
		errcode string
	}{
		{remote("hs2.test", "missing"), 404, "M_NOT_FOUND"},
		{remote("old.test", "missing"), 404, "M_NOT_FOUND"},
		{remote("hs2.test", "busy"), 429, "M_LIMIT_EXCEEDED"},
		{remote("hs2.test", "toolarge"), 502, "M_TOO_LARGE"},
		{remote("hs2.test", "big"), 502, "M_TOO_LARGE"}, // 2 MiB, over our 1 MiB
		{remote("hs2.test", "notyet"), 504, "M_NOT_YET_UPLOADED"},
		{remote("hs2.test", "garbage"), 502, "M_UNKNOWN"},
		{remote("down.test", "pic"), 502, "M_UNKNOWN"},
		{remote("bad_name!", "pic"), 404, "M_NOT_FOUND"},
	} {
		_, _, err := mediaBody(alice.Download(ctx, c.uri))
		wantMatrixError(t, "download of "+c.uri.String(), err, c.status, c.errcode)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/client/v1/media/download/hs2.test/busy", alice.AccessToken, nil); code != 429 || !strings.Contains(string(body), `"retry_after_ms":1234`) {
		t.Errorf("429 without the remote's retry_after_ms: %d %s", code, body)
	}
	// Nothing of the oversized file is kept: no row, no content, no
	// pending upload.
	conn, err := pgx.Connect(ctx, s.Config.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rows, pending int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM media.remote_media WHERE media_id = 'big'), (SELECT count(*) FROM media.pending_objects)`).Scan(&rows, &pending); err != nil || rows != 0 || pending != 0 {
		t.Errorf("after the oversized remote file: %d rows, %d pending objects (%v)", rows, pending, err)
	}
	_ = filepath.WalkDir(filepath.Join(s.Config.DataDir, "media"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "big.") {
			t.Errorf("content of the oversized remote file left at %s", p)
		}
		return nil
	})

	// Concurrent requests for one remote file fetch it once: the remote
	// holds its answer until every request has been sent.
	const parallel = 6
	var sent sync.WaitGroup
	sent.Add(parallel)
	results := make(chan error, parallel)
	for range parallel {
		go func() {
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { sent.Done() }}
			_, body, err := mediaBody(bob.Download(httptrace.WithClientTrace(ctx, trace), remote("hs2.test", "slow")))
			if err == nil && !bytes.Equal(body, pic) {
				err = fmt.Errorf("%d bytes", len(body))
			}
			results <- err
		}()
	}
	sent.Wait()
	testkit.Eventually(t, time.Minute, func() error {
		if hs2.hitsOf("/_matrix/federation/v1/media/download/slow") == 0 {
			return errors.New("hs2 not asked yet")
		}
		return nil
	})
	close(hs2.release)
	for range parallel {
		if err := <-results; err != nil {
			t.Errorf("concurrent download: %v", err)
		}
	}
	if n := hs2.hitsOf("/_matrix/federation/v1/media/download/slow"); n != 1 {
		t.Errorf("%d concurrent downloads asked hs2 %d times, want once", parallel, n)
	}

	// The deprecated unauthenticated endpoint (unauthenticated_download
	// is on here) serves remote media too, unless allow_remote=false.
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/media/v3/download/hs2.test/pic", "", nil); code != 200 || !bytes.Equal(body, pic) {
		t.Errorf("legacy download of remote media: %d", code)
	}
	if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/media/v3/download/hs2.test/pic?allow_remote=false", "", nil); code != 404 || !strings.Contains(string(body), "M_NOT_FOUND") {
		t.Errorf("legacy download of remote media with allow_remote=false: %d %s", code, body)
	}
}

// TestRemoteMediaOff: without federation (the default), remote media is
// 404 and nothing is asked.
func TestRemoteMediaOff(t *testing.T) {
	ca := testkit.NewCA(t)
	keys := &publishedKeys{ca: ca}
	hs2 := newRemoteServer(t, ca, "hs2.test", keys, false, map[string][]byte{"pic": []byte("x")}, nil)
	s := startStack(t, func(cfg *myelin.Config) {
		cfg.Federation.ServerNameMap = map[string]string{"hs2.test": hs2.addr()}
		cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	})
	alice := newUser(t, s.URL(), "alice")
	_, _, err := mediaBody(alice.Download(context.Background(), id.ContentURI{Homeserver: "hs2.test", FileID: "pic"}))
	wantMatrixError(t, "remote media with federation off", err, 404, "M_NOT_FOUND")
	if n := hs2.hitsOf("/_matrix/federation/v1/media/download/pic"); n != 0 {
		t.Errorf("hs2 was asked %d times", n)
	}
}
