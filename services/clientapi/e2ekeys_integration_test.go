package clientapi_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// signingKey is an ed25519 key pair with its unpadded base64 public key.
type signingKey struct {
	priv ed25519.PrivateKey
	pub  string
}

func newSigningKey(t *testing.T) signingKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{priv: priv, pub: base64.RawStdEncoding.EncodeToString(pub)}
}

// sign returns obj signed by user's key keyID (gomatrixserverlib's
// canonical JSON signing, as clients sign).
func (k signingKey) sign(t *testing.T, user, keyID string, obj any) json.RawMessage {
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

// post sends a raw JSON request through the client and decodes the answer.
func post(t *testing.T, cli *mautrix.Client, body any, out any, path ...any) error {
	t.Helper()
	_, err := cli.MakeRequest(context.Background(), http.MethodPost, cli.BuildClientURL(path...), body, out)
	return err
}

// incremental returns the client's sync after since (no waiting).
func incremental(t *testing.T, cli *mautrix.Client, since string) *mautrix.RespSync {
	t.Helper()
	resp, err := cli.SyncRequest(context.Background(), 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestEndToEndKeys drives the key management and cross-signing APIs with
// mautrix-go and keys signed as clients sign them: uploads and their
// counts, queries, claims in order then the fallback key, device_lists in
// /sync and /keys/changes for users sharing a room (and for no one else),
// cross-signing uploads with their UIA rule, and signature uploads checked
// against the signer's key.
func TestEndToEndKeys(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, bob, room.RoomID, sendText(t, alice, room.RoomID, "hello"))
	bobSince := incremental(t, bob, "").NextBatch
	carolInitial := incremental(t, carol, "")
	carolSince := carolInitial.NextBatch
	if carolInitial.FallbackKeys == nil {
		t.Errorf("initial sync without device_unused_fallback_key_types")
	}

	// Alice's device keys, three one-time keys and a fallback key.
	aliceUser, aliceDev := alice.UserID.String(), alice.DeviceID.String()
	devKey := newSigningKey(t)
	deviceKeys := devKey.sign(t, aliceUser, "ed25519:"+aliceDev, map[string]any{
		"user_id": aliceUser, "device_id": aliceDev,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:" + aliceDev: "curvekey", "ed25519:" + aliceDev: devKey.pub},
	})
	otk := func(n string) json.RawMessage {
		return devKey.sign(t, aliceUser, "ed25519:"+aliceDev, map[string]any{"key": "otk-" + n})
	}
	var up mautrix.RespUploadKeys
	err = post(t, alice, map[string]any{
		"device_keys":   deviceKeys,
		"one_time_keys": map[string]any{"signed_curve25519:AAAA": otk("a"), "signed_curve25519:AAAB": otk("b"), "signed_curve25519:AAAC": otk("c")},
		"fallback_keys": map[string]any{"signed_curve25519:FFFF": devKey.sign(t, aliceUser, "ed25519:"+aliceDev, map[string]any{"key": "fallback", "fallback": true})},
	}, &up, "v3", "keys", "upload")
	if err != nil || up.OneTimeKeyCounts.SignedCurve25519 != 3 {
		t.Fatalf("upload: %+v, %v", up, err)
	}
	// The same key again is fine; other content under its ID is not.
	if err := post(t, alice, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:AAAA": otk("a")}}, &up, "v3", "keys", "upload"); err != nil || up.OneTimeKeyCounts.SignedCurve25519 != 3 {
		t.Fatalf("repeated upload: %+v, %v", up, err)
	}
	wantMatrixError(t, "conflicting one-time key", post(t, alice, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:AAAA": otk("z")}}, nil, "v3", "keys", "upload"),
		http.StatusBadRequest, "M_INVALID_PARAM")
	wrong := devKey.sign(t, aliceUser, "ed25519:OTHER", map[string]any{"user_id": aliceUser, "device_id": "OTHER", "keys": map[string]string{"ed25519:OTHER": devKey.pub}})
	wantMatrixError(t, "another device's keys", post(t, alice, map[string]any{"device_keys": wrong}, nil, "v3", "keys", "upload"),
		http.StatusBadRequest, "M_INVALID_PARAM")

	// Anyone may query them; remote users are reported as failures.
	q, err := carol.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}, "@someone:elsewhere.test": {}}})
	if err != nil {
		t.Fatal(err)
	}
	got, ok := q.DeviceKeys[alice.UserID][alice.DeviceID]
	if !ok || got.Keys.GetEd25519(alice.DeviceID).String() != devKey.pub || len(got.Signatures) == 0 {
		t.Fatalf("query: %+v", q.DeviceKeys)
	}
	if _, ok := q.Failures["elsewhere.test"]; !ok {
		t.Errorf("query failures %v: no elsewhere.test", q.Failures)
	}

	// Bob shares a room with Alice: his sync and /keys/changes list her.
	// Carol shares none: hers do not.
	bobSync := incremental(t, bob, bobSince)
	if !slices.Contains(bobSync.DeviceLists.Changed, alice.UserID) {
		t.Errorf("bob's device_lists %+v: alice not changed", bobSync.DeviceLists)
	}
	// (mautrix's GetKeyChanges sends POST; the spec's method is GET.)
	var changes mautrix.RespKeyChanges
	changesURL := bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "keys", "changes"}, map[string]string{"from": bobSince, "to": bobSync.NextBatch})
	if _, err := bob.MakeRequest(ctx, http.MethodGet, changesURL, nil, &changes); err != nil || !slices.Contains(changes.Changed, alice.UserID) {
		t.Errorf("bob's /keys/changes: %+v, %v", changes, err)
	}
	carolSync := incremental(t, carol, carolSince)
	if slices.Contains(carolSync.DeviceLists.Changed, alice.UserID) || len(carolSync.DeviceLists.Left) != 0 {
		t.Errorf("carol's device_lists %+v: she shares no room with alice", carolSync.DeviceLists)
	}

	// Claims: the three one-time keys once each, then the fallback key.
	seen := map[id.KeyID]bool{}
	for i := range 5 {
		c, err := bob.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{alice.UserID: {alice.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
		if err != nil {
			t.Fatal(err)
		}
		keys := c.OneTimeKeys[alice.UserID][alice.DeviceID]
		if len(keys) != 1 {
			t.Fatalf("claim %d: %+v", i, c.OneTimeKeys)
		}
		for kid := range keys {
			want := i >= 3
			if isFallback := kid == "signed_curve25519:FFFF"; isFallback != want || (!isFallback && seen[kid]) {
				t.Errorf("claim %d: %s (claimed before: %v)", i, kid, seen)
			}
			seen[kid] = true
		}
	}
	aliceSync := incremental(t, alice, "")
	if aliceSync.DeviceOTKCount.SignedCurve25519 != 0 || len(aliceSync.FallbackKeys) != 0 {
		t.Errorf("alice's sync after the claims: counts %+v, unused fallback %v", aliceSync.DeviceOTKCount, aliceSync.FallbackKeys)
	}
	aliceSince := aliceSync.NextBatch

	// Cross-signing: the first upload needs no UIA; the self- and
	// user-signing keys must be signed by the master key.
	master, self, userSigning := newSigningKey(t), newSigningKey(t), newSigningKey(t)
	csk := func(k signingKey, usage string, by *signingKey) mautrix.CrossSigningKeys {
		obj := map[string]any{"user_id": aliceUser, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
		raw, _ := json.Marshal(obj)
		if by != nil {
			raw = by.sign(t, aliceUser, "ed25519:"+by.pub, obj)
		}
		var out mautrix.CrossSigningKeys
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	forged := csk(self, "self_signing", &userSigning) // not signed by the master key
	err = alice.UploadCrossSigningKeys(ctx, &mautrix.UploadCrossSigningKeysReq[any]{
		Master: csk(master, "master", nil), SelfSigning: forged, UserSigning: csk(userSigning, "user_signing", &master)}, nil)
	wantMatrixError(t, "self-signing key not signed by the master key", err, http.StatusBadRequest, "M_INVALID_SIGNATURE")
	keysReq := &mautrix.UploadCrossSigningKeysReq[any]{
		Master: csk(master, "master", nil), SelfSigning: csk(self, "self_signing", &master), UserSigning: csk(userSigning, "user_signing", &master)}
	if err := alice.UploadCrossSigningKeys(ctx, keysReq, nil); err != nil {
		t.Fatalf("first cross-signing upload: %v", err)
	}
	// The same keys again: no UIA either. New ones: UIA with the password.
	if err := alice.UploadCrossSigningKeys(ctx, keysReq, nil); err != nil {
		t.Fatalf("repeated cross-signing upload: %v", err)
	}
	master2 := newSigningKey(t)
	replace := &mautrix.UploadCrossSigningKeysReq[any]{Master: csk(master2, "master", nil), SelfSigning: csk(self, "self_signing", &master2)}
	var uia mautrix.HTTPError
	if err := alice.UploadCrossSigningKeys(ctx, replace, nil); !errors.As(err, &uia) || !uia.IsStatus(http.StatusUnauthorized) {
		t.Errorf("new master key without UIA: %v, want a 401 challenge", err)
	}
	// With the password it goes through.
	withAuth := func(*mautrix.RespUserInteractive) any {
		return map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}
	}
	if err := alice.UploadCrossSigningKeys(ctx, replace, withAuth); err != nil {
		t.Fatalf("new master key with UIA: %v", err)
	}
	// Back to the first keys (with UIA again), for what follows.
	if err := alice.UploadCrossSigningKeys(ctx, keysReq, withAuth); err != nil {
		t.Fatalf("cross-signing upload back to the first keys: %v", err)
	}

	// Bob sees Alice's master and self-signing keys, not her user-signing key.
	q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	mk, sk := q.MasterKeys[alice.UserID], q.SelfSigningKeys[alice.UserID]
	if mk.FirstKey().String() != master.pub || sk.FirstKey().String() != self.pub {
		t.Errorf("bob's query: master %+v self %+v", q.MasterKeys, q.SelfSigningKeys)
	}
	if _, ok := q.UserSigningKeys[alice.UserID]; ok {
		t.Errorf("bob sees alice's user-signing key")
	}

	// Alice signs her device with her self-signing key; a forged signature
	// is refused.
	devObj := map[string]any{}
	if err := json.Unmarshal(deviceKeys, &devObj); err != nil {
		t.Fatal(err)
	}
	delete(devObj, "signatures")
	signedDev := self.sign(t, aliceUser, "ed25519:"+self.pub, devObj)
	forgedDev := userSigning.sign(t, aliceUser, "ed25519:"+self.pub, devObj) // claims the self-signing key
	var sigResp mautrix.RespUploadSignatures
	if err := post(t, alice, map[string]any{aliceUser: map[string]any{aliceDev: forgedDev}}, &sigResp, "v3", "keys", "signatures", "upload"); err != nil || len(sigResp.Failures) == 0 {
		t.Errorf("forged signature: %+v, %v", sigResp, err)
	}
	sigResp = mautrix.RespUploadSignatures{}
	if err := post(t, alice, map[string]any{aliceUser: map[string]any{aliceDev: signedDev}}, &sigResp, "v3", "keys", "signatures", "upload"); err != nil || len(sigResp.Failures) != 0 {
		t.Fatalf("signature upload: %+v, %v", sigResp, err)
	}
	q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {alice.DeviceID}}})
	if err != nil {
		t.Fatal(err)
	}
	if sigs := q.DeviceKeys[alice.UserID][alice.DeviceID].Signatures[alice.UserID]; sigs[id.NewKeyID(id.KeyAlgorithmEd25519, self.pub)] == "" || len(sigs) != 2 {
		t.Errorf("device signatures after the upload: %v", sigs)
	}

	// Uploading the same device keys again keeps the self-signing
	// signature.
	if err := post(t, alice, map[string]any{"device_keys": deviceKeys}, nil, "v3", "keys", "upload"); err != nil {
		t.Fatal(err)
	}
	q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: nil}})
	if err != nil {
		t.Fatal(err)
	}
	if sigs := q.DeviceKeys[alice.UserID][alice.DeviceID].Signatures[alice.UserID]; sigs[id.NewKeyID(id.KeyAlgorithmEd25519, self.pub)] == "" {
		t.Errorf("device signatures after re-uploading the device keys: %v", sigs)
	}
	// Alice's device signs her master key (device verification of the
	// identity).
	masterObj := map[string]any{"user_id": aliceUser, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + master.pub: master.pub}}
	sigResp = mautrix.RespUploadSignatures{}
	if err := post(t, alice, map[string]any{aliceUser: map[string]any{master.pub: devKey.sign(t, aliceUser, "ed25519:"+aliceDev, masterObj)}},
		&sigResp, "v3", "keys", "signatures", "upload"); err != nil || len(sigResp.Failures) != 0 {
		t.Fatalf("device signs the master key: %+v, %v", sigResp, err)
	}
	q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	if sigs := q.MasterKeys[alice.UserID].Signatures[alice.UserID]; sigs[id.NewKeyID(id.KeyAlgorithmEd25519, aliceDev)] == "" {
		t.Errorf("master key signatures: %v", sigs)
	}
	// Bob may not sign Alice's device with one of his own devices.
	bobKey := newSigningKey(t)
	bobDev := bob.DeviceID.String()
	if err := post(t, bob, map[string]any{"device_keys": bobKey.sign(t, bob.UserID.String(), "ed25519:"+bobDev, map[string]any{
		"user_id": bob.UserID.String(), "device_id": bobDev, "keys": map[string]string{"ed25519:" + bobDev: bobKey.pub}})}, nil, "v3", "keys", "upload"); err != nil {
		t.Fatal(err)
	}
	sigResp = mautrix.RespUploadSignatures{}
	if err := post(t, bob, map[string]any{aliceUser: map[string]any{aliceDev: bobKey.sign(t, bob.UserID.String(), "ed25519:"+bobDev, devObj)}},
		&sigResp, "v3", "keys", "signatures", "upload"); err != nil || len(sigResp.Failures) == 0 {
		t.Errorf("bob signs alice's device: %+v, %v; want a failure", sigResp, err)
	}

	// A second device of Alice's with keys: logging it out deletes them,
	// and Bob's sync hears of it.
	second, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := second.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "pw-alice", StoreCredentials: true}); err != nil {
		t.Fatal(err)
	}
	secondDev := second.DeviceID.String()
	secondKeys := devKey.sign(t, aliceUser, "ed25519:"+secondDev, map[string]any{
		"user_id": aliceUser, "device_id": secondDev, "keys": map[string]string{"ed25519:" + secondDev: devKey.pub}})
	if err := post(t, second, map[string]any{"device_keys": secondKeys}, nil, "v3", "keys", "upload"); err != nil {
		t.Fatal(err)
	}
	bobSince = incremental(t, bob, "").NextBatch
	if _, err := second.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if got := incremental(t, bob, bobSince); !slices.Contains(got.DeviceLists.Changed, alice.UserID) {
		t.Errorf("bob's device_lists after alice's logout: %+v", got.DeviceLists)
	}
	q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := q.DeviceKeys[alice.UserID][second.DeviceID]; ok || len(q.DeviceKeys[alice.UserID]) != 1 {
		t.Errorf("alice's devices after the logout: %v", q.DeviceKeys[alice.UserID])
	}

	// Bob leaves: Alice's next sync lists him as left.
	if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	s := &syncer{t: t, cli: alice, since: aliceSince}
	s.until("bob's leave in device_lists", func(r *mautrix.RespSync) bool { return slices.Contains(r.DeviceLists.Left, bob.UserID) })
}
