package keyserver_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// start runs a key-server on a real gRPC server and HTTP router.
func start(t *testing.T, dbURL string) (keyserverv1.KeyServiceClient, *httptest.Server) {
	t.Helper()
	ctx := context.Background()
	svc, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{
		Logger: zaptest.NewLogger(t), ServerName: "example.test", DatabaseURL: dbURL,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	g := grpc.NewServer()
	svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis) //nolint:errcheck
	t.Cleanup(g.Stop)
	conn, err := rpc.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := chi.NewRouter()
	svc.RegisterHTTP(r)
	hs := httptest.NewServer(r)
	t.Cleanup(hs.Close)
	return keyserverv1.NewKeyServiceClient(conn), hs
}

func TestSignJSONVerifiesWithPublishedKey(t *testing.T) {
	db := testkit.Postgres(t)
	client, _ := start(t, db)
	ctx := context.Background()
	keys, err := client.ServerKeys(ctx, &keyserverv1.ServerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if keys.ServerName != "example.test" || len(keys.VerifyKeys) != 1 {
		t.Fatalf("unexpected keys %+v", keys)
	}
	vk := keys.VerifyKeys[0]
	resp, err := client.SignJSON(ctx, &keyserverv1.SignJSONRequest{Json: []byte(`{"b":1,"a":"x","unsigned":{"z":1}}`)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.KeyId != vk.KeyId || len(resp.Signature) != ed25519.SignatureSize {
		t.Fatalf("bad signature response %+v", resp)
	}
	if err := gomatrixserverlib.VerifyJSON("example.test", gomatrixserverlib.KeyID(vk.KeyId), vk.PublicKey, resp.SignedJson); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	// Changing the signed content must break the signature.
	var obj map[string]any
	_ = json.Unmarshal(resp.SignedJson, &obj)
	obj["a"] = "y"
	tampered, _ := json.Marshal(obj)
	if err := gomatrixserverlib.VerifyJSON("example.test", gomatrixserverlib.KeyID(vk.KeyId), vk.PublicKey, tampered); err == nil {
		t.Fatal("tampered JSON verified")
	}
}

func TestSignRejectsNonObject(t *testing.T) {
	client, _ := start(t, testkit.Postgres(t))
	for _, in := range []string{`[1,2]`, `not json`, ``} {
		_, err := client.SignJSON(context.Background(), &keyserverv1.SignJSONRequest{Json: []byte(in)})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("SignJSON(%q): want InvalidArgument, got %v", in, err)
		}
	}
}

func TestKeyPersistsAcrossRestart(t *testing.T) {
	db := testkit.Postgres(t)
	c1, _ := start(t, db)
	k1, err := c1.ServerKeys(context.Background(), &keyserverv1.ServerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := start(t, db)
	k2, err := c2.ServerKeys(context.Background(), &keyserverv1.ServerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if k1.VerifyKeys[0].KeyId != k2.VerifyKeys[0].KeyId || string(k1.VerifyKeys[0].PublicKey) != string(k2.VerifyKeys[0].PublicKey) {
		t.Fatal("signing key changed across restart")
	}
}

func TestServerKeysEndpointIsSelfSigned(t *testing.T) {
	client, hs := start(t, testkit.Postgres(t))
	res, err := http.Get(hs.URL + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var parsed struct {
		ServerName string `json:"server_name"`
		VerifyKeys map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
		ValidUntilTS int64 `json:"valid_until_ts"`
	}
	if err := json.Unmarshal(body, &parsed); err != nil {
		t.Fatal(err)
	}
	keys, _ := client.ServerKeys(context.Background(), &keyserverv1.ServerKeysRequest{})
	vk := keys.VerifyKeys[0]
	if _, ok := parsed.VerifyKeys[vk.KeyId]; !ok || parsed.ServerName != "example.test" || parsed.ValidUntilTS == 0 {
		t.Fatalf("unexpected body %s", body)
	}
	if err := gomatrixserverlib.VerifyJSON("example.test", gomatrixserverlib.KeyID(vk.KeyId), vk.PublicKey, body); err != nil {
		t.Fatalf("key response not signed by its key: %v", err)
	}
}
