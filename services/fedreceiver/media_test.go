package fedreceiver_test

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// multipartParts reads a multipart/mixed federation media answer.
func multipartParts(t *testing.T, contentType string, body []byte) (meta []byte, header map[string][]string, content []byte) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		t.Fatalf("Content-Type %q", contentType)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(p)
		parts = append(parts, data)
		if len(parts) == 1 && p.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("first part's Content-Type %q", p.Header.Get("Content-Type"))
		}
		if len(parts) == 2 {
			header = p.Header
		}
	}
	if len(parts) != 2 {
		t.Fatalf("%d parts, want 2", len(parts))
	}
	return parts[0], header, parts[1]
}

// TestFederationMedia: another server downloads this server's media and a
// thumbnail of it over the federation API (X-Matrix, multipart/mixed),
// served by the media service.
func TestFederationMedia(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	img := image.NewRGBA(image.Rect(0, 0, 200, 150))
	for y := range 150 {
		for x := range 200 {
			img.Set(x, y, color.RGBA{R: uint8(x), G: uint8(y), B: 99, A: 255})
		}
	}
	var pngData bytes.Buffer
	if err := png.Encode(&pngData, img); err != nil {
		t.Fatal(err)
	}
	up, err := alice.UploadMedia(e.ctx, mautrix.ReqUploadMedia{ContentBytes: pngData.Bytes(), ContentType: "image/png", FileName: "picture.png"})
	if err != nil {
		t.Fatal(err)
	}
	mediaID := up.ContentURI.FileID
	status, header, body := e.remote.DoWithHeaders(fedpeer.Request{Method: "GET", Path: "/_matrix/federation/v1/media/download/" + mediaID})
	if status != 200 {
		t.Fatalf("download: %d %s", status, body)
	}
	meta, partHeader, content := multipartParts(t, header.Get("Content-Type"), body)
	if string(meta) != "{}" || !bytes.Equal(content, pngData.Bytes()) || partHeader["Content-Type"][0] != "image/png" ||
		!strings.Contains(partHeader["Content-Disposition"][0], "picture.png") {
		t.Fatalf("download parts: meta %s, %d bytes, headers %v", meta, len(content), partHeader)
	}
	status, header, body = e.remote.DoWithHeaders(fedpeer.Request{Method: "GET", Path: "/_matrix/federation/v1/media/thumbnail/" + mediaID + "?width=32&height=32&method=crop"})
	if status != 200 {
		t.Fatalf("thumbnail: %d %s", status, body)
	}
	_, partHeader, content = multipartParts(t, header.Get("Content-Type"), body)
	thumb, _, err := image.Decode(bytes.NewReader(content))
	if err != nil || thumb.Bounds().Dx() != 32 || partHeader["Content-Type"][0] == "" {
		t.Fatalf("thumbnail: %v %v", err, partHeader)
	}
	for _, c := range []struct {
		req    fedpeer.Request
		status int
	}{
		{fedpeer.Request{Method: "GET", Path: "/_matrix/federation/v1/media/download/" + mediaID, Unsigned: true}, 401},
		{fedpeer.Request{Method: "GET", Path: "/_matrix/federation/v1/media/download/nosuchmedia"}, 404},
		{fedpeer.Request{Method: "GET", Path: "/_matrix/federation/v1/media/download/bad%20id"}, 404},
		{fedpeer.Request{Method: "GET", Path: "/_matrix/federation/v1/media/thumbnail/" + mediaID + "?width=0&height=0"}, 400},
	} {
		if status, body := e.remote.Do(c.req); status != c.status {
			t.Errorf("GET %s: %d %s, want %d", c.req.Path, status, body, c.status)
		}
	}
}

// TestRemoteMediaBetweenTwoServers: a second Myelin server's user
// downloads the first's media through the client API; the second's media
// service fetches it from the first's federation media endpoint (X-Matrix
// signed with the second's key, verified by the first with its keys
// fetched over HTTPS).
func TestRemoteMediaBetweenTwoServers(t *testing.T) {
	hs2Addr := freeLoopback(t)
	e := newEnv(t, func(c *myelin.Config) {
		c.Federation.ServerNameMap["hs2.test"] = hs2Addr
	})
	cfg := stack.TestConfig(t)
	cfg.ServerName = "hs2.test"
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = hs2Addr
	cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = e.ca.Issue(t, "hs2.test")
	cfg.Federation.TrustedCAFiles = []string{e.ca.CertFile}
	cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	cfg.Federation.ServerNameMap = map[string]string{hsName: e.fedAddr}
	hs2 := stack.StartWithConfig(t, cfg)

	alice := e.localUser("alice")
	content := []byte("a file that travels between servers")
	up, err := alice.UploadMedia(e.ctx, mautrix.ReqUploadMedia{ContentBytes: content, ContentType: "text/plain", FileName: "note.txt"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := mautrix.NewClient(hs2.URL(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := bob.RegisterDummy(e.ctx, &mautrix.ReqRegister[any]{Username: "bob", Password: "pw-bob"})
	if err != nil {
		t.Fatal(err)
	}
	bob.SetCredentials(reg.UserID, reg.AccessToken)
	got, err := bob.DownloadBytes(e.ctx, up.ContentURI)
	if err != nil {
		t.Fatalf("bob on hs2 downloads alice's media from hs1: %v", err)
	}
	if !bytes.Equal(got, content) {
		t.Fatalf("downloaded %q", got)
	}
}

// freeLoopback is a loopback address free a moment ago.
func freeLoopback(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
