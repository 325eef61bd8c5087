package matrixhttp

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap/zaptest"
)

// A handler that panics answers 500 M_UNKNOWN over real HTTP, and the
// server goes on serving.
func TestRecoverAnswersPanicsWithMatrixError(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/boom", func(http.ResponseWriter, *http.Request) { panic("boom") })
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { WriteJSON(w, http.StatusOK, map[string]string{}) })
	srv := httptest.NewServer(Recover(zaptest.NewLogger(t))(mux))
	defer srv.Close()

	res, err := http.Get(srv.URL + "/boom")
	if err != nil {
		t.Fatalf("panicking handler dropped the connection: %v", err)
	}
	var body Error
	err = json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusInternalServerError || body.ErrCode != "M_UNKNOWN" {
		t.Fatalf("got %d %+v %v, want 500 M_UNKNOWN", res.StatusCode, body, err)
	}
	res, err = http.Get(srv.URL + "/ok")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("server after a panic: %v %v", res, err)
	}
	res.Body.Close()
}
