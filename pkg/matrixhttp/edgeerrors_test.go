package matrixhttp

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMatrixErrorsListener sends requests that Go's HTTP server refuses
// before any handler runs (raw, as no Go client sends them) to a real
// server on MatrixErrorsListener: each answer is JSON with an errcode and
// Go's status. A handler's own text/plain answer passes unchanged.
func TestMatrixErrorsListener(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "handler says hi")
		}),
		ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 4096,
	}
	go srv.Serve(MatrixErrorsListener(lis)) //nolint:errcheck
	t.Cleanup(func() { _ = srv.Close() })

	send := func(raw string) (*http.Response, []byte) {
		t.Helper()
		c, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}
	upload := "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Type: image/png\x01\x7f\r\n\r\nx"
	for _, c := range []struct {
		name, raw string
		status    int
		errcode   string
	}{
		{"control bytes in Content-Type", upload, 400, "M_INVALID_PARAM"},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400, "M_INVALID_PARAM"},
		{"header block too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", 431, "M_TOO_LARGE"},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zstd\r\n\r\n", 501, "M_UNRECOGNIZED"},
	} {
		resp, body := send(c.raw)
		var e map[string]string
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &e) != nil || e["errcode"] != c.errcode {
			t.Errorf("%s: %d %q %s, want %d %s", c.name, resp.StatusCode, resp.Header.Get("Content-Type"), body, c.status, c.errcode)
		}
	}
	resp, body := send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || string(body) != "handler says hi" {
		t.Errorf("handler answer changed: %d %s", resp.StatusCode, body)
	}
}
