package keyserver_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

const alice = "@alice:example.test"

// e2eServer is a running key-server with its E2EKeyService client.
type e2eServer struct {
	client keyserverv1.E2EKeyServiceClient
	stop   func()
}

// startE2E runs a key-server (Run included: the publisher) on a real gRPC
// server; js may be nil (no publisher).
func startE2E(t *testing.T, dbURL string, js jetstream.JetStream) *e2eServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{
		Logger: zaptest.NewLogger(t), ServerName: "example.test", DatabaseURL: dbURL, JetStream: js,
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis) //nolint:errcheck
	conn, err := rpc.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			_ = conn.Close()
			g.Stop()
			svc.Close()
		})
	}
	t.Cleanup(stop)
	return &e2eServer{client: keyserverv1.NewE2EKeyServiceClient(conn), stop: stop}
}

// jetStream starts NATS with the streams declared.
func jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	js := testkit.JetStream(t, testkit.NATS(t))
	if err := bus.EnsureStreams(context.Background(), js, 1); err != nil {
		t.Fatal(err)
	}
	return js
}

// keyChanges returns every KeyChange on the stream so far, waiting until
// there are at least n.
func keyChanges(t *testing.T, js jetstream.JetStream, n int) []*keyserverv1.KeyChange {
	t.Helper()
	var out []*keyserverv1.KeyChange
	testkit.Eventually(t, 20*time.Second, func() error {
		out = out[:0]
		cons, err := js.OrderedConsumer(context.Background(), bus.KeyChangesStream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return err
		}
		info, err := js.Stream(context.Background(), bus.KeyChangesStream)
		if err != nil {
			return err
		}
		total := int(info.CachedInfo().State.Msgs)
		for range total {
			m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
			if err != nil {
				return err
			}
			var c keyserverv1.KeyChange
			if err := proto.Unmarshal(m.Data(), &c); err != nil {
				return err
			}
			if want := bus.KeyChangesSubject(c.GetUserId()); m.Subject() != want {
				return fmt.Errorf("subject %s, want %s", m.Subject(), want)
			}
			if id := m.Headers().Get("Nats-Msg-Id"); id != bus.KeyChangeMsgID(c.GetPosition()) {
				return fmt.Errorf("message ID %q for position %d", id, c.GetPosition())
			}
			out = append(out, &c)
		}
		if len(out) < n {
			return fmt.Errorf("%d key changes, want %d", len(out), n)
		}
		return nil
	})
	return out
}

// deviceKey is a device's ed25519 key.
type deviceKey struct {
	priv ed25519.PrivateKey
	pub  string
}

func newDeviceKey(t *testing.T) deviceKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return deviceKey{priv: priv, pub: base64.RawStdEncoding.EncodeToString(pub)}
}

