package keyserver_test

// Key-servers with different server names reaching each other over real
// HTTPS on loopback (certificates from a test CA, the static server-name
// map, loopback allowed), each with its own PostgreSQL database and its
// real gRPC API.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

// noDNS answers every DNS question with "no such host": servers are only
// reachable through the static map.
type noDNS struct{}

func (noDNS) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (noDNS) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// node is one key-server: its gRPC clients and its HTTPS federation
// endpoint (the routes it registers with RegisterFederationHTTP).
type node struct {
	name      string
	svc       *keyserver.Service
	keys      keyserverv1.ServerKeyServiceClient
	ks        keyserverv1.KeyServiceClient
	https     *httptest.Server
	transport *federation.Transport
	db        string
}

// nodeSpec says how to start one node.
type nodeSpec struct {
	name string
	// reaches lists the servers in its static map (nil: every node).
	reaches []string
	cfg     func(*keyserver.Config)
	// mount adds routes to its federation router.
	mount func(r chi.Router, n *node)
	// db is the database to use (default: a fresh one).
	db string
}

type cluster struct {
	t     *testing.T
	ca    *testkit.CA
	nodes map[string]*node
	addrs map[string]string
}

// startCluster starts the nodes; each reserves its HTTPS address first so
// that every static map is known before any key-server starts.
func startCluster(t *testing.T, specs ...nodeSpec) *cluster {
	t.Helper()
	c := &cluster{t: t, ca: testkit.NewCA(t), nodes: map[string]*node{}, addrs: map[string]string{}}
	listeners := map[string]net.Listener{}
	for _, s := range specs {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners[s.name] = lis
		c.addrs[s.name] = lis.Addr().String()
	}
	for _, s := range specs {
		c.nodes[s.name] = c.start(s, listeners[s.name])
	}
	return c
}

