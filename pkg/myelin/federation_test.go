package myelin_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/config"
	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

// fedConfig is a test configuration for serverName with federation on: a
// listener at listen with a certificate from ca, ca trusted for outbound
// requests, loopback allowed.
func fedConfig(t *testing.T, ca *testkit.CA, serverName, listen string) myelin.Config {
	t.Helper()
	cfg := stack.TestConfig(t)
	cfg.ServerName = serverName
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = listen
	cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = ca.Issue(t, serverName)
	cfg.Federation.TrustedCAFiles = []string{ca.CertFile}
	cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8", "::1/128"}
	return cfg
}

// fedRequest sends a request to from a federation listener, checking its
// certificate against ca for serverName.
func fedRequest(t *testing.T, ca *testkit.CA, serverName, addr, method, path string) (int, []byte) {
	t.Helper()
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12},
	}}
	req, err := http.NewRequest(method, "https://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, body
}

func errcode(body []byte) string {
	var e struct{ ErrCode string }
	_ = json.Unmarshal(body, &e)
	return e.ErrCode
}

// freeAddr is a loopback address free a moment ago (for configurations
// that must name each other's listeners before they start).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestFederationListener: with federation enabled the process serves a
// second, HTTPS listener with its own router: the key API is there (and
// still on the client listener), the client API is not, and unknown
// paths and methods get 404/405 M_UNRECOGNIZED. Off by default.
func TestFederationListener(t *testing.T) {
	if s := stack.Start(t, myelin.TargetKeyServer); s.Process.FederationAddr() != "" {
		t.Fatalf("federation listener at %s with federation off", s.Process.FederationAddr())
	}
	ca := testkit.NewCA(t)
	s := stack.StartWithConfig(t, fedConfig(t, ca, "hs1.test", "127.0.0.1:0"))
	addr := s.Process.FederationAddr()
	if addr == "" {
		t.Fatal("no federation listener")
	}
	status, body := fedRequest(t, ca, "hs1.test", addr, "GET", "/_matrix/key/v2/server")
	if status != 200 || !strings.Contains(string(body), `"server_name":"hs1.test"`) {
		t.Fatalf("keys on the federation listener: %d %s", status, body)
	}
	status, body = fedRequest(t, ca, "hs1.test", addr, "GET", "/_matrix/key/v2/query/hs1.test")
	if status != 200 || !strings.Contains(string(body), `"server_keys":[{`) {
		t.Fatalf("notary query on the federation listener: %d %s", status, body)
	}
	if status, _ := getJSON(t, s.URL()+"/_matrix/key/v2/server"); status != 200 {
		t.Fatalf("keys on the client listener: %d", status)
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/_matrix/client/versions", 404},
		{"GET", "/_matrix/federation/v1/nothing", 404},
		{"GET", "/_matrix/key/v2/nothing", 404},
		{"GET", "/", 404},
		{"DELETE", "/_matrix/key/v2/server", 405},
	} {
		status, body := fedRequest(t, ca, "hs1.test", addr, c.method, c.path)
		if status != c.status || errcode(body) != "M_UNRECOGNIZED" {
			t.Errorf("%s %s: %d %s, want %d M_UNRECOGNIZED", c.method, c.path, status, body, c.status)
		}
	}
}

