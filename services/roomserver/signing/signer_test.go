package signing_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
	"github.com/myelin-chat/myelin/services/roomserver/signing"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const server = "example.test"

// keyServer runs a real key-server for server on a gRPC server.
func keyServer(t *testing.T) (keyserverv1.KeyServiceClient, keyserverv1.ServerKeyServiceClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	svc, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{
		Logger: zaptest.NewLogger(t), ServerName: server, DatabaseURL: testkit.Postgres(t),
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
	return keyserverv1.NewKeyServiceClient(conn), keyserverv1.NewServerKeyServiceClient(conn)
}

// TestBuild: an event the signer builds parses as untrusted JSON (content
// hash, event ID as reference hash from room version 3 on), carries one
// signature, this server's, and verifies against the key-server's
// published keys; BuildAt sets origin_server_ts. Bad proto-events and
// oversized ones fail with the signer's errors, and a key-server that
// signs for another server name is refused.
func TestBuild(t *testing.T) {
	ctx := context.Background()
	ks, sks := keyServer(t)
	signer := signing.NewSigner(server, ks, sks)
	verifier := signing.NewVerifier(sks, time.Minute)
	senderUser := func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) { return spec.NewUserID(string(s), true) }
	proto := func(prev string, content string) *gomatrixserverlib.ProtoEvent {
		return &gomatrixserverlib.ProtoEvent{
			SenderID: "@alice:" + server, RoomID: "!room:" + server, Type: "m.room.message",
			PrevEvents: []string{prev}, AuthEvents: []string{prev}, Depth: 3, Content: []byte(content),
		}
	}
	for _, version := range []string{"1", "4", "11"} {
		verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
		prev := "$prev"
		if version == "1" {
			prev = "$prev:" + server
		}
		ts := time.Now().Add(-time.Hour).UnixMilli()
		for _, at := range []*int64{nil, &ts} {
			built, err := signer.BuildAt(ctx, verImpl, proto(prev, `{"body":"hi","msgtype":"m.text"}`), at)
			if err != nil {
				t.Fatalf("v%s: %v", version, err)
			}
			pdu, err := verImpl.NewEventFromUntrustedJSON(built.JSON())
			if err != nil {
				t.Fatalf("v%s: built event does not parse as untrusted: %v", version, err)
			}
			if pdu.EventID() != built.EventID() || pdu.Redacted() {
				t.Fatalf("v%s: event ID %s, built %s, redacted %v", version, pdu.EventID(), built.EventID(), pdu.Redacted())
			}
			if got := pdu.PrevEventIDs(); len(got) != 1 || got[0] != prev {
				t.Fatalf("v%s: prev_events %v", version, got)
			}
			if at != nil && int64(pdu.OriginServerTS()) != ts {
				t.Fatalf("v%s: origin_server_ts %d, want %d", version, pdu.OriginServerTS(), ts)
			}
			var sigs struct {
				Signatures map[string]map[string]json.RawMessage `json:"signatures"`
			}
			if err := json.Unmarshal(built.JSON(), &sigs); err != nil || len(sigs.Signatures) != 1 || len(sigs.Signatures[server]) != 1 {
				t.Fatalf("v%s: want one signature of %s, got %s (%v)", version, server, built.JSON(), err)
			}
			if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, verifier, senderUser); err != nil {
				t.Fatalf("v%s: does not verify: %v", version, err)
			}
		}
	}

	v11 := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV11)
	for _, bad := range []struct {
		name    string
		content string
		want    error
	}{
		{"content not JSON", `not json`, signing.ErrInvalidEvent},
		{"too large", `{"body":"` + strings.Repeat("x", 70000) + `"}`, signing.ErrTooLarge},
	} {
		if _, err := signer.Build(ctx, v11, proto("$prev", bad.content)); !errors.Is(err, bad.want) {
			t.Errorf("%s: got %v, want %v", bad.name, err, bad.want)
		}
	}

	other := signing.NewSigner("other.test", ks, sks)
	if _, err := other.Build(ctx, v11, proto("$prev", `{}`)); err == nil {
		t.Error("a signer for other.test built with example.test's key")
	}
}
