package keyserver_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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

// TestBuildEvent: a built event parses as untrusted JSON (content hash,
// event ID as reference hash from room version 3 on) and its one signature,
// over the redacted event, verifies with the published key.
func TestBuildEvent(t *testing.T) {
	client, _ := start(t, testkit.Postgres(t))
	ctx := context.Background()
	keys, err := client.ServerKeys(ctx, &keyserverv1.ServerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	vk := keys.VerifyKeys[0]
	for _, version := range []string{"1", "4", "11"} {
		verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
		prev := "$prev"
		if version == "1" {
			prev = "$prev:example.test"
		}
		proto, _ := json.Marshal(gomatrixserverlib.ProtoEvent{
			SenderID: "@alice:example.test", RoomID: "!room:example.test", Type: "m.room.message",
			PrevEvents: []string{prev}, AuthEvents: []string{prev}, Depth: 3,
			Content: []byte(`{"body":"hi","msgtype":"m.text"}`),
		})
		resp, err := client.BuildEvent(ctx, &keyserverv1.BuildEventRequest{RoomVersion: version, ProtoEvent: proto})
		if err != nil {
			t.Fatalf("v%s: %v", version, err)
		}
		pdu, err := verImpl.NewEventFromUntrustedJSON(resp.EventJson)
		if err != nil {
			t.Fatalf("v%s: built event does not parse as untrusted: %v", version, err)
		}
		if pdu.EventID() != resp.EventId || pdu.Redacted() || resp.ServerName != "example.test" {
			t.Fatalf("v%s: event ID %s, response %s, redacted %v", version, pdu.EventID(), resp.EventId, pdu.Redacted())
		}
		if got := pdu.PrevEventIDs(); len(got) != 1 || got[0] != prev {
			t.Fatalf("v%s: prev_events %v", version, got)
		}
		sigs := map[string]map[string]json.RawMessage{}
		_ = json.Unmarshal([]byte(gjsonGet(t, resp.EventJson, "signatures")), &sigs)
		if len(sigs) != 1 || len(sigs["example.test"]) != 1 {
			t.Fatalf("v%s: want one signature, got %v", version, sigs)
		}
		redacted, err := verImpl.RedactEventJSON(resp.EventJson)
		if err != nil {
			t.Fatal(err)
		}
		if err := gomatrixserverlib.VerifyJSON("example.test", gomatrixserverlib.KeyID(vk.KeyId), vk.PublicKey, redacted); err != nil {
			t.Fatalf("v%s: signature does not verify: %v", version, err)
		}
	}
	for _, bad := range []*keyserverv1.BuildEventRequest{
		{RoomVersion: "11", ProtoEvent: []byte(`not json`)},
		{RoomVersion: "nope", ProtoEvent: []byte(`{}`)},
		{RoomVersion: "11", ProtoEvent: []byte(`{"type":"m.room.message","content":{"body":"` + strings.Repeat("x", 70000) + `"}}`)},
	} {
		if _, err := client.BuildEvent(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("BuildEvent(%.40s): want InvalidArgument, got %v", bad.ProtoEvent, err)
		}
	}
}

func gjsonGet(t *testing.T, raw []byte, key string) string {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	return string(obj[key])
}