// TestTwoServersShareKeys: two whole processes with different server
// names, each with its federation listener; one's key-server fetches the
// other's keys through the static map, the allow-list and the test CA.
func TestTwoServersShareKeys(t *testing.T) {
	ca := testkit.NewCA(t)
	addr1, addr2 := freeAddr(t), freeAddr(t)
	cfg1 := fedConfig(t, ca, "hs1.test", addr1)
	cfg1.Federation.ServerNameMap = map[string]string{"hs2.test": addr2}
	cfg2 := fedConfig(t, ca, "hs2.test", addr2)
	cfg2.Federation.ServerNameMap = map[string]string{"hs1.test": addr1}
	hs1 := stack.StartWithConfig(t, cfg1)
	hs2 := stack.StartWithConfig(t, cfg2)

	keysOf := func(s *stack.Stack) keyserverv1.ServerKeyServiceClient {
		conn, err := rpc.Dial(s.Process.GRPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return keyserverv1.NewServerKeyServiceClient(conn)
	}
	k1, k2 := keysOf(hs1), keysOf(hs2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	own, err := k2.SigningKey(ctx, &keyserverv1.SigningKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := k1.QueryServerKeys(ctx, &keyserverv1.QueryServerKeysRequest{Keys: []*keyserverv1.ServerKeyID{{ServerName: "hs2.test", KeyId: own.GetKeyId()}}})
	if err != nil {
		t.Fatal(err)
	}
	want := ed25519.NewKeyFromSeed(own.GetSeed()).Public().(ed25519.PublicKey)
	if len(resp.GetKeys()) != 1 || !bytes.Equal(resp.GetKeys()[0].GetPublicKey(), want) {
		t.Fatalf("hs1 got %v for hs2's key %s", resp.GetKeys(), own.GetKeyId())
	}
	// Not in the map, not in DNS: nothing, quickly, and no error.
	resp, err = k1.QueryServerKeys(ctx, &keyserverv1.QueryServerKeysRequest{Keys: []*keyserverv1.ServerKeyID{{ServerName: "hs3.invalid", KeyId: "ed25519:x"}}})
	if err != nil || len(resp.GetKeys()) != 0 {
		t.Fatalf("unknown server: %v %v", resp.GetKeys(), err)
	}
}

// TestEdgeFederationListener: in the split shape the edge's federation
// listener forwards /_matrix/key/* to the key-server's HTTP listener and
// /_matrix/federation/* to the federation-receiver's, and answers
// everything else with M_UNRECOGNIZED.
func TestEdgeFederationListener(t *testing.T) {
	ca := testkit.NewCA(t)
	ksCfg := stack.TestConfig(t)
	ksCfg.ServerName = "split.test"
	ks := stack.StartWithConfig(t, ksCfg, myelin.TargetKeyServer)
	// The receiver's peers are not needed for /version: unreachable.
	frCfg := fedConfig(t, ca, "split.test", "127.0.0.1:0")
	for _, a := range []*myelin.ServiceAddress{&frCfg.Services.KeyServer, &frCfg.Services.RoomServer, &frCfg.Services.Presence, &frCfg.Services.ClientAPI} {
		a.GRPC = "127.0.0.1:1"
	}
	fr := stack.StartWithConfig(t, frCfg, myelin.TargetFederationReceiver)
	edgeCfg := fedConfig(t, ca, "split.test", "127.0.0.1:0")
	edgeCfg.Services.KeyServer.HTTP = ks.Process.HTTPAddr()
	edgeCfg.Services.FederationReceiver.HTTP = fr.Process.HTTPAddr()
	edgeCfg.Services.ClientAPI.HTTP = "127.0.0.1:1" // not used here
	edgeCfg.Services.Media.HTTP = "127.0.0.1:1"     // not used here
	edge := stack.StartWithConfig(t, edgeCfg, myelin.TargetEdge)
	addr := edge.Process.FederationAddr()
	status, body := fedRequest(t, ca, "split.test", addr, "GET", "/_matrix/key/v2/server")
	if status != 200 || !strings.Contains(string(body), `"server_name":"split.test"`) {
		t.Fatalf("keys through the edge's federation listener: %d %s", status, body)
	}
	status, body = fedRequest(t, ca, "split.test", addr, "GET", "/_matrix/federation/v1/version")
	if status != 200 || !strings.Contains(string(body), `"name":"Myelin"`) {
		t.Fatalf("/version through the edge's federation listener: %d %s", status, body)
	}
	if status, body := fedRequest(t, ca, "split.test", addr, "GET", "/_matrix/federation/v1/query/profile"); status != 401 {
		t.Fatalf("a request without X-Matrix through the edge: %d %s", status, body)
	}
	for _, path := range []string{"/_matrix/federation/v1/nothing", "/_matrix/client/versions"} {
		status, body := fedRequest(t, ca, "split.test", addr, "GET", path)
		if status != 404 || errcode(body) != "M_UNRECOGNIZED" {
			t.Errorf("%s: %d %s", path, status, body)
		}
	}
}

// TestFederationConfig: the settings validate, and every key has its
// environment override (maps and lists of objects included).
func TestFederationConfig(t *testing.T) {
	cfg := myelin.DefaultConfig()
	if cfg.Federation.Enabled || cfg.Federation.Listen != ":8448" {
		t.Fatalf("defaults: %+v", cfg.Federation)
	}
	cfg.Federation.Enabled = true
	if err := cfg.Validate(); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "tls_cert_file") {
		t.Fatalf("enabled without a certificate: %v", err)
	}
	for _, bad := range []func(*myelin.Config){
		func(c *myelin.Config) { c.Federation.AllowedPrivateNetworks = []string{"10.0.0.0/33"} },
		func(c *myelin.Config) { c.Federation.ServerNameMap = map[string]string{"bad name": "127.0.0.1:1"} },
		func(c *myelin.Config) { c.Federation.ServerNameMap = map[string]string{"ok.test": "no-port"} },
		func(c *myelin.Config) {
			c.KeyServer.Notaries = []keyserver.Notary{{ServerName: "n.test", VerifyKeys: map[string]string{"ed25519:a": "short"}}}
		},
	} {
		c := myelin.DefaultConfig()
		bad(&c)
		if err := c.Validate(); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("invalid setting accepted: %+v", c.Federation)
		}
	}
	env := map[string]string{
		"MYELIN_FEDERATION_ENABLED":                  "true",
		"MYELIN_FEDERATION_LISTEN":                   "127.0.0.1:9448",
		"MYELIN_FEDERATION_TLS_CERT_FILE":            "/c.pem",
		"MYELIN_FEDERATION_TLS_KEY_FILE":             "/k.pem",
		"MYELIN_FEDERATION_TRUSTED_CA_FILES":         "/a.pem,/b.pem",
		"MYELIN_FEDERATION_INSECURE_SKIP_TLS_VERIFY": "true",
		"MYELIN_FEDERATION_SERVER_NAME_MAP":          "a.test=127.0.0.1:1,b.test=[::1]:2",
		"MYELIN_FEDERATION_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",
		"MYELIN_KEY_SERVER_NOTARIES":                 `[{"server_name":"n.test","verify_keys":{"ed25519:a":"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}}]`,
		"MYELIN_KEY_SERVER_FETCH_RETRY_INTERVAL":     "5s",
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	got, err := myelin.Load("")
	if err != nil {
		t.Fatal(err)
	}
	f := got.Federation
	if !f.Enabled || f.Listen != "127.0.0.1:9448" || f.TLSCertFile != "/c.pem" || f.TLSKeyFile != "/k.pem" ||
		len(f.TrustedCAFiles) != 2 || !f.InsecureSkipTLSVerify || f.ServerNameMap["b.test"] != "[::1]:2" ||
		len(f.AllowedPrivateNetworks) != 2 || len(got.KeyServer.Notaries) != 1 || got.KeyServer.FetchRetryInterval != 5*time.Second {
		t.Fatalf("environment overrides: %+v %+v", f, got.KeyServer)
	}
	names := strings.Join(config.EnvNames(&got), " ")
	for k := range env {
		if !strings.Contains(names, k) {
			t.Errorf("%s is not a known environment variable", k)
		}
	}
}
