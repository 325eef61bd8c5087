// Package keysupgrade checks that a server upgraded from the version that
// kept end-to-end keys in the client-API loses none of them: the database
// is set up as that version left it (client-API migrations up to 037 and
// rows as its store code wrote them), then the current stack starts on it,
// and mautrix-go checks over HTTP that keys, claims, cross-signing, key
// backups and an old sync token still work.
package keysupgrade

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/pgstore"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const (
	server = "localhost"
	alice  = "@alice:" + server
	bob    = "@bob:" + server
	// lastOldMigration is the client-API's last migration before the keys
	// moved to the key-server.
	lastOldMigration = 37
)

// oldMigrations are the client-API's migrations up to lastOldMigration,
// from the source tree.
func oldMigrations(t *testing.T) fstest.MapFS {
	t.Helper()
	dir := filepath.Join("..", "..", "services", "clientapi", "store", "migrations")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := fstest.MapFS{}
	re := regexp.MustCompile(`^(\d+)_`)
	for _, e := range entries {
		m := re.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if v, _ := strconv.Atoi(m[1]); v > lastOldMigration {
			continue
		}
		body, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out["m/"+e.Name()] = &fstest.MapFile{Data: body}
	}
	if len(out) == 0 || out["m/034_e2e_keys.sql"] == nil || out["m/035_key_backup.sql"] == nil {
		t.Fatalf("old migrations not found in %s", dir)
	}
	return out
}

// key is an ed25519 key pair.
type key struct {
	priv ed25519.PrivateKey
	pub  string
}

func newKey(t *testing.T) key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key{priv: priv, pub: base64.RawStdEncoding.EncodeToString(pub)}
}