func (c *cluster) start(s nodeSpec, lis net.Listener) *node {
	t := c.t
	fedCfg := federation.DefaultConfig()
	fedCfg.Enabled = true
	fedCfg.TrustedCAFiles = []string{c.ca.CertFile}
	fedCfg.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	fedCfg.ServerNameMap = map[string]string{}
	for name, addr := range c.addrs {
		if s.reaches == nil || contains(s.reaches, name) {
			fedCfg.ServerNameMap[name] = addr
		}
	}
	tr, err := federation.NewTransport(federation.Options{Config: fedCfg, Logger: zaptest.NewLogger(t), Resolver: noDNS{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	cfg := keyserver.DefaultConfig()
	if s.cfg != nil {
		s.cfg(&cfg)
	}
	if s.db == "" {
		s.db = testkit.Postgres(t)
	}
	svc, err := keyserver.New(context.Background(), cfg, keyserver.Deps{
		Logger: zaptest.NewLogger(t).Named(s.name), ServerName: s.name, DatabaseURL: s.db, Federation: tr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	g := rpc.NewServer(zaptest.NewLogger(t))
	svc.RegisterGRPC(g)
	glis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(glis) //nolint:errcheck
	t.Cleanup(g.Stop)
	conn, err := rpc.Dial(glis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &node{name: s.name, svc: svc, transport: tr, db: s.db,
		keys: keyserverv1.NewServerKeyServiceClient(conn), ks: keyserverv1.NewKeyServiceClient(conn)}
	r := chi.NewRouter()
	svc.RegisterFederationHTTP(r)
	if s.mount != nil {
		s.mount(r, n)
	}
	n.https = httptest.NewUnstartedServer(r)
	n.https.Listener.Close()
	n.https.Listener = lis
	n.https.TLS = c.ca.TLSConfig(t, s.name)
	n.https.Config.ErrorLog = log.New(io.Discard, "", 0)
	n.https.StartTLS()
	t.Cleanup(n.https.Close)
	return n
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// client is an HTTPS client that trusts the cluster's CA.
func (c *cluster) client() *http.Client {
	pem, err := os.ReadFile(c.ca.CertFile)
	if err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "", MinVersion: tls.VersionTLS12}}}
}

// call makes a request to a node's HTTPS endpoint (certificate checked for
// the node's server name).
func (c *cluster) call(name, method, path string, body []byte, header http.Header) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, "https://"+c.addrs[name]+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	cl := c.client()
	cl.Transport.(*http.Transport).TLSClientConfig.ServerName = name
	res, err := cl.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, out
}

// query asks n's ServerKeyService for one key.
func query(t *testing.T, n *node, server, keyID string, minValid int64) []*keyserverv1.ServerVerifyKey {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := n.keys.QueryServerKeys(ctx, &keyserverv1.QueryServerKeysRequest{Keys: []*keyserverv1.ServerKeyID{
		{ServerName: server, KeyId: keyID, MinValidUntilTs: minValid},
	}})
	if err != nil {
		t.Fatalf("QueryServerKeys(%s %s) at %s: %v", server, keyID, n.name, err)
	}
	return resp.GetKeys()
}

// signingKey is n's current key ID and public key.
func signingKey(t *testing.T, n *node) (string, ed25519.PublicKey) {
	t.Helper()
	resp, err := n.keys.SigningKey(context.Background(), &keyserverv1.SigningKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetKeyId(), ed25519.NewKeyFromSeed(resp.GetSeed()).Public().(ed25519.PublicKey)
}

func only(t *testing.T, keys []*keyserverv1.ServerVerifyKey, what string) *keyserverv1.ServerVerifyKey {
	t.Helper()
	if len(keys) != 1 {
		t.Fatalf("%s: want one key, got %v", what, keys)
	}
	return keys[0]
}

// TestFetchCacheAndMinValidUntil: hs1 fetches hs2's key directly and
// caches it; a min_valid_until_ts beyond the cached validity forces a
// refetch (which here shows hs2's rotation); when hs2 goes down the cached
// keys answer until they expire.
func TestFetchCacheAndMinValidUntil(t *testing.T) {
	c := startCluster(t, nodeSpec{name: "hs1.test"}, nodeSpec{name: "hs2.test"})
	hs1, hs2 := c.nodes["hs1.test"], c.nodes["hs2.test"]
	k1, pub1 := signingKey(t, hs2)

	got := only(t, query(t, hs1, "hs2.test", k1, 0), "direct fetch")
	if got.GetKeyId() != k1 || !bytes.Equal(got.GetPublicKey(), pub1) || got.GetExpiredTs() != 0 || got.GetValidUntilTs() <= time.Now().UnixMilli() {
		t.Fatalf("direct fetch gave %+v, want %s %x", got, k1, pub1)
	}
	v1 := got.GetValidUntilTs()
	if all := query(t, hs1, "hs2.test", "", 0); len(all) != 1 || all[0].GetKeyId() != k1 {
		t.Fatalf("every key of hs2: %v", all)
	}

	rot, err := hs2.keys.RotateKey(context.Background(), &keyserverv1.RotateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The cache answers while its key is valid at the asked time: hs1 does
	// not know about the rotation yet.
	if got := only(t, query(t, hs1, "hs2.test", k1, v1), "cached"); got.GetExpiredTs() != 0 || got.GetValidUntilTs() != v1 {
		t.Fatalf("cached key changed without a fetch: %+v", got)
	}
	// Needed beyond its validity: fetched again, and now it is an old key.
	got = only(t, query(t, hs1, "hs2.test", k1, v1+1), "refetch")
	if got.GetExpiredTs() != rot.GetOldKeyExpiredTs() || got.GetValidUntilTs() != 0 {
		t.Fatalf("after min_valid_until_ts forced a refetch: %+v, want expired at %d", got, rot.GetOldKeyExpiredTs())
	}
	k2 := only(t, query(t, hs1, "hs2.test", rot.GetKeyId(), 0), "new key")
	v2 := k2.GetValidUntilTs()

	// hs2 goes down: the cache still answers for what it covers.
	hs2.https.Close()
	hs2.transport.CloseIdleConnections()
	hs1.transport.CloseIdleConnections()
	for _, min := range []int64{0, v2 - 1, v2} {
		if keys := query(t, hs1, "hs2.test", rot.GetKeyId(), min); len(keys) != 1 {
			t.Fatalf("hs2 down, key valid until %d asked for %d: got %v", v2, min, keys)
		}
	}
	if keys := query(t, hs1, "hs2.test", k1, 0); len(keys) != 1 || keys[0].GetExpiredTs() == 0 {
		t.Fatalf("old key while hs2 is down: %v", keys)
	}
	// Asked for a later time, it cannot be fetched again: the cached key
	// comes back with its own validity, which ends before that time.
	if keys := query(t, hs1, "hs2.test", rot.GetKeyId(), v2+1); len(keys) != 1 || keys[0].GetValidUntilTs() != v2 || keys[0].GetExpiredTs() != 0 {
		t.Fatalf("cached key asked for after its validity: %v", keys)
	}
	// So with hs2 down, something hs2 signs with it verifies (through the
	// key ring over QueryServerKeys) at a time within the key's validity,
	// and not after it.
	_, _, priv2 := nodeSigner(t, hs2)
	signed, err := gomatrixserverlib.SignJSON("hs2.test", gomatrixserverlib.KeyID(rot.GetKeyId()), priv2, []byte(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	verifier := federation.NewVerifier(hs1.keys, time.Minute)
	for _, at := range []struct {
		ts    int64
		valid bool
	}{{time.Now().UnixMilli(), true}, {v2, true}, {v2 + 1, false}} {
		res, err := verifier.VerifyJSONs(context.Background(), []gomatrixserverlib.VerifyJSONRequest{{
			ServerName: "hs2.test", AtTS: spec.Timestamp(at.ts), Message: signed,
			ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
		}})
		if err != nil {
			t.Fatal(err)
		}
		if (res[0].Error == nil) != at.valid {
			t.Errorf("hs2 down, signature at %d (key valid until %d): error %v", at.ts, v2, res[0].Error)
		}
	}
	// Servers nobody knows give no keys, and no error.
	if keys := query(t, hs1, "nowhere.test", "ed25519:x", 0); len(keys) != 0 {
		t.Fatalf("keys of an unknown server: %v", keys)
	}
}

// TestNotary: hs3 cannot reach hs1 but trusts hs2 as a notary: it gets
// hs1's keys through hs2, which signs hs1's own response. The notary keeps
// serving its last response when hs1 is down. A notary answer signed with
// a key that is not configured for it is refused.
func TestNotary(t *testing.T) {
	c := startCluster(t, nodeSpec{name: "hs1.test"}, nodeSpec{name: "hs2.test"})
	hs1, hs2 := c.nodes["hs1.test"], c.nodes["hs2.test"]
	hs2Key, hs2Pub := signingKey(t, hs2)
	hs1Key, hs1Pub := signingKey(t, hs1)
	notary := func(key ed25519.PublicKey) func(*keyserver.Config) {
		return func(cfg *keyserver.Config) {
			cfg.Notaries = []keyserver.Notary{{ServerName: "hs2.test", VerifyKeys: map[string]string{
				hs2Key: spec.Base64Bytes(key).Encode(),
			}}}
		}
	}
	// hs3 reaches only hs2; hs4 too, but has a wrong key for it.
	_, wrong, _ := ed25519.GenerateKey(rand.Reader)
	lis3, _ := net.Listen("tcp", "127.0.0.1:0")
	lis4, _ := net.Listen("tcp", "127.0.0.1:0")
	c.addrs["hs3.test"], c.addrs["hs4.test"] = lis3.Addr().String(), lis4.Addr().String()
	hs3 := c.start(nodeSpec{name: "hs3.test", reaches: []string{"hs2.test"}, cfg: notary(hs2Pub)}, lis3)
	hs4 := c.start(nodeSpec{name: "hs4.test", reaches: []string{"hs2.test"}, cfg: notary(wrong.Public().(ed25519.PublicKey))}, lis4)

	got := only(t, query(t, hs3, "hs1.test", hs1Key, 0), "through the notary")
	if !bytes.Equal(got.GetPublicKey(), hs1Pub) {
		t.Fatalf("notary gave key %x, want %x", got.GetPublicKey(), hs1Pub)
	}
	if keys := query(t, hs4, "hs1.test", hs1Key, 0); len(keys) != 0 {
		t.Fatalf("a notary answer with an unconfigured signature was used: %v", keys)
	}

	// The notary endpoints themselves: hs1's response, signed by hs1 and
	// by the notary.
	checkNotaryAnswer := func(status int, body []byte, what string) {
		t.Helper()
		if status != http.StatusOK {
			t.Fatalf("%s: status %d: %s", what, status, body)
		}
		var resp struct {
			ServerKeys []json.RawMessage `json:"server_keys"`
		}
		if err := json.Unmarshal(body, &resp); err != nil || len(resp.ServerKeys) != 1 {
			t.Fatalf("%s: %s", what, body)
		}
		raw := resp.ServerKeys[0]
		if err := gomatrixserverlib.VerifyJSON("hs1.test", gomatrixserverlib.KeyID(hs1Key), hs1Pub, raw); err != nil {
			t.Fatalf("%s: not signed by hs1: %v: %s", what, err, raw)
		}
		if err := gomatrixserverlib.VerifyJSON("hs2.test", gomatrixserverlib.KeyID(hs2Key), hs2Pub, raw); err != nil {
			t.Fatalf("%s: not signed by the notary: %v", what, err)
		}
	}
	status, body := c.call("hs2.test", "GET", "/_matrix/key/v2/query/hs1.test", nil, nil)
	checkNotaryAnswer(status, body, "GET query")
	status, body = c.call("hs2.test", "POST", "/_matrix/key/v2/query",
		[]byte(`{"server_keys":{"hs1.test":{"`+hs1Key+`":{"minimum_valid_until_ts":1}}}}`), nil)
	checkNotaryAnswer(status, body, "POST query")

	// hs1 goes down: the notary still serves the last response it has,
	// even when asked for a later validity than it covers.
	hs1.https.Close()
	hs2.transport.CloseIdleConnections()
	far := time.Now().Add(365 * 24 * time.Hour).UnixMilli()
	status, body = c.call("hs2.test", "GET", fmt.Sprintf("/_matrix/key/v2/query/hs1.test?minimum_valid_until_ts=%d", far), nil, nil)
	checkNotaryAnswer(status, body, "GET query with hs1 down")

	// Asked about itself, the notary answers with its own keys.
	status, body = c.call("hs2.test", "GET", "/_matrix/key/v2/query/hs2.test", nil, nil)
	if status != 200 || !strings.Contains(string(body), hs2Key) {
		t.Fatalf("notary about itself: %d %s", status, body)
	}
	// Servers it cannot reach and never saw are left out.
	status, body = c.call("hs2.test", "POST", "/_matrix/key/v2/query", []byte(`{"server_keys":{"nowhere.test":{}}}`), nil)
	if status != 200 || string(body) != `{"server_keys":[]}` {
		t.Fatalf("unknown server: %d %s", status, body)
	}

	// Bad input gets the spec's errors, never a 500.
	for _, bad := range []struct {
		method, path, body string
		status             int
		errcode            string
	}{
		{"GET", "/_matrix/key/v2/query/bad_name", "", 400, "M_INVALID_PARAM"},
		{"GET", "/_matrix/key/v2/query/hs1.test?minimum_valid_until_ts=soon", "", 400, "M_INVALID_PARAM"},
		{"GET", "/_matrix/key/v2/query/hs1.test?minimum_valid_until_ts=-5", "", 400, "M_INVALID_PARAM"},
		{"POST", "/_matrix/key/v2/query", "[", 400, "M_NOT_JSON"},
		{"POST", "/_matrix/key/v2/query", "[1]", 400, "M_NOT_JSON"},
		{"POST", "/_matrix/key/v2/query", "{}", 400, "M_BAD_JSON"},
		{"POST", "/_matrix/key/v2/query", `{"server_keys":{"hs1.test":5}}`, 400, "M_BAD_JSON"},
		{"POST", "/_matrix/key/v2/query", `{"server_keys":{"hs1.test":{"k":{"minimum_valid_until_ts":"x"}}}}`, 400, "M_BAD_JSON"},
		{"POST", "/_matrix/key/v2/query", `{"server_keys":{"bad name":{}}}`, 400, "M_INVALID_PARAM"},
		{"POST", "/_matrix/key/v2/query", `{"server_keys":{"hs1.test":{"k":{"minimum_valid_until_ts":-1}}}}`, 400, "M_INVALID_PARAM"},
		{"POST", "/_matrix/key/v2/query", `{"server_keys":` + strings.Repeat(" ", 2<<20) + `{}}`, 413, "M_TOO_LARGE"},
	} {
		status, body := c.call("hs2.test", bad.method, bad.path, []byte(bad.body), nil)
		var e struct{ ErrCode string }
		_ = json.Unmarshal(body, &e)
		if status != bad.status || e.ErrCode != bad.errcode {
			t.Errorf("%s %s %.40q: got %d %s, want %d %s", bad.method, bad.path, bad.body, status, body, bad.status, bad.errcode)
		}
	}
}

// TestRotation: after RotateKey the old key is published in
// old_verify_keys with its expiry, the new key signs (responses, events,
// SigningKey), a key-server started on the same database uses the new key,
// and events signed with the old key before the rotation still verify
// through QueryServerKeys, while one signed with it after does not.
func TestRotation(t *testing.T) {
	c := startCluster(t, nodeSpec{name: "hs1.test"})
	hs1 := c.nodes["hs1.test"]
	ctx := context.Background()
	k1, pub1 := signingKey(t, hs1)
	seed1, _ := hs1.keys.SigningKey(ctx, &keyserverv1.SigningKeyRequest{})
	// build signs an event the way the room-server does: with the key
	// SigningKey hands out at the time.
	build := func(body string) []byte {
		server, keyID, priv := nodeSigner(t, hs1)
		ev, err := gomatrixserverlib.MustGetRoomVersion("11").NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: "@alice:hs1.test", RoomID: "!r:hs1.test", Type: "m.room.message",
			PrevEvents: []string{"$p"}, AuthEvents: []string{"$p"}, Depth: 2, Content: []byte(`{"body":"` + body + `"}`),
		}).Build(time.Now(), spec.ServerName(server), keyID, priv)
		if err != nil {
			t.Fatal(err)
		}
		return ev.JSON()
	}
	before := build("before")

	rot, err := hs1.keys.RotateKey(ctx, &keyserverv1.RotateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rot.GetOldKeyId() != k1 || rot.GetKeyId() == k1 {
		t.Fatalf("rotation: %+v (old key was %s)", rot, k1)
	}
	k2, pub2 := signingKey(t, hs1)
	if k2 != rot.GetKeyId() {
		t.Fatalf("SigningKey gives %s after rotating to %s", k2, rot.GetKeyId())
	}
	status, body := c.call("hs1.test", "GET", "/_matrix/key/v2/server", nil, nil)
	var keys gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(body, &keys); status != 200 || err != nil {
		t.Fatalf("keys: %d %s", status, body)
	}
	if _, ok := keys.VerifyKeys[gomatrixserverlib.KeyID(k2)]; !ok || len(keys.VerifyKeys) != 1 {
		t.Fatalf("verify_keys %v, want only %s", keys.VerifyKeys, k2)
	}
	old, ok := keys.OldVerifyKeys[gomatrixserverlib.KeyID(k1)]
	if !ok || !bytes.Equal(old.Key, pub1) || int64(old.ExpiredTS) != rot.GetOldKeyExpiredTs() {
		t.Fatalf("old_verify_keys %v, want %s expired at %d", keys.OldVerifyKeys, k1, rot.GetOldKeyExpiredTs())
	}
	if err := gomatrixserverlib.VerifyJSON("hs1.test", gomatrixserverlib.KeyID(k2), pub2, body); err != nil {
		t.Fatalf("key response not signed by the new key: %v", err)
	}
	after := build("after")

	// An event forged with the old key after it expired.
	priv1 := ed25519.NewKeyFromSeed(seed1.GetSeed())
	late, err := gomatrixserverlib.MustGetRoomVersion("11").NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: "@alice:hs1.test", RoomID: "!r:hs1.test", Type: "m.room.message",
		PrevEvents: []string{"$p"}, AuthEvents: []string{"$p"}, Depth: 2, Content: []byte(`{"body":"late"}`),
	}).Build(time.UnixMilli(rot.GetOldKeyExpiredTs()+1000), "hs1.test", gomatrixserverlib.KeyID(k1), priv1)
	if err != nil {
		t.Fatal(err)
	}
	verifier := federation.NewVerifier(hs1.keys, time.Minute)
	verify := func(raw []byte) error {
		pdu, err := gomatrixserverlib.MustGetRoomVersion("11").NewEventFromTrustedJSON(raw, false)
		if err != nil {
			t.Fatal(err)
		}
		return gomatrixserverlib.VerifyEventSignatures(ctx, pdu, verifier, func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
			return spec.NewUserID(string(s), true)
		})
	}
	if err := verify(before); err != nil {
		t.Errorf("event signed with the old key before the rotation: %v", err)
	}
	if err := verify(after); err != nil {
		t.Errorf("event signed with the new key: %v", err)
	}
	if err := verify(late.JSON()); err == nil {
		t.Error("event signed with the old key after it expired verified")
	}

	// Another key-server on the same database (a restart, a replica) signs
	// with the new key and publishes the old one.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	replica := c.start(nodeSpec{name: "hs1.test", db: hs1.db}, lis)
	if id, _ := signingKey(t, replica); id != k2 {
		t.Fatalf("a key-server on the same database signs with %s, want %s", id, k2)
	}
	if keys := query(t, replica, "hs1.test", k1, 0); len(keys) != 1 || keys[0].GetExpiredTs() != rot.GetOldKeyExpiredTs() {
		t.Fatalf("the replica's old key: %v", keys)
	}
}

// nodeSigner is a node's current signing key, private part included.
func nodeSigner(t *testing.T, n *node) (string, gomatrixserverlib.KeyID, ed25519.PrivateKey) {
	t.Helper()
	resp, err := n.keys.SigningKey(context.Background(), &keyserverv1.SigningKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetServerName(), gomatrixserverlib.KeyID(resp.GetKeyId()), ed25519.NewKeyFromSeed(resp.GetSeed())
}
