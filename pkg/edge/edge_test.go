package edge_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/pkg/edge"
)

func TestForwardsByPrefix(t *testing.T) {
	client := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "client:"+r.URL.Path+"?"+r.URL.RawQuery)
	}))
	defer client.Close()
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "keys:"+r.URL.Path)
	}))
	defer keys.Close()

	r := chi.NewRouter()
	err := edge.Mount(r, []edge.Route{
		{Prefix: "/_matrix/client/", Upstream: client.URL, Service: "client-api"},
		{Prefix: "/_matrix/key/", Upstream: keys.Listener.Addr().String(), Service: "key-server"},
	})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(r)
	defer front.Close()
	for path, want := range map[string]string{
		"/_matrix/client/v3/sync?since=s1": "client:/_matrix/client/v3/sync?since=s1",
		"/_matrix/key/v2/server":           "keys:/_matrix/key/v2/server",
	} {
		res, err := http.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != want {
			t.Errorf("%s: got %q, want %q", path, body, want)
		}
	}
}

func TestUpstreamDownIsMatrixError(t *testing.T) {
	r := chi.NewRouter()
	if err := edge.Mount(r, []edge.Route{{Prefix: "/_matrix/client/", Upstream: "127.0.0.1:1", Service: "client-api"}}); err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(r)
	defer front.Close()
	res, err := http.Get(front.URL + "/_matrix/client/versions")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var e struct{ ErrCode string }
	_ = json.NewDecoder(res.Body).Decode(&e)
	if res.StatusCode != http.StatusBadGateway || e.ErrCode != "M_UNKNOWN" {
		t.Fatalf("got %d %q", res.StatusCode, e.ErrCode)
	}
}

func TestMissingUpstreamIsConfigError(t *testing.T) {
	if err := edge.Mount(chi.NewRouter(), []edge.Route{{Prefix: "/_matrix/key/", Service: "key-server"}}); err == nil {
		t.Fatal("empty upstream accepted")
	}
}

// The media service's paths sit inside the client API's prefix: the longer
// prefix wins, whatever the order of the routes.
func TestLongestPrefixWins(t *testing.T) {
	upstream := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, name+":"+r.URL.Path)
		}))
		t.Cleanup(s.Close)
		return s
	}
	client, media := upstream("client"), upstream("media")
	r := chi.NewRouter()
	err := edge.Mount(r, []edge.Route{
		{Prefix: "/_matrix/client/", Upstream: client.URL, Service: "client-api"},
		{Prefix: "/_matrix/media/", Upstream: media.URL, Service: "media"},
		{Prefix: "/_matrix/client/v1/media/", Upstream: media.URL, Service: "media"},
	})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(r)
	defer front.Close()
	for path, want := range map[string]string{
		"/_matrix/client/v1/media/download/hs/abc": "media:/_matrix/client/v1/media/download/hs/abc",
		"/_matrix/client/v1/media/config":          "media:/_matrix/client/v1/media/config",
		"/_matrix/media/v3/upload":                 "media:/_matrix/media/v3/upload",
		"/_matrix/client/v1/rooms/x/threads":       "client:/_matrix/client/v1/rooms/x/threads",
		"/_matrix/client/v3/sync":                  "client:/_matrix/client/v3/sync",
	} {
		res, err := http.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != want {
			t.Errorf("%s: got %q, want %q", path, body, want)
		}
	}
}