func (k key) sign(t *testing.T, user, keyID string, obj []byte) []byte {
	t.Helper()
	signed, err := gomatrixserverlib.SignJSON(user, gomatrixserverlib.KeyID(keyID), k.priv, obj)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// oldServer is what the old version stored, and what to expect of it.
type oldServer struct {
	aliceToken, bobToken string
	deviceKey            key
	master, self, usk    key
	masterObj, selfObj   []byte
	uskObj               []byte
}

// writeOldData sets the database up as the old version left it: the
// client-API's schema up to migration 037, and rows written as its store
// code wrote them (accounts, devices and tokens; alice's device keys with
// a signature by her self-signing key merged in, three one-time keys, a
// fallback key, cross-signing keys, device list changes at positions 1-3,
// a deleted and a live key backup version with two keys).
func writeOldData(t *testing.T, dbURL string) oldServer {
	t.Helper()
	ctx := context.Background()
	pool, err := pgstore.Open(ctx, dbURL, "clientapi", 2, oldMigrations(t), "m")
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SET search_path = clientapi`); err != nil {
		t.Fatal(err)
	}
	o := oldServer{aliceToken: "old-token-alice", bobToken: "old-token-bob", deviceKey: newKey(t),
		master: newKey(t), self: newKey(t), usk: newKey(t)}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Accounts, devices, tokens (store/accounts.go: Register, addLogin).
	for _, u := range []struct{ localpart, user, device, name, token string }{
		{"alice", alice, "ADEV", "Alice's phone", o.aliceToken},
		{"bob", bob, "BDEV", "Bob's laptop", o.bobToken},
	} {
		exec(`INSERT INTO accounts (localpart, password_hash, is_admin, is_guest, displayname) VALUES ($1, NULL, false, false, $2)`, u.localpart, u.localpart)
		exec(`INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip) VALUES ($1, $2, $3, $4, '127.0.0.1')`,
			u.user, u.device, u.name, time.Now().UnixMilli())
		hash := sha256.Sum256([]byte(u.token))
		exec(`INSERT INTO access_tokens (token_hash, user_id, device_id) VALUES ($1, $2, $3)`, hash[:], u.user, u.device)
	}
	// Alice's device keys, as /keys/upload stored them, then with her
	// self-signing key's signature merged in (AddSignatures).
	devObj := mustJSON(t, map[string]any{"user_id": alice, "device_id": "ADEV",
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:ADEV": "curve-adev", "ed25519:ADEV": o.deviceKey.pub}})
	signedDev := o.deviceKey.sign(t, alice, "ed25519:ADEV", devObj)
	bySelf := o.self.sign(t, alice, "ed25519:"+o.self.pub, devObj)
	var withSelf, selfSigs map[string]json.RawMessage
	_ = json.Unmarshal(signedDev, &withSelf)
	_ = json.Unmarshal(bySelf, &selfSigs)
	var sigs map[string]map[string]string
	_ = json.Unmarshal(withSelf["signatures"], &sigs)
	var extra map[string]map[string]string
	_ = json.Unmarshal(selfSigs["signatures"], &extra)
	sigs[alice]["ed25519:"+o.self.pub] = extra[alice]["ed25519:"+o.self.pub]
	withSelf["signatures"] = mustJSON(t, sigs)
	exec(`INSERT INTO device_keys (user_id, device_id, keys) VALUES ($1, 'ADEV', $2)`, alice, mustJSON(t, withSelf))
	exec(`INSERT INTO device_list_changes (user_id) VALUES ($1)`, alice) // position 1
	for _, k := range []string{"AAAA", "AAAB", "AAAC"} {
		otk := o.deviceKey.sign(t, alice, "ed25519:ADEV", mustJSON(t, map[string]string{"key": "otk-" + k}))
		exec(`INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key) VALUES ($1, 'ADEV', 'signed_curve25519', $2, $3)`, alice, k, otk)
	}
	fallback := o.deviceKey.sign(t, alice, "ed25519:ADEV", mustJSON(t, map[string]any{"key": "fallback", "fallback": true}))
	exec(`INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key) VALUES ($1, 'ADEV', 'signed_curve25519', 'FFFF', $2)`, alice, fallback)
	// Cross-signing keys (PutCrossSigningKeys).
	cross := func(k key, usage string, by *key) []byte {
		obj := mustJSON(t, map[string]any{"user_id": alice, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}})
		if by == nil {
			return obj
		}
		return by.sign(t, alice, "ed25519:"+by.pub, obj)
	}
	o.masterObj, o.selfObj, o.uskObj = cross(o.master, "master", nil), cross(o.self, "self_signing", &o.master), cross(o.usk, "user_signing", &o.master)
	for typ, k := range map[string][]byte{"master": o.masterObj, "self_signing": o.selfObj, "user_signing": o.uskObj} {
		exec(`INSERT INTO cross_signing_keys (user_id, key_type, keys) VALUES ($1, $2, $3)`, alice, typ, k)
	}
	exec(`INSERT INTO device_list_changes (user_id) VALUES ($1)`, alice) // position 2
	bobDev := mustJSON(t, map[string]any{"user_id": bob, "device_id": "BDEV", "keys": map[string]string{"ed25519:BDEV": "bob-ed"}})
	exec(`INSERT INTO device_keys (user_id, device_id, keys) VALUES ($1, 'BDEV', $2)`, bob, bobDev)
	exec(`INSERT INTO device_list_changes (user_id) VALUES ($1)`, bob) // position 3
	// Key backups (store/keybackup.go): version 1 deleted, version 2 with
	// two sessions and etag 2.
	exec(`INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data, deleted) VALUES ($1, 1, 'm.megolm_backup.v1.curve25519-aes-sha2', '{"public_key":"old"}', true)`, alice)
	exec(`INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data, etag) VALUES ($1, 2, 'm.megolm_backup.v1.curve25519-aes-sha2', '{"public_key":"pk"}', 2)`, alice)
	for _, s := range []string{"S1", "S2"} {
		exec(`INSERT INTO key_backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
			VALUES ($1, 2, '!room:localhost', $2, 3, 1, false, $3)`, alice, s, []byte(`{"ciphertext":"`+s+`"}`))
	}
	var pos int64
	if err := conn.QueryRow(ctx, `SELECT MAX(pos) FROM device_list_changes`).Scan(&pos); err != nil || pos != 3 {
		t.Fatalf("old device list position %d, %v", pos, err)
	}
	return o
}

// kposOf is the device list position ("_k") of a sync token.
func kposOf(t *testing.T, token string) int64 {
	t.Helper()
	for _, part := range strings.Split(token, "_") {
		if v, ok := strings.CutPrefix(part, "k"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("token %q: %v", token, err)
			}
			return n
		}
	}
	return 0
}

func TestKeysSurviveTheUpgrade(t *testing.T) {
	for _, shape := range []string{"all-in-one", "split"} {
		t.Run(shape, func(t *testing.T) { upgrade(t, shape == "split") })
	}
}

// upgrade sets up the old data, starts the current stack on it and checks
// it through mautrix-go.
func upgrade(t *testing.T, split bool) {
	ctx := context.Background()
	cfg := stack.TestConfig(t)
	cfg.ServerName = server
	old := writeOldData(t, cfg.Database.URL)

	url := startStack(t, cfg, split)
	client := func(user, token, device string) *mautrix.Client {
		cli, err := mautrix.NewClient(url, id.UserID(user), token)
		if err != nil {
			t.Fatal(err)
		}
		cli.DeviceID = id.DeviceID(device)
		return cli
	}
	aliceCli, bobCli := client(alice, old.aliceToken, "ADEV"), client(bob, old.bobToken, "BDEV")
	// The client-API answers keys once the hand-over is done.
	var q *mautrix.RespQueryKeys
	testkit.Eventually(t, 60*time.Second, func() error {
		var err error
		q, err = bobCli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice: {}}})
		return err
	})

	// Device keys, with the device's name and the self-signing signature;
	// cross-signing keys, the user-signing key only to its owner.
	dk, ok := q.DeviceKeys[alice]["ADEV"]
	if !ok || dk.Keys.GetEd25519("ADEV").String() != old.deviceKey.pub || dk.Unsigned["device_display_name"] != "Alice's phone" ||
		dk.Signatures[alice][id.NewKeyID(id.KeyAlgorithmEd25519, old.self.pub)] == "" {
		t.Errorf("alice's device after the upgrade: %+v", q.DeviceKeys[alice])
	}
	mk, sk := q.MasterKeys[alice], q.SelfSigningKeys[alice]
	if mk.FirstKey().String() != old.master.pub || sk.FirstKey().String() != old.self.pub {
		t.Errorf("cross-signing keys: %+v %+v", q.MasterKeys, q.SelfSigningKeys)
	}
	if _, ok := q.UserSigningKeys[alice]; ok {
		t.Errorf("bob sees alice's user-signing key")
	}
	own, err := aliceCli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice: {}}})
	if err != nil {
		t.Fatal(err)
	}
	if uk := own.UserSigningKeys[alice]; uk.FirstKey().String() != old.usk.pub {
		t.Errorf("alice's own user-signing key: %+v, %v", own.UserSigningKeys, err)
	}

	// The device's key state in /sync, then the claims: the one-time keys
	// in upload order, then the fallback key.
	aliceSync, err := aliceCli.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if aliceSync.DeviceOTKCount.SignedCurve25519 != 3 || !slices.Equal(aliceSync.FallbackKeys, []id.KeyAlgorithm{id.KeyAlgorithmSignedCurve25519}) {
		t.Errorf("alice's key state: counts %+v, unused fallback %v", aliceSync.DeviceOTKCount, aliceSync.FallbackKeys)
	}
	for i, want := range []id.KeyID{"signed_curve25519:AAAA", "signed_curve25519:AAAB", "signed_curve25519:AAAC", "signed_curve25519:FFFF", "signed_curve25519:FFFF"} {
		c, err := bobCli.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{alice: {"ADEV": id.KeyAlgorithmSignedCurve25519}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.OneTimeKeys[alice]["ADEV"][want]; !ok || len(c.OneTimeKeys[alice]["ADEV"]) != 1 {
			t.Errorf("claim %d: %v, want %s", i, c.OneTimeKeys, want)
		}
	}
	aliceSync, err = aliceCli.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil || aliceSync.DeviceOTKCount.SignedCurve25519 != 0 || len(aliceSync.FallbackKeys) != 0 {
		t.Errorf("alice's key state after the claims: %+v %v, %v", aliceSync.DeviceOTKCount, aliceSync.FallbackKeys, err)
	}

	// The stored master key counts: uploading the same keys again needs no
	// user-interactive auth (new ones would).
	var master, self, usk mautrix.CrossSigningKeys
	_ = json.Unmarshal(old.masterObj, &master)
	_ = json.Unmarshal(old.selfObj, &self)
	_ = json.Unmarshal(old.uskObj, &usk)
	if err := aliceCli.UploadCrossSigningKeys(ctx, &mautrix.UploadCrossSigningKeysReq[any]{Master: master, SelfSigning: self, UserSigning: usk}, nil); err != nil {
		t.Errorf("repeating the stored cross-signing keys: %v", err)
	}
	replaced := newKey(t)
	var newMaster mautrix.CrossSigningKeys
	_ = json.Unmarshal(mustJSON(t, map[string]any{"user_id": alice, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + replaced.pub: replaced.pub}}), &newMaster)
	var uia mautrix.HTTPError
	if err := aliceCli.UploadCrossSigningKeys(ctx, &mautrix.UploadCrossSigningKeysReq[any]{Master: newMaster}, nil); !errors.As(err, &uia) || !uia.IsStatus(http.StatusUnauthorized) {
		t.Errorf("a new master key without UIA: %v, want 401", err)
	}

	// Key backups: the live version, its keys, writes to it, and version
	// numbers never reused.
	v, err := aliceCli.GetKeyBackupLatestVersion(ctx)
	if err != nil || v.Version != "2" || v.ETag != "2" || v.Count != 2 {
		t.Errorf("latest backup version: %+v, %v", v, err)
	}
	var keys struct {
		Rooms map[string]struct {
			Sessions map[string]struct {
				FirstMessageIndex int             `json:"first_message_index"`
				SessionData       json.RawMessage `json:"session_data"`
			} `json:"sessions"`
		} `json:"rooms"`
	}
	keysURL := aliceCli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "room_keys", "keys"}, map[string]string{"version": "2"})
	if _, err := aliceCli.MakeRequest(ctx, http.MethodGet, keysURL, nil, &keys); err != nil {
		t.Fatal(err)
	}
	if s := keys.Rooms["!room:localhost"].Sessions; len(s) != 2 || string(s["S2"].SessionData) != `{"ciphertext":"S2"}` || s["S1"].FirstMessageIndex != 3 {
		t.Errorf("backed-up keys: %+v", keys)
	}
	var put struct {
		Etag  string `json:"etag"`
		Count int    `json:"count"`
	}
	sessionURL := aliceCli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "room_keys", "keys", "!room:localhost", "S3"}, map[string]string{"version": "2"})
	if _, err := aliceCli.MakeRequest(ctx, http.MethodPut, sessionURL, map[string]any{"first_message_index": 0, "forwarded_count": 0,
		"is_verified": true, "session_data": map[string]string{"ciphertext": "S3"}}, &put); err != nil || put.Etag != "3" || put.Count != 3 {
		t.Errorf("backup write: %+v, %v", put, err)
	}
	var created struct {
		Version string `json:"version"`
	}
	if _, err := aliceCli.MakeRequest(ctx, http.MethodPost, aliceCli.BuildClientURL("v3", "room_keys", "version"),
		map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]string{"public_key": "new"}}, &created); err != nil || created.Version != "3" {
		t.Errorf("new backup version: %+v, %v", created, err)
	}

	// Old sync tokens: device list positions continue above the old ones,
	// so a token from before the upgrade still sees what changed after it.
	room, err := aliceCli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bobCli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	devObj := mustJSON(t, map[string]any{"user_id": alice, "device_id": "ADEV", "keys": map[string]string{"ed25519:ADEV": old.deviceKey.pub, "curve25519:ADEV": "curve-rotated"}})
	var upload mautrix.RespUploadKeys
	if _, err := aliceCli.MakeRequest(ctx, http.MethodPost, aliceCli.BuildClientURL("v3", "keys", "upload"),
		map[string]any{"device_keys": json.RawMessage(old.deviceKey.sign(t, alice, "ed25519:ADEV", devObj))}, &upload); err != nil {
		t.Fatal(err)
	}
	const oldToken = "s0_k2" // what the old server answered when its device list position was 2
	var now string
	testkit.Eventually(t, 30*time.Second, func() error {
		resp, err := bobCli.SyncRequest(ctx, 0, oldToken, "", false, "")
		if err != nil {
			return err
		}
		if k := kposOf(t, resp.NextBatch); k <= 3 {
			return fmt.Errorf("next_batch %s after alice's new keys: device list position not above the old ones", resp.NextBatch)
		}
		if !slices.Contains(resp.DeviceLists.Changed, id.UserID(alice)) {
			return fmt.Errorf("device_lists since the old token: %+v", resp.DeviceLists)
		}
		if _, ok := resp.Rooms.Join[room.RoomID]; !ok {
			return fmt.Errorf("the room is not in the sync since the old token yet")
		}
		now = resp.NextBatch
		return nil
	})
	changes := func(from string) []id.UserID {
		t.Helper()
		var out mautrix.RespKeyChanges
		u := bobCli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "keys", "changes"}, map[string]string{"from": from, "to": now})
		if _, err := bobCli.MakeRequest(ctx, http.MethodGet, u, nil, &out); err != nil {
			t.Fatal(err)
		}
		slices.Sort(out.Changed)
		return out.Changed
	}
	// After position 2: bob's own old change (3) and alice's new one.
	if got := changes(oldToken); !slices.Equal(got, []id.UserID{alice, bob}) {
		t.Errorf("/keys/changes from %s: %v, want alice and bob", oldToken, got)
	}
	// After position 3 (the newest old one): only alice's new change.
	if got := changes("s0_k3"); !slices.Equal(got, []id.UserID{alice}) {
		t.Errorf("/keys/changes from s0_k3: %v, want alice", got)
	}

	// The old tables are gone from the client-API's schema.
	conn, err := pgx.Connect(ctx, cfg.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var left []string
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'clientapi'
		AND table_name IN ('device_keys', 'one_time_keys', 'fallback_keys', 'cross_signing_keys', 'device_list_changes', 'key_backup_versions', 'key_backup_keys')`)
	if err == nil {
		left, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil || len(left) != 0 {
		t.Errorf("old key tables left in the client-API schema: %v, %v", left, err)
	}
}

// startStack starts the current code on cfg: one process, or the
// key-server, room-server and presence in one and the client-API in
// another (so the hand-over crosses a real TCP connection). It returns the
// client-API's URL.
func startStack(t *testing.T, cfg myelin.Config, split bool) string {
	t.Helper()
	if !split {
		return stack.StartWithConfig(t, cfg).URL()
	}
	back := stack.StartWithConfig(t, cfg, myelin.TargetKeyServer, myelin.TargetRoomServer, myelin.TargetPresence)
	front := cfg
	front.DataDir = t.TempDir()
	addr := myelin.ServiceAddress{GRPC: back.Process.GRPCAddr()}
	front.Services.KeyServer, front.Services.RoomServer, front.Services.Presence = addr, addr, addr
	// The media service runs beside the client-API: each calls the other.
	return stack.StartWithConfig(t, front, myelin.TargetClientAPI, myelin.TargetMedia).URL()
}
