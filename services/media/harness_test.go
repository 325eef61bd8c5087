package media_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// startStack runs every service in one process (the media service reaches
// the client-API's UserService over gRPC, as in production) on real
// PostgreSQL, NATS and HTTP; edit changes the configuration first.
func startStack(t *testing.T, edit func(*myelin.Config)) *stack.Stack {
	t.Helper()
	cfg := stack.TestConfig(t)
	if edit != nil {
		edit(&cfg)
	}
	return stack.StartWithConfig(t, cfg)
}

// newUser registers a user through mautrix-go.
func newUser(t *testing.T, hs, username string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: username, Password: "pw-" + username})
	if err != nil {
		t.Fatalf("register %s: %v", username, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

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

// rawRequest is an HTTP request with an optional access token, for what
// a client library does not send (no token, no Content-Length).
func rawRequest(t *testing.T, method, url, token string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
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
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}
