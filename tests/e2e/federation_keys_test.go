package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// fedEnv turns federation on for a process: the listener at listen with a
// certificate for serverName's host (without its port, if it has one) from
// ca.
func fedEnv(t *testing.T, ca *testkit.CA, serverName, listen string) []string {
	host := serverName
	if h, _, err := net.SplitHostPort(serverName); err == nil {
		host = h
	}
	cert, key := ca.Issue(t, host)
	return []string{
		"MYELIN_SERVER_NAME=" + serverName,
		"MYELIN_FEDERATION_ENABLED=true",
		"MYELIN_FEDERATION_LISTEN=" + listen,
		"MYELIN_FEDERATION_TLS_CERT_FILE=" + cert,
		"MYELIN_FEDERATION_TLS_KEY_FILE=" + key,
		"MYELIN_FEDERATION_TRUSTED_CA_FILES=" + ca.CertFile,
	}
}

// serverKeys fetches /_matrix/key/v2/server from a federation listener
// (certificate checked against ca for serverName).
func serverKeys(t *testing.T, ca *testkit.CA, serverName, addr string) (verify, old map[string]json.RawMessage) {
	t.Helper()
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12},
	}}
	var res *http.Response
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err = client.Get("https://" + addr + "/_matrix/key/v2/server")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var keys struct {
		ServerName string                     `json:"server_name"`
		Verify     map[string]json.RawMessage `json:"verify_keys"`
		Old        map[string]json.RawMessage `json:"old_verify_keys"`
	}
	if err := json.Unmarshal(body, &keys); err != nil || res.StatusCode != 200 || keys.ServerName != serverName {
		t.Fatalf("keys from %s: %d %s", addr, res.StatusCode, body)
	}
	return keys.Verify, keys.Old
}

func onlyKey(t *testing.T, keys map[string]json.RawMessage) string {
	t.Helper()
	if len(keys) != 1 {
		t.Fatalf("want one key, got %v", keys)
	}
	for id := range keys {
		return id
	}
	return ""
}

// TestRotateKeyCLI runs `myelin rotate-key` against the binary in both
// shapes, with federation on: the keys are served on the federation
// listener (in the split shape the edge's, forwarding to the key-server),
// and after the rotation the old key is in old_verify_keys and a new one
// signs. All-in-one finds the key-server from the configuration
// (grpc.listen), split from -grpc.
func TestRotateKeyCLI(t *testing.T) {
	ca := testkit.NewCA(t)
	rotate := func(env []string, args ...string) string {
		cmd := exec.Command(myelinBinary(t), append([]string{"rotate-key"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("myelin rotate-key: %v: %s", err, out)
		}
		return string(out)
	}
	check := func(t *testing.T, serverName, fedAddr string, doRotate func() string) {
		verify, old := serverKeys(t, ca, serverName, fedAddr)
		first := onlyKey(t, verify)
		if len(old) != 0 {
			t.Fatalf("old keys before any rotation: %v", old)
		}
		out := doRotate()
		if !strings.Contains(out, first+" is now an old key") {
			t.Fatalf("rotate-key said %q", out)
		}
		verify, old = serverKeys(t, ca, serverName, fedAddr)
		if second := onlyKey(t, verify); second == first || !strings.Contains(out, "new signing key "+second) {
			t.Fatalf("after rotating: verify_keys %v (output %q)", verify, out)
		}
		if _, ok := old[first]; !ok || len(old) != 1 {
			t.Fatalf("old_verify_keys %v, want %s", old, first)
		}
	}

	t.Run("all-in-one", func(t *testing.T) {
		s := allInOne(t)
		grpcAddr, fedAddr := freeAddr(t), freeAddr(t)
		p := s.procs[0]
		p.env = append(p.env, "MYELIN_GRPC_LISTEN="+grpcAddr)
		p.env = append(p.env, fedEnv(t, ca, "aio.test", fedAddr)...)
		s.start(t)
		t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
		check(t, "aio.test", fedAddr, func() string { return rotate(p.env) })
	})

	t.Run("split", func(t *testing.T) {
		s := split(t)
		fedAddr := freeAddr(t)
		var ksGRPC string
		for _, p := range s.procs {
			p.env = append(p.env, "MYELIN_SERVER_NAME=split.test")
			switch p.name {
			case "edge":
				p.env = append(p.env, fedEnv(t, ca, "split.test", fedAddr)...)
			case "key-server":
				for _, e := range p.env {
					if v, ok := strings.CutPrefix(e, "MYELIN_GRPC_LISTEN="); ok {
						ksGRPC = v
					}
				}
			}
		}
		s.start(t)
		t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
		check(t, "split.test", fedAddr, func() string { return rotate(nil, "-grpc", ksGRPC) })
	})
}

// TestFederationReceiverSplit: in the split shape, with federation on, the
// edge's federation listener forwards /_matrix/federation/* to the
// federation-receiver process (which checks X-Matrix itself) and
// /_matrix/federation/v1/media/* to the media process.
func TestFederationReceiverSplit(t *testing.T) {
	ca := testkit.NewCA(t)
	s := split(t)
	fedAddr := freeAddr(t)
	for _, p := range s.procs {
		p.env = append(p.env, "MYELIN_SERVER_NAME=split.test")
		switch p.name {
		case "edge":
			p.env = append(p.env, fedEnv(t, ca, "split.test", fedAddr)...)
		case "federation-receiver", "media", "key-server":
			// Processes with federation endpoints open a listener of
			// their own too; the edge's is the public one.
			p.env = append(p.env, fedEnv(t, ca, "split.test", freeAddr(t))...)
		}
	}
	s.start(t)
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	client := fedClient(t, ca, "split.test")
	get := func(path string) (int, string) {
		t.Helper()
		res, err := client.Get("https://" + fedAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	if status, body := get("/_matrix/federation/v1/version"); status != 200 || !strings.Contains(body, `"name":"Myelin"`) {
		t.Fatalf("/version through the edge: %d %s", status, body)
	}
	for _, path := range []string{"/_matrix/federation/v1/query/profile?user_id=@a:split.test", "/_matrix/federation/v1/media/download/abc"} {
		if status, body := get(path); status != 401 || !strings.Contains(body, "M_UNAUTHORIZED") {
			t.Errorf("%s without X-Matrix through the edge: %d %s", path, status, body)
		}
	}
	if status, body := get("/_matrix/federation/v1/nothing"); status != 404 || !strings.Contains(body, "M_UNRECOGNIZED") {
		t.Errorf("an unknown federation path: %d %s", status, body)
	}
}

// fedClient trusts ca and checks certificates for serverName.
func fedClient(t *testing.T, ca *testkit.CA, serverName string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12},
	}}
}
