package media_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
)

// adminClient registers a server admin through shared-secret registration.
func adminClient(t *testing.T, hs, secret, name string) *mautrix.Client {
	t.Helper()
	ctx := context.Background()
	admin, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if _, err := admin.MakeRequest(ctx, "GET", hs+"/_synapse/admin/v1/register", nil, &nonce); err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce.Nonce + "\x00" + name + "\x00" + name + "-pw\x00admin"))
	var reg mautrix.RespRegister
	if _, err := admin.MakeRequest(ctx, "POST", hs+"/_synapse/admin/v1/register", map[string]any{
		"nonce": nonce.Nonce, "username": name, "password": name + "-pw", "admin": true, "mac": hex.EncodeToString(m.Sum(nil)),
	}, &reg); err != nil {
		t.Fatal(err)
	}
	admin.SetCredentials(reg.UserID, reg.AccessToken)
	return admin
}

// The media service gives the same answers as the client-API for what the
// client-API's UserService says about a token: guests, locked and
// suspended accounts, expired tokens; and it rate limits uploads per user,
// admins excepted.
func TestMediaAccounts(t *testing.T) {
	const secret = "media-secret"
	s := startStack(t, func(cfg *myelin.Config) {
		cfg.ClientAPI.Registration.SharedSecret = secret
		cfg.ClientAPI.Registration.GuestAccess = true
		cfg.ClientAPI.Registration.AccessTokenLifetime = time.Second
		cfg.Media.RateLimit.PerSecond = 0.001
		cfg.Media.RateLimit.Burst = 3
	})
	hs := s.URL()
	ctx := context.Background()
	admin := adminClient(t, hs, secret, "root")
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	up, err := bob.UploadBytes(ctx, []byte("bob's"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}

	// Guests may not use media.
	guest, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	greg, _, err := guest.RegisterGuest(ctx, &mautrix.ReqRegister[any]{})
	if err != nil {
		t.Fatal(err)
	}
	guest.SetCredentials(greg.UserID, greg.AccessToken)
	_, err = guest.UploadBytes(ctx, []byte("x"), "text/plain")
	wantMatrixError(t, "guest upload", err, http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")
	_, _, err = mediaBody(guest.Download(ctx, up.ContentURI))
	wantMatrixError(t, "guest download", err, http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")

	put := func(kind, user string, on bool) {
		t.Helper()
		field := map[string]string{"lock": "locked", "suspend": "suspended"}[kind]
		if _, err := admin.MakeRequest(ctx, http.MethodPut, admin.BuildClientURL("v1", "admin", kind, user), map[string]bool{field: on}, nil); err != nil {
			t.Fatalf("%s %s: %v", kind, user, err)
		}
	}
	// A suspended account may download but not upload or create.
	put("suspend", alice.UserID.String(), true)
	_, err = alice.UploadBytes(ctx, []byte("x"), "text/plain")
	wantMatrixError(t, "suspended upload", err, http.StatusForbidden, "M_USER_SUSPENDED")
	_, err = alice.CreateMXC(ctx)
	wantMatrixError(t, "suspended create", err, http.StatusForbidden, "M_USER_SUSPENDED")
	if _, body, err := mediaBody(alice.Download(ctx, up.ContentURI)); err != nil || string(body) != "bob's" {
		t.Errorf("suspended download: %q, %v", body, err)
	}
	put("suspend", alice.UserID.String(), false)
	// A locked one may do nothing, with a soft logout.
	put("lock", alice.UserID.String(), true)
	mediaPath := hs + "/_matrix/client/v1/media/download/" + up.ContentURI.Homeserver + "/" + up.ContentURI.FileID
	if code, body := rawRequest(t, http.MethodGet, mediaPath, alice.AccessToken, nil); code != 401 ||
		!strings.Contains(string(body), "M_USER_LOCKED") || !strings.Contains(string(body), `"soft_logout":true`) {
		t.Errorf("locked download: %d %s", code, body)
	}
	put("lock", alice.UserID.String(), false)

	// Uploads and creates share a bucket of 3 per user; admins have none.
	for i := range 3 {
		if _, err := alice.UploadBytes(ctx, []byte{byte(i)}, "text/plain"); err != nil {
			t.Fatalf("upload %d within the burst: %v", i, err)
		}
	}
	_, err = alice.CreateMXC(ctx)
	wantMatrixError(t, "create past the burst", err, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
	if _, body, err := mediaBody(alice.Download(ctx, up.ContentURI)); err != nil || string(body) != "bob's" {
		t.Errorf("downloads are not limited: %q, %v", body, err)
	}
	for i := range 5 {
		if _, err := admin.UploadBytes(ctx, []byte{byte(i)}, "text/plain"); err != nil {
			t.Fatalf("admin upload %d: %v", i, err)
		}
	}

	// An expired access token (issued with a refresh token): a soft
	// logout, as from the client-API.
	cli, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var reg struct {
		AccessToken string `json:"access_token"`
	}
	if _, err := cli.MakeRequest(ctx, http.MethodPost, cli.BuildClientURL("v3", "register"), map[string]any{
		"username": "carol", "password": "pw-carol", "refresh_token": true, "auth": map[string]string{"type": "m.login.dummy"},
	}, &reg); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		code, body := rawRequest(t, http.MethodGet, mediaPath, reg.AccessToken, nil)
		if code == 401 && strings.Contains(string(body), "M_UNKNOWN_TOKEN") && strings.Contains(string(body), `"soft_logout":true`) {
			return nil
		}
		return fmt.Errorf("download with a token past its lifetime: %d %s", code, body)
	})
}

// media.max_user_total caps what one user may upload in all, whether the
// upload declares its length or not.
func TestMediaQuota(t *testing.T) {
	s := startStack(t, func(cfg *myelin.Config) { cfg.Media.MaxUserTotal = 1000 })
	hs := s.URL()
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	if _, err := alice.UploadBytes(ctx, make([]byte, 600), "application/octet-stream"); err != nil {
		t.Fatal(err)
	}
	_, err := alice.UploadBytes(ctx, make([]byte, 600), "application/octet-stream")
	wantMatrixError(t, "upload past the quota", err, http.StatusForbidden, "M_FORBIDDEN")
	code, body := rawRequest(t, http.MethodPost, hs+"/_matrix/media/v3/upload", alice.AccessToken, strings.NewReader(strings.Repeat("x", 600)))
	if code != http.StatusForbidden || !strings.Contains(string(body), "M_FORBIDDEN") {
		t.Errorf("upload past the quota, length found while streaming: %d %s", code, body)
	}
	created, err := alice.CreateMXC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: make([]byte, 600), ContentType: "text/plain", MXC: created.ContentURI})
	wantMatrixError(t, "upload to a created ID past the quota", err, http.StatusForbidden, "M_FORBIDDEN")
	if _, err := alice.UploadBytes(ctx, make([]byte, 400), "application/octet-stream"); err != nil {
		t.Errorf("upload up to the quota: %v", err)
	}
	if _, err := bob.UploadBytes(ctx, make([]byte, 600), "application/octet-stream"); err != nil {
		t.Errorf("another user's upload: %v", err)
	}
	if n := countRows(t, s, "pending_objects"); n != 0 {
		t.Errorf("%d pending objects left after refused uploads", n)
	}
}

// With media.unauthenticated_download the deprecated endpoints serve media.
func TestMediaUnauthenticatedDownload(t *testing.T) {
	s := startStack(t, func(cfg *myelin.Config) { cfg.Media.UnauthenticatedDownload = true })
	hs := s.URL()
	alice := newUser(t, hs, "alice")
	up, err := alice.UploadBytes(context.Background(), []byte("hello"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v3", "r0"} {
		if code, body := rawRequest(t, http.MethodGet, hs+"/_matrix/media/"+v+"/download/"+up.ContentURI.Homeserver+"/"+up.ContentURI.FileID, "", nil); code != 200 || string(body) != "hello" {
			t.Errorf("legacy %s download: %d %q", v, code, body)
		}
	}
}