// sign signs obj as user's key keyID.
func (k deviceKey) sign(t *testing.T, user, keyID string, obj any) []byte {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(user, gomatrixserverlib.KeyID(keyID), k.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// deviceKeys is a signed device keys object of a device of alice.
func (k deviceKey) deviceKeys(t *testing.T, device, curve string) []byte {
	return k.sign(t, alice, "ed25519:"+device, map[string]any{
		"user_id": alice, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys": map[string]string{"curve25519:" + device: curve, "ed25519:" + device: k.pub},
	})
}

// crossKey is a cross-signing key object of alice, signed by `by` if set.
func crossKey(t *testing.T, k deviceKey, usage string, by *deviceKey) []byte {
	obj := map[string]any{"user_id": alice, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
	if by == nil {
		raw, _ := json.Marshal(obj)
		return raw
	}
	return by.sign(t, alice, "ed25519:"+by.pub, obj)
}

// reasonOf is the E2EKeyError reason of a refused call.
func reasonOf(err error) (codes.Code, string) {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info.GetReason()
		}
	}
	return st.Code(), ""
}

// TestKeyChangesArePublished follows one user's device through its
// changes and checks each KeyChange on MYELIN_KEY_CHANGES: device keys
// with the device's name, the previous device change's position, a rename,
// the cross-signing keys, a deletion; in position order, as far as
// SyncKeys reports.
func TestKeyChangesArePublished(t *testing.T) {
	ctx := context.Background()
	js := jetStream(t)
	ks := startE2E(t, testkit.Postgres(t), js).client
	dk := newDeviceKey(t)

	if _, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV", DeviceDisplayName: "phone",
		DeviceKeys: dk.deviceKeys(t, "DEV", "curve1")}); err != nil {
		t.Fatal(err)
	}
	// Only one-time keys: no device list change.
	if _, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV",
		OneTimeKeys: []*keyserverv1.KeyEntry{{KeyId: "signed_curve25519:A", Key: []byte(`{"key":"a"}`)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV", DeviceDisplayName: "ignored",
		DeviceKeys: dk.deviceKeys(t, "DEV", "curve2")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DeviceRenamed(ctx, &keyserverv1.DeviceRenamedRequest{UserId: alice, DeviceId: "DEV", DisplayName: "laptop"}); err != nil {
		t.Fatal(err)
	}
	master, self := newDeviceKey(t), newDeviceKey(t)
	if _, err := ks.UploadCrossSigningKeys(ctx, &keyserverv1.UploadCrossSigningKeysRequest{UserId: alice,
		MasterKey: crossKey(t, master, "master", nil), SelfSigningKey: crossKey(t, self, "self_signing", &master)}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DevicesDeleted(ctx, &keyserverv1.DevicesDeletedRequest{UserId: alice, DeviceIds: []string{"DEV", "NOKEYS"}}); err != nil {
		t.Fatal(err)
	}

	got := keyChanges(t, js, 5)
	if len(got) != 5 {
		t.Fatalf("%d key changes, want 5: %v", len(got), got)
	}
	for i, c := range got {
		if c.GetUserId() != alice || (i > 0 && c.GetPosition() <= got[i-1].GetPosition()) {
			t.Errorf("change %d: %v", i, c)
		}
	}
	device := keyserverv1.KeyChangeKind_KEY_CHANGE_KIND_DEVICE
	first, second, renamed, signing, deleted := got[0], got[1], got[2], got[3], got[4]
	if first.GetKind() != device || first.GetDeviceId() != "DEV" || first.GetDeviceDisplayName() != "phone" ||
		len(first.GetPrevPositions()) != 0 || !json.Valid(first.GetDeviceKeys()) || first.GetDeleted() {
		t.Errorf("first upload: %v", first)
	}
	if second.GetKind() != device || second.GetDeviceDisplayName() != "phone" || !slices.Equal(second.GetPrevPositions(), []int64{first.GetPosition()}) {
		t.Errorf("second upload: %v", second)
	}
	if renamed.GetKind() != device || renamed.GetDeviceDisplayName() != "laptop" || !slices.Equal(renamed.GetPrevPositions(), []int64{second.GetPosition()}) ||
		string(renamed.GetDeviceKeys()) != string(second.GetDeviceKeys()) {
		t.Errorf("rename: %v", renamed)
	}
	var mk, sk struct {
		Keys map[string]string `json:"keys"`
	}
	if signing.GetKind() != keyserverv1.KeyChangeKind_KEY_CHANGE_KIND_SIGNING_KEYS ||
		json.Unmarshal(signing.GetMasterKey(), &mk) != nil || json.Unmarshal(signing.GetSelfSigningKey(), &sk) != nil ||
		mk.Keys["ed25519:"+master.pub] != master.pub || sk.Keys["ed25519:"+self.pub] != self.pub {
		t.Errorf("signing keys: %v", signing)
	}
	if deleted.GetKind() != device || !deleted.GetDeleted() || deleted.GetDeviceId() != "DEV" || len(deleted.GetDeviceKeys()) != 0 ||
		deleted.GetDeviceDisplayName() != "laptop" || !slices.Equal(deleted.GetPrevPositions(), []int64{renamed.GetPosition()}) {
		t.Errorf("deletion: %v", deleted)
	}
	// A rename is published but is no key change for clients.
	if ch, err := ks.KeyChanges(ctx, &keyserverv1.KeyChangesRequest{After: second.GetPosition(), Upto: renamed.GetPosition()}); err != nil || len(ch.GetUserIds()) != 0 {
		t.Errorf("key changes over the rename: %v, %v", ch, err)
	}
	// SyncKeys' position is the last change's, and the range lists alice.
	st, err := ks.SyncKeys(ctx, &keyserverv1.SyncKeysRequest{UserId: alice, DeviceId: "DEV", After: first.GetPosition() - 1, WithChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetPosition() != deleted.GetPosition() || !slices.Equal(st.GetChangedUserIds(), []string{alice}) {
		t.Errorf("SyncKeys: %v", st)
	}
	// A deleted device's keys are gone.
	q, err := ks.QueryKeys(ctx, &keyserverv1.QueryKeysRequest{Users: []*keyserverv1.UserDevices{{UserId: alice}}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(q.GetUsers()[alice].GetDevices()); n != 0 {
		t.Errorf("%d devices after the deletion", n)
	}
}

// TestConcurrentChangesAllPublished uploads keys from many devices at
// once: every change gets its own position and reaches the stream, in
// position order (positions commit in order, so the publisher's
// watermark skips none).
func TestConcurrentChangesAllPublished(t *testing.T) {
	ctx := context.Background()
	js := jetStream(t)
	ks := startE2E(t, testkit.Postgres(t), js).client
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dk := newDeviceKey(t)
			dev := fmt.Sprintf("DEV%d", i)
			_, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: dev, DeviceKeys: dk.deviceKeys(t, dev, "c")})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := keyChanges(t, js, n)
	devices := map[string]bool{}
	for i, c := range got {
		if i > 0 && c.GetPosition() <= got[i-1].GetPosition() {
			t.Errorf("position %d after %d", c.GetPosition(), got[i-1].GetPosition())
		}
		devices[c.GetDeviceId()] = true
	}
	if len(got) != n || len(devices) != n {
		t.Errorf("%d changes of %d devices, want %d", len(got), len(devices), n)
	}
}

// TestUnpublishedChangesSurviveRestarts commits changes while no
// publisher runs (as after a crash between commit and publish): the next
// key-server publishes them. A publisher that sends changes again (its
// watermark was not saved) adds no duplicates.
func TestUnpublishedChangesSurviveRestarts(t *testing.T) {
	ctx := context.Background()
	db := testkit.Postgres(t)
	js := jetStream(t)
	first := startE2E(t, db, nil)
	dk := newDeviceKey(t)
	for _, dev := range []string{"A", "B"} {
		if _, err := first.client.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: dev, DeviceKeys: dk.deviceKeys(t, dev, "c")}); err != nil {
			t.Fatal(err)
		}
	}
	first.stop()

	second := startE2E(t, db, js)
	got := keyChanges(t, js, 2)
	if len(got) != 2 || got[0].GetDeviceId() != "A" || got[1].GetDeviceId() != "B" {
		t.Fatalf("after the restart: %v", got)
	}
	second.stop()

	// The watermark is lost (a crash right after publishing): everything
	// is sent again, and JetStream drops the repeats by message ID.
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE keyserver.key_changes_published SET published_up_to = 0`); err != nil {
		t.Fatal(err)
	}
	third := startE2E(t, db, js)
	testkit.Eventually(t, 20*time.Second, func() error {
		var p int64
		if err := conn.QueryRow(ctx, `SELECT published_up_to FROM keyserver.key_changes_published`).Scan(&p); err != nil {
			return err
		}
		if p != got[1].GetPosition() {
			return fmt.Errorf("published up to %d", p)
		}
		return nil
	})
	if again := keyChanges(t, js, 2); len(again) != 2 {
		t.Errorf("%d messages after the republish, want 2", len(again))
	}
	third.stop()
}

// TestRefusalsCarryReasons checks that refusals come as statuses with the
// E2EKeyError reason the client-API maps to Matrix errors.
func TestRefusalsCarryReasons(t *testing.T) {
	ctx := context.Background()
	ks := startE2E(t, testkit.Postgres(t), nil).client
	dk := newDeviceKey(t)
	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason keyserverv1.E2EKeyError
	}{
		{"another device's keys", func() error {
			_, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV", DeviceKeys: dk.deviceKeys(t, "OTHER", "c")})
			return err
		}, codes.InvalidArgument, keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_PARAM},
		{"device keys not an object", func() error {
			_, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV", DeviceKeys: []byte(`[1]`)})
			return err
		}, codes.InvalidArgument, keyserverv1.E2EKeyError_E2E_KEY_ERROR_BAD_JSON},
		{"bad one-time key ID", func() error {
			_, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV",
				OneTimeKeys: []*keyserverv1.KeyEntry{{KeyId: "nocolon", Key: []byte(`"k"`)}}})
			return err
		}, codes.InvalidArgument, keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_PARAM},
		{"no cross-signing keys", func() error {
			_, err := ks.UploadCrossSigningKeys(ctx, &keyserverv1.UploadCrossSigningKeysRequest{UserId: alice, MasterKey: []byte(`{}`)})
			return err
		}, codes.InvalidArgument, keyserverv1.E2EKeyError_E2E_KEY_ERROR_MISSING_PARAM},
		{"self-signing key not signed by the master key", func() error {
			m, s := newDeviceKey(t), newDeviceKey(t)
			_, err := ks.UploadCrossSigningKeys(ctx, &keyserverv1.UploadCrossSigningKeysRequest{UserId: alice,
				MasterKey: crossKey(t, m, "master", nil), SelfSigningKey: crossKey(t, s, "self_signing", &s)})
			return err
		}, codes.InvalidArgument, keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_SIGNATURE},
		{"no backup version", func() error {
			_, err := ks.GetBackupVersion(ctx, &keyserverv1.GetBackupVersionRequest{UserId: alice})
			return err
		}, codes.NotFound, keyserverv1.E2EKeyError_E2E_KEY_ERROR_NOT_FOUND},
		{"backup auth_data not an object", func() error {
			_, err := ks.CreateBackupVersion(ctx, &keyserverv1.CreateBackupVersionRequest{UserId: alice, Algorithm: "a", AuthData: []byte(`"x"`)})
			return err
		}, codes.InvalidArgument, keyserverv1.E2EKeyError_E2E_KEY_ERROR_BAD_JSON},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, reason := reasonOf(c.call())
			if code != c.code || reason != c.reason.String() {
				t.Errorf("got %v %q, want %v %v", code, reason, c.code, c.reason)
			}
		})
	}
}

// TestBackupKeepsTheBetterKey checks the better-key rule and that only
// the latest version takes keys.
func TestBackupKeepsTheBetterKey(t *testing.T) {
	ctx := context.Background()
	ks := startE2E(t, testkit.Postgres(t), nil).client
	v1, err := ks.CreateBackupVersion(ctx, &keyserverv1.CreateBackupVersionRequest{UserId: alice, Algorithm: "m.megolm_backup.v1", AuthData: []byte(`{"a":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	put := func(version int64, k *keyserverv1.BackupKey) (*keyserverv1.BackupKeysTag, error) {
		k.RoomId, k.SessionId = "!r:example.test", "S"
		return ks.PutBackupKeys(ctx, &keyserverv1.PutBackupKeysRequest{UserId: alice, Version: version, Keys: []*keyserverv1.BackupKey{k}})
	}
	stored := func() *keyserverv1.BackupKey {
		t.Helper()
		resp, err := ks.GetBackupKeys(ctx, &keyserverv1.GetBackupKeysRequest{UserId: alice, Version: v1.GetVersion(), RoomId: "!r:example.test", SessionId: "S"})
		if err != nil || len(resp.GetKeys()) != 1 {
			t.Fatalf("get: %v, %v", resp, err)
		}
		return resp.GetKeys()[0]
	}
	steps := []struct {
		key      *keyserverv1.BackupKey
		wantData string
	}{
		{&keyserverv1.BackupKey{FirstMessageIndex: 5, ForwardedCount: 1, SessionData: []byte(`{"n":1}`)}, `{"n":1}`},
		{&keyserverv1.BackupKey{FirstMessageIndex: 6, ForwardedCount: 0, SessionData: []byte(`{"n":2}`)}, `{"n":1}`},                   // later index: worse
		{&keyserverv1.BackupKey{FirstMessageIndex: 5, ForwardedCount: 0, SessionData: []byte(`{"n":3}`)}, `{"n":3}`},                   // fewer forwards: better
		{&keyserverv1.BackupKey{FirstMessageIndex: 9, ForwardedCount: 3, IsVerified: true, SessionData: []byte(`{"n":4}`)}, `{"n":4}`}, // verified: best
		{&keyserverv1.BackupKey{FirstMessageIndex: 0, ForwardedCount: 0, SessionData: []byte(`{"n":5}`)}, `{"n":4}`},                   // unverified: worse
	}
	for i, st := range steps {
		if _, err := put(v1.GetVersion(), st.key); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := string(stored().GetSessionData()); got != st.wantData {
			t.Errorf("step %d: stored %s, want %s", i, got, st.wantData)
		}
	}
	v2, err := ks.CreateBackupVersion(ctx, &keyserverv1.CreateBackupVersionRequest{UserId: alice, Algorithm: "m.megolm_backup.v1", AuthData: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = put(v1.GetVersion(), &keyserverv1.BackupKey{SessionData: []byte(`{}`)})
	st, _ := status.FromError(err)
	var meta map[string]string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			meta = info.GetMetadata()
		}
	}
	if code, reason := reasonOf(err); code != codes.FailedPrecondition || reason != keyserverv1.E2EKeyError_E2E_KEY_ERROR_WRONG_BACKUP_VERSION.String() ||
		meta["current_version"] != fmt.Sprint(v2.GetVersion()) {
		t.Errorf("write to the old version: %v (%v)", err, meta)
	}
}

// TestImportKeys imports keys as the client-API hands over its old
// tables: they are served as before (display names, claim order, used
// fallback keys, backups, old positions), new positions continue above
// every old one, and a second import changes nothing, not even what was
// imported and changed since.
func TestImportKeys(t *testing.T) {
	ctx := context.Background()
	js := jetStream(t)
	ks := startE2E(t, testkit.Postgres(t), js).client
	dk := newDeviceKey(t)
	oldKeys := dk.deviceKeys(t, "OLD", "curve-old")
	batches := []*keyserverv1.ImportKeysRequest{{
		MinPosition: 40,
		Devices:     []*keyserverv1.ImportedDevice{{UserId: alice, DeviceId: "OLD", Keys: oldKeys, DisplayName: "old phone"}},
		OneTimeKeys: []*keyserverv1.ImportedOneTimeKey{
			{UserId: alice, DeviceId: "OLD", Algorithm: "signed_curve25519", KeyId: "Z", Key: []byte(`{"key":"first"}`)},
			{UserId: alice, DeviceId: "OLD", Algorithm: "signed_curve25519", KeyId: "A", Key: []byte(`{"key":"second"}`)},
		},
		FallbackKeys: []*keyserverv1.ImportedFallbackKey{{UserId: alice, DeviceId: "OLD", Algorithm: "signed_curve25519", KeyId: "F", Key: []byte(`{"key":"fb"}`), Used: true}},
	}, {
		MinPosition:       40,
		DeviceListChanges: []*keyserverv1.ImportedDeviceListChange{{Position: 3, UserId: alice}, {Position: 7, UserId: "@bob:example.test"}},
		BackupVersions:    []*keyserverv1.ImportedBackupVersion{{UserId: alice, Version: 2, Algorithm: "alg", AuthData: []byte(`{"x":1}`), Etag: 5}},
		BackupKeys: []*keyserverv1.ImportedBackupKey{{UserId: alice, Version: 2, Key: &keyserverv1.BackupKey{RoomId: "!r:example.test", SessionId: "S",
			FirstMessageIndex: 1, SessionData: []byte(`{"s":1}`)}}},
	}}
	importAll := func() *keyserverv1.ImportKeysResponse {
		t.Helper()
		stream, err := ks.ImportKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range batches {
			if err := stream.Send(b); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := importAll(); resp.GetAlreadyImported() || resp.GetRows() != 8 {
		t.Fatalf("first import: %v", resp)
	}

	q, err := ks.QueryKeys(ctx, &keyserverv1.QueryKeysRequest{Users: []*keyserverv1.UserDevices{{UserId: alice}}})
	if err != nil {
		t.Fatal(err)
	}
	if d := q.GetUsers()[alice].GetDevices()["OLD"]; d.GetDisplayName() != "old phone" || string(d.GetKeys()) != string(oldKeys) {
		t.Errorf("imported device: %v", d)
	}
	// Old changes keep their positions.
	ch, err := ks.KeyChanges(ctx, &keyserverv1.KeyChangesRequest{After: 3, Upto: 40})
	if err != nil || !slices.Equal(ch.GetUserIds(), []string{"@bob:example.test"}) {
		t.Errorf("changes in (3, 40]: %v, %v", ch, err)
	}
	// One-time keys in their old order, then the (used) fallback key.
	for _, want := range []string{"signed_curve25519:Z", "signed_curve25519:A", "signed_curve25519:F"} {
		c, err := ks.ClaimKeys(ctx, &keyserverv1.ClaimKeysRequest{Claims: []*keyserverv1.ClaimKey{{UserId: alice, DeviceId: "OLD", Algorithm: "signed_curve25519"}}})
		if err != nil || len(c.GetKeys()) != 1 || c.GetKeys()[0].GetKeyId() != want {
			t.Errorf("claim: %v, %v; want %s", c, err, want)
		}
	}
	b, err := ks.GetBackupVersion(ctx, &keyserverv1.GetBackupVersionRequest{UserId: alice})
	if err != nil || b.GetVersion() != 2 || b.GetEtag() != 5 || b.GetCount() != 1 {
		t.Errorf("imported backup: %v, %v", b, err)
	}
	// New positions continue above every old one.
	newKeys := dk.deviceKeys(t, "OLD", "curve-new")
	if _, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "OLD", DeviceKeys: newKeys}); err != nil {
		t.Fatal(err)
	}
	st, err := ks.SyncKeys(ctx, &keyserverv1.SyncKeysRequest{UserId: alice, DeviceId: "OLD", After: 40, WithChanges: true})
	if err != nil || st.GetPosition() <= 40 || !slices.Equal(st.GetChangedUserIds(), []string{alice}) {
		t.Errorf("after a new change: %v, %v", st, err)
	}
	// Imported changes are not published; the new one is, at its position.
	if got := keyChanges(t, js, 1); len(got) != 1 || got[0].GetPosition() != st.GetPosition() || got[0].GetDeviceDisplayName() != "old phone" {
		t.Errorf("published: %v", got)
	}

	// A second import (a retry) changes nothing.
	if resp := importAll(); !resp.GetAlreadyImported() || resp.GetRows() != 0 {
		t.Errorf("second import: %v", resp)
	}
	q, err = ks.QueryKeys(ctx, &keyserverv1.QueryKeysRequest{Users: []*keyserverv1.UserDevices{{UserId: alice, DeviceIds: []string{"OLD"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if d := q.GetUsers()[alice].GetDevices()["OLD"]; string(d.GetKeys()) != string(newKeys) {
		t.Errorf("the second import overwrote newer keys: %s", d.GetKeys())
	}
	c, err := ks.ClaimKeys(ctx, &keyserverv1.ClaimKeysRequest{Claims: []*keyserverv1.ClaimKey{{UserId: alice, DeviceId: "OLD", Algorithm: "signed_curve25519"}}})
	if err != nil || len(c.GetKeys()) != 1 || c.GetKeys()[0].GetKeyId() != "signed_curve25519:F" {
		t.Errorf("claimed one-time keys came back: %v, %v", c, err)
	}
}
