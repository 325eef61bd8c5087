package keyserver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/federation"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

// seen records what the protected endpoint saw.
type seen struct {
	mu      sync.Mutex
	origins []string
	bodies  []string
}

func (s *seen) last() (string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.origins) == 0 {
		return "", ""
	}
	return s.origins[len(s.origins)-1], s.bodies[len(s.bodies)-1]
}

// TestXMatrix: hs1 serves a federation endpoint behind the X-Matrix
// authenticator, with hs2's keys from hs1's key-server (fetched over
// HTTPS). A request signed by gomatrixserverlib's federation client with
// hs2's key from its key-server is accepted and the handler sees the
// origin and the body; missing, malformed, wrongly addressed, badly signed
// or unknown-key requests get 401 M_UNAUTHORIZED, a body that is not JSON
// 400 M_NOT_JSON, and none reaches the handler.
func TestXMatrix(t *testing.T) {
	got := &seen{}
	protect := func(r chi.Router, n *node) {
		auth := federation.NewAuthenticator(spec.ServerName(n.name), federation.NewVerifier(n.keys, time.Minute), zaptest.NewLogger(t))
		r.With(auth.Middleware).Put("/_matrix/federation/v1/send/{txnID}", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			got.mu.Lock()
			got.origins = append(got.origins, string(federation.Origin(r.Context())))
			got.bodies = append(got.bodies, string(body))
			got.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"pdus":{}}`))
		})
	}
	// hs1 fetches hs2's keys again at once when asked for an unknown key ID
	// (by default not within 10 s of a fetch without it): the made-up key
	// ID below comes just before the real new key.
	noWait := func(cfg *keyserver.Config) { cfg.FetchRetryInterval = 0 }
	c := startCluster(t, nodeSpec{name: "hs1.test", mount: protect, cfg: noWait}, nodeSpec{name: "hs2.test"})
	hs2 := c.nodes["hs2.test"]
	ctx := context.Background()
	signer := federation.NewClient(hs2.transport, hs2.keys)

	// The real client, end to end.
	fc, err := signer.Federation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fc.SendTransaction(ctx, gomatrixserverlib.Transaction{
		TransactionID: "t1", Origin: "hs2.test", Destination: "hs1.test", OriginServerTS: spec.AsTimestamp(time.Now()),
		PDUs: []json.RawMessage{}, EDUs: []gomatrixserverlib.EDU{},
	})
	if err != nil {
		t.Fatalf("signed transaction refused: %v", err)
	}
	if origin, body := got.last(); origin != "hs2.test" || !strings.Contains(body, `"origin":"hs2.test"`) {
		t.Fatalf("handler saw origin %q, body %q", origin, body)
	}

	id, err := signer.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	// signed makes a PUT signed as origin for destination with key.
	signed := func(origin, destination string, keyID gomatrixserverlib.KeyID, key ed25519.PrivateKey, path string) (http.Header, []byte) {
		req := fclient.NewFederationRequest("PUT", spec.ServerName(origin), spec.ServerName(destination), path)
		if err := req.SetContent(map[string]any{"pdus": []any{}, "edus": []any{}}); err != nil {
			t.Fatal(err)
		}
		if err := req.Sign(spec.ServerName(origin), keyID, key); err != nil {
			t.Fatal(err)
		}
		httpReq, err := req.HTTPRequest()
		if err != nil {
			t.Fatal(err)
		}
		return httpReq.Header, req.Content()
	}
	send := func(path string, header http.Header, body []byte) (int, string) {
		status, out := c.call("hs1.test", "PUT", path, body, header)
		var e struct{ ErrCode string }
		_ = json.Unmarshal(out, &e)
		return status, e.ErrCode
	}

	// A correct manual request, with the header written in the lenient
	// forms the spec allows (any case, spaces, unquoted token values).
	h, body := signed("hs2.test", "hs1.test", id.KeyID, id.PrivateKey, "/_matrix/federation/v1/send/t2")
	auth := h.Get("Authorization")
	lenient := strings.NewReplacer(`X-Matrix origin=`, `X-Matrix  Origin=`, `,key=`, ` , KEY=`, `,destination=`, `,	Destination=`).Replace(auth)
	lenient = strings.Replace(lenient, `Origin="hs2.test"`, `Origin=hs2.test`, 1)
	for _, form := range []string{auth, lenient} {
		hdr := http.Header{"Authorization": {form}, "Content-Type": {"application/json"}}
		if status, code := send("/_matrix/federation/v1/send/t2", hdr, body); status != 200 {
			t.Fatalf("valid request %q refused: %d %s", form, status, code)
		}
	}
	// Without Content-Type (not required of senders) it is still JSON.
	if status, code := send("/_matrix/federation/v1/send/t2", http.Header{"Authorization": {auth}}, body); status != 200 {
		t.Fatalf("valid request without Content-Type refused: %d %s", status, code)
	}
	before := len(got.origins)

	wrongDest, wrongDestBody := signed("hs2.test", "hs3.test", id.KeyID, id.PrivateKey, "/_matrix/federation/v1/send/t3")
	unknownKey, unknownKeyBody := signed("hs2.test", "hs1.test", "ed25519:nope", stranger, "/_matrix/federation/v1/send/t4")
	foreignKey, foreignKeyBody := signed("hs2.test", "hs1.test", id.KeyID, stranger, "/_matrix/federation/v1/send/t5")
	ghost, ghostBody := signed("ghost.test", "hs1.test", "ed25519:g", stranger, "/_matrix/federation/v1/send/t6")
	otherPath, otherPathBody := signed("hs2.test", "hs1.test", id.KeyID, id.PrivateKey, "/_matrix/federation/v1/send/elsewhere")
	tampered := strings.Replace(auth, `sig="`, `sig="AAAA`, 1)
	cases := []struct {
		name   string
		path   string
		header http.Header
		body   []byte
		status int
		code   string
	}{
		{"no header", "/_matrix/federation/v1/send/t2", nil, body, 401, "M_UNAUTHORIZED"},
		{"another scheme", "/_matrix/federation/v1/send/t2", http.Header{"Authorization": {"Bearer abc"}}, body, 401, "M_UNAUTHORIZED"},
		{"no signature", "/_matrix/federation/v1/send/t2", http.Header{"Authorization": {`X-Matrix origin="hs2.test",key="` + string(id.KeyID) + `"`}}, body, 401, "M_UNAUTHORIZED"},
		{"wrong destination", "/_matrix/federation/v1/send/t3", wrongDest, wrongDestBody, 401, "M_UNAUTHORIZED"},
		{"tampered signature", "/_matrix/federation/v1/send/t2", http.Header{"Authorization": {tampered}}, body, 401, "M_UNAUTHORIZED"},
		{"signed for another path", "/_matrix/federation/v1/send/t2", otherPath, otherPathBody, 401, "M_UNAUTHORIZED"},
		{"another body", "/_matrix/federation/v1/send/t2", h, []byte(`{"pdus":[{}],"edus":[]}`), 401, "M_UNAUTHORIZED"},
		{"unknown key ID", "/_matrix/federation/v1/send/t4", unknownKey, unknownKeyBody, 401, "M_UNAUTHORIZED"},
		{"known key ID, other key", "/_matrix/federation/v1/send/t5", foreignKey, foreignKeyBody, 401, "M_UNAUTHORIZED"},
		{"unknown origin server", "/_matrix/federation/v1/send/t6", ghost, ghostBody, 401, "M_UNAUTHORIZED"},
		{"body not JSON", "/_matrix/federation/v1/send/t2", h, []byte(`{"pdus":`), 400, "M_NOT_JSON"},
		{"too large", "/_matrix/federation/v1/send/t2", h, bytes.Repeat([]byte(" "), federation.DefaultMaxRequestBody+1), 413, "M_TOO_LARGE"},
	}
	for _, tc := range cases {
		status, code := send(tc.path, tc.header, tc.body)
		if status != tc.status || code != tc.code {
			t.Errorf("%s: got %d %s, want %d %s", tc.name, status, code, tc.status, tc.code)
		}
	}
	if after := len(got.origins); after != before {
		t.Fatalf("%d refused requests reached the handler", after-before)
	}

	// After hs2 rotates its key, the signer picks up the new key (Forget,
	// or the key-server's validity passing) and hs1 fetches it.
	if _, err := hs2.keys.RotateKey(ctx, &keyserverv1.RotateKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	signer.Forget()
	fc, err = signer.Federation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newID, _ := signer.Identity(ctx)
	if newID.KeyID == id.KeyID {
		t.Fatal("the signer still holds the old key")
	}
	if _, err := fc.SendTransaction(ctx, gomatrixserverlib.Transaction{
		TransactionID: "t7", Origin: "hs2.test", Destination: "hs1.test", PDUs: []json.RawMessage{}, EDUs: []gomatrixserverlib.EDU{},
	}); err != nil {
		t.Fatalf("request signed with the new key refused: %v", err)
	}
}
