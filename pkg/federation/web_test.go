package federation_test

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/myelin-chat/myelin/pkg/federation"
)

// NewWebTransport dials through the federation dialer: loopback is
// refused unless allowed, after a redirect too, and by name too.
func TestWebTransport(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	t.Cleanup(target.Close)
	lis, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	hop := &httptest.Server{Listener: lis, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL, http.StatusFound)
	})}}
	hop.Start()
	t.Cleanup(hop.Close)
	_, port, _ := net.SplitHostPort(target.Listener.Addr().String())

	get := func(allowed []string, url string) error {
		tr, err := federation.NewWebTransport(federation.WebOptions{AllowedNetworks: allowed})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Get(url)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	for _, c := range []struct {
		allowed []string
		url     string
		refused bool
	}{
		{nil, target.URL, true},
		{nil, "http://localhost:" + port, true},
		{[]string{"127.0.0.1/32"}, target.URL, false},
		{[]string{"127.0.0.1/32"}, "http://localhost:" + port, false},
		{[]string{"127.0.0.2/32"}, hop.URL, true}, // the redirect leads to 127.0.0.1
		{[]string{"127.0.0.0/8"}, hop.URL, false},
	} {
		err := get(c.allowed, c.url)
		if refused := errors.Is(err, federation.ErrForbiddenAddress); refused != c.refused || (!c.refused && err != nil) {
			t.Errorf("%s allowing %v: %v, want refused %v", c.url, c.allowed, err, c.refused)
		}
	}
	if _, err := federation.NewWebTransport(federation.WebOptions{AllowedNetworks: []string{"not a network"}}); err == nil {
		t.Error("a bad CIDR was accepted")
	}
}
