package clientapi

// End-to-end encryption keys (client-server API, "End-to-End Encryption",
// key management and cross-signing), for local users: POST /keys/upload,
// /keys/query, /keys/claim, GET /keys/changes, POST
// /keys/device_signing/upload and /keys/signatures/upload, and the /sync
// extensions (device_lists, device_one_time_keys_count,
// device_unused_fallback_key_types).
//
// Device lists: every change to a user's identity or cross-signing keys,
// and every deletion of a device with keys, is a device_list_changes row
// (store/e2ekeys.go) whose position is the sync token's "_k" component. An
// incremental /sync lists as changed the users with such rows since the
// token who share a room with the requester, plus the users who newly
// share one (they or the requester joined since); as left, the users who
// left a room shared with the requester (or were in a room the requester
// left) and now share none. Sharing is read from the notifier's in-memory
// membership copy.
//
// Not done: remote users (no federation: /keys/query and /keys/claim
// report their servers under failures), and hiding the signatures a user's user-signing key made
// on other users' master keys from everyone but that user.

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

func (s *Service) keyRoutes() []route {
	return []route{
		{method: http.MethodPost, path: "/keys/upload", auth: true, serve: s.keysUpload},
		{method: http.MethodPost, path: "/keys/query", auth: true, serve: s.keysQuery},
		{method: http.MethodPost, path: "/keys/claim", auth: true, serve: s.keysClaim},
		{method: http.MethodGet, path: "/keys/changes", auth: true, serve: s.keysChanges},
		{method: http.MethodPost, path: "/keys/device_signing/upload", auth: true, serve: s.uploadCrossSigning},
		{method: http.MethodPost, path: "/keys/signatures/upload", auth: true, serve: s.uploadSignatures},
	}
}

// signedKey is the part of a device or cross-signing key object the
// server checks.
type signedKey struct {
	UserID     string                       `json:"user_id"`
	DeviceID   string                       `json:"device_id"`
	Usage      []string                     `json:"usage"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// defaultKeyAlgorithm is always reported in one-time key counts, as
// Synapse does: clients read its count to decide how many keys to upload.
const defaultKeyAlgorithm = "signed_curve25519"

func withDefaultCount(counts map[string]int) map[string]int {
	if counts == nil {
		counts = map[string]int{}
	}
	if _, ok := counts[defaultKeyAlgorithm]; !ok {
		counts[defaultKeyAlgorithm] = 0
	}
	return counts
}

// validKeyIDs checks "algorithm:key_id" map keys.
func validKeyIDs(keys map[string]json.RawMessage, what string) error {
	for id := range keys {
		if a, k, ok := strings.Cut(id, ":"); !ok || a == "" || k == "" {
			return matrixhttp.InvalidParam(fmt.Sprintf("%s key ID %q is not algorithm:key_id", what, id))
		}
	}
	return nil
}

// keysUpload is POST /keys/upload.
func (s *Service) keysUpload(r *http.Request, dev *device) (any, error) {
	var req struct {
		DeviceKeys   json.RawMessage            `json:"device_keys"`
		OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	up := store.KeyUpload{UserID: dev.UserID, DeviceID: dev.DeviceID, OneTimeKeys: req.OneTimeKeys, FallbackKeys: req.FallbackKeys}
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" {
		var k signedKey
		if err := json.Unmarshal(req.DeviceKeys, &k); err != nil {
			return nil, matrixhttp.BadJSON("device_keys is not a device keys object")
		}
		if k.UserID != dev.UserID || k.DeviceID != dev.DeviceID {
			return nil, matrixhttp.InvalidParam("device_keys must be this device's: user_id and device_id differ from the access token's")
		}
		if len(k.Keys) == 0 {
			return nil, matrixhttp.InvalidParam("device_keys has no keys")
		}
		up.DeviceKeys = req.DeviceKeys
	}
	if err := validKeyIDs(req.OneTimeKeys, "one-time"); err != nil {
		return nil, err
	}
	if err := validKeyIDs(req.FallbackKeys, "fallback"); err != nil {
		return nil, err
	}
	counts, changed, err := s.store.UploadKeys(r.Context(), up)
	if errors.Is(err, store.ErrKeyConflict) {
		return nil, matrixhttp.InvalidParam(err.Error())
	}
	if err != nil {
		return nil, err
	}
	if changed {
		s.announceKeyChange(dev.UserID)
	}
	return map[string]any{"one_time_key_counts": withDefaultCount(counts)}, nil
}

// announceKeyChange wakes the long polls of everyone sharing a room with
// userID (and userID's own), on every replica.
func (s *Service) announceKeyChange(userID string) {
	users := s.notifier.sharers(userID)
	users[userID] = struct{}{}
	list := make([]string, 0, len(users))
	for u := range users {
		s.notifier.wake(u)
		list = append(list, u)
	}
	s.publishWake(wakeForUsers(list))
}

// remoteFailure is what /keys/query and /keys/claim report for another
// server's users: it cannot be reached without federation.
var remoteFailure = map[string]any{"status": http.StatusServiceUnavailable, "message": "federation is not available on this server"}

// serverOf is the server name of a user ID ("" if malformed).
func serverOf(userID string) string {
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return ""
	}
	return string(uid.Domain())
}

// keysQuery is POST /keys/query.
func (s *Service) keysQuery(r *http.Request, dev *device) (any, error) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	failures := map[string]any{}
	local := map[string][]string{}
	var users []string
	for user, devices := range req.DeviceKeys {
		switch server := serverOf(user); {
		case server == "":
			continue
		case server != s.serverName:
			failures[server] = remoteFailure
		default:
			local[user] = devices
			users = append(users, user)
		}
	}
	rd := s.store.Reader()
	ctx := r.Context()
	found, err := rd.QueryDeviceKeys(ctx, local)
	if err != nil {
		return nil, err
	}
	deviceKeys := map[string]map[string]json.RawMessage{}
	for user, devices := range found {
		out := map[string]json.RawMessage{}
		for id, d := range devices {
			raw, err := withDisplayName(d.Keys, d.DisplayName)
			if err != nil {
				return nil, err
			}
			out[id] = raw
		}
		deviceKeys[user] = out
	}
	cross, err := rd.CrossSigningKeys(ctx, users)
	if err != nil {
		return nil, err
	}
	master, self, userSigning := map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	for user, keys := range cross {
		if k, ok := keys["master"]; ok {
			master[user] = k
		}
		if k, ok := keys["self_signing"]; ok {
			self[user] = k
		}
		// A user-signing key is only shown to its owner.
		if k, ok := keys["user_signing"]; ok && user == dev.UserID {
			userSigning[user] = k
		}
	}
	return map[string]any{
		"device_keys": deviceKeys, "failures": failures,
		"master_keys": master, "self_signing_keys": self, "user_signing_keys": userSigning,
	}, nil
}

// withDisplayName adds unsigned.device_display_name to a stored device
// keys object.
func withDisplayName(keys []byte, name string) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(keys, &obj); err != nil {
		return nil, err
	}
	unsigned := map[string]any{}
	if raw, ok := obj["unsigned"]; ok {
		_ = json.Unmarshal(raw, &unsigned)
	}
	if name != "" {
		unsigned["device_display_name"] = name
	} else {
		delete(unsigned, "device_display_name")
	}
	raw, err := json.Marshal(unsigned)
	if err != nil {
		return nil, err
	}
	obj["unsigned"] = raw
	return json.Marshal(obj)
}

// keysClaim is POST /keys/claim.
func (s *Service) keysClaim(r *http.Request, _ *device) (any, error) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	failures := map[string]any{}
	local := map[string]map[string]string{}
	for user, devices := range req.OneTimeKeys {
		switch server := serverOf(user); {
		case server == "":
		case server != s.serverName:
			failures[server] = remoteFailure
		default:
			local[user] = devices
		}
	}
	claimed, err := s.store.ClaimKeys(r.Context(), local)
	if err != nil {
		return nil, err
	}
	return map[string]any{"one_time_keys": claimed, "failures": failures}, nil
}

// keysChanges is GET /keys/changes: the users sharing a room with the
// requester whose device lists changed between two sync tokens, and those
// who stopped sharing every room with them in that range.
func (s *Service) keysChanges(r *http.Request, dev *device) (any, error) {
	from, err := parseStreamToken(r.URL.Query().Get("from"))
	if err != nil {
		return nil, matrixhttp.InvalidParam("from must be a sync token")
	}
	to, err := parseStreamToken(r.URL.Query().Get("to"))
	if err != nil {
		return nil, matrixhttp.InvalidParam("to must be a sync token")
	}
	ctx := r.Context()
	rd := s.store.Reader()
	users, err := rd.DeviceListChangesBetween(ctx, from.kpos, to.kpos)
	if err != nil {
		return nil, err
	}
	changed := []string{}
	for _, u := range users {
		if u == dev.UserID || s.notifier.sharesRoom(dev.UserID, u) {
			changed = append(changed, u)
		}
	}
	leavers, err := rd.LeftSharedRooms(ctx, dev.UserID, from.pos, to.pos)
	if err != nil {
		return nil, err
	}
	left := []string{}
	for _, u := range leavers {
		if u != dev.UserID && !s.notifier.sharesRoom(dev.UserID, u) {
			left = append(left, u)
		}
	}
	slices.Sort(changed)
	slices.Sort(left)
	return map[string]any{"changed": changed, "left": left}, nil
}

// crossSigningUsage maps each key of POST /keys/device_signing/upload to
// its stored type.
var crossSigningUsage = map[string]string{"master_key": "master", "self_signing_key": "self_signing", "user_signing_key": "user_signing"}

// uploadCrossSigning is POST /keys/device_signing/upload. User-interactive
// auth is needed unless the user has no master key yet, or the request
// repeats the stored keys exactly (so a lost answer can be retried).
func (s *Service) uploadCrossSigning(r *http.Request, dev *device) (any, error) {
	var auth *authData
	raw, err := readObject(r, bodyRequired)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, matrixhttp.NotJSON("Body is not a JSON object")
	}
	if a, ok := fields["auth"]; ok && string(a) != "null" {
		auth = &authData{}
		if err := json.Unmarshal(a, auth); err != nil {
			return nil, matrixhttp.BadJSON("auth is not an object")
		}
	}
	ctx := r.Context()
	stored, err := s.store.Reader().CrossSigningKeys(ctx, []string{dev.UserID})
	if err != nil {
		return nil, err
	}
	mine := stored[dev.UserID]
	keys := map[string][]byte{}
	parsed := map[string]signedKey{}
	same := true
	for field, typ := range crossSigningUsage {
		v, ok := fields[field]
		if !ok || string(v) == "null" {
			continue
		}
		var k signedKey
		if err := json.Unmarshal(v, &k); err != nil {
			return nil, matrixhttp.BadJSON(field + " is not a cross-signing key")
		}
		if len(k.Keys) == 0 && k.UserID == "" {
			continue // an empty object stands for an absent key (mautrix sends all three)
		}
		if k.UserID != dev.UserID || !slices.Contains(k.Usage, typ) || len(k.Keys) != 1 {
			return nil, matrixhttp.InvalidParam(field + " must be one key of this user with usage " + typ)
		}
		keys[typ], parsed[typ] = v, k
		same = same && mine[typ] != nil && store.JSONEqual(mine[typ], v)
	}
	if len(keys) == 0 {
		return nil, matrixhttp.MissingParam("No cross-signing keys given")
	}
	// The master key that signs the others: the new one, or the stored one.
	master, ok := parsed["master"]
	if !ok {
		if mine["master"] == nil {
			return nil, matrixhttp.MissingParam("No master signing key is available")
		}
		if err := json.Unmarshal(mine["master"], &master); err != nil {
			return nil, err
		}
	}
	for _, typ := range []string{"self_signing", "user_signing"} {
		if v, ok := keys[typ]; ok {
			if err := verifyBy(v, dev.UserID, master); err != nil {
				return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_INVALID_SIGNATURE", "%s key: %v", typ, err)
			}
		}
	}
	var sess *store.UIASession
	if mine["master"] != nil && !same {
		done, err := s.runUIA(ctx, purposeCrossSigning, dev.UserID, auth)
		if err != nil {
			return nil, err
		}
		sess = &done
	}
	if err := s.store.PutCrossSigningKeys(ctx, dev.UserID, keys); err != nil {
		return nil, err
	}
	if sess != nil {
		if err := s.finishUIA(ctx, *sess); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	s.announceKeyChange(dev.UserID)
	return struct{}{}, nil
}

// publicKeyOf returns the one ed25519 key of a key object and its key ID
// ("ed25519:<id>").
func publicKeyOf(k signedKey) (ed25519.PublicKey, string, error) {
	for id, v := range k.Keys {
		if !strings.HasPrefix(id, "ed25519:") {
			continue
		}
		pub, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "="))
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, "", fmt.Errorf("key %s is not an ed25519 public key", id)
		}
		return pub, id, nil
	}
	return nil, "", errors.New("no ed25519 key")
}

// verifyBy checks that the JSON object obj carries a valid signature by
// signer (a key object of signerUser).
func verifyBy(obj []byte, signerUser string, signer signedKey) error {
	pub, keyID, err := publicKeyOf(signer)
	if err != nil {
		return err
	}
	return gomatrixserverlib.VerifyJSON(signerUser, gomatrixserverlib.KeyID(keyID), pub, obj)
}

// uploadSignatures is POST /keys/signatures/upload: signatures of the
// user's own devices and master key (by their self-signing key or a
// device), and of other users' master keys (by their user-signing key).
// Each signature is checked against the signer's key before it is stored;
// the ones that fail are reported under failures.
func (s *Service) uploadSignatures(r *http.Request, dev *device) (any, error) {
	var req map[string]map[string]json.RawMessage
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	rd := s.store.Reader()
	failures := map[string]map[string]any{}
	fail := func(user, keyID, errcode, msg string) {
		if failures[user] == nil {
			failures[user] = map[string]any{}
		}
		failures[user][keyID] = map[string]string{"errcode": errcode, "error": msg}
	}
	// The signer's keys: own devices and cross-signing keys.
	own, err := rd.QueryDeviceKeys(ctx, map[string][]string{dev.UserID: nil})
	if err != nil {
		return nil, err
	}
	ownCross, err := rd.CrossSigningKeys(ctx, []string{dev.UserID})
	if err != nil {
		return nil, err
	}
	signerKey := func(keyID string) (signedKey, bool) {
		id := strings.TrimPrefix(keyID, "ed25519:")
		if d, ok := own[dev.UserID][id]; ok {
			var k signedKey
			return k, json.Unmarshal(d.Keys, &k) == nil
		}
		for _, raw := range ownCross[dev.UserID] {
			var k signedKey
			if json.Unmarshal(raw, &k) == nil {
				if _, kid, err := publicKeyOf(k); err == nil && kid == keyID {
					return k, true
				}
			}
		}
		return signedKey{}, false
	}
	changedUsers := map[string]bool{}
	for user, objs := range req {
		if serverOf(user) != s.serverName {
			for keyID := range objs {
				fail(user, keyID, "M_UNKNOWN", "signatures of remote keys need federation")
			}
			continue
		}
		for keyID, obj := range objs {
			var k signedKey
			if err := json.Unmarshal(obj, &k); err != nil || k.UserID != user {
				fail(user, keyID, "M_INVALID_PARAM", "not a key object of this user")
				continue
			}
			stored, err := s.storedKey(ctx, user, keyID)
			if err != nil {
				return nil, err
			}
			if stored == nil {
				fail(user, keyID, "M_NOT_FOUND", "no such key")
				continue
			}
			// The signature must be over the key as stored.
			if !store.SameKeyObject(stored, obj) {
				fail(user, keyID, "M_INVALID_PARAM", "the object differs from the stored key")
				continue
			}
			// Another user's keys: only their master key, and only by
			// the requester's user-signing key (signatures of someone
			// else's devices would publish who verified whom).
			if user != dev.UserID && !hasUsage(stored, "master") {
				fail(user, keyID, "M_INVALID_PARAM", "only another user's master key may be signed")
				continue
			}
			sigs := map[string]map[string]string{}
			for sigKeyID, sig := range k.Signatures[dev.UserID] {
				signer, ok := signerKey(sigKeyID)
				if !ok {
					fail(user, keyID, "M_INVALID_SIGNATURE", "unknown signing key "+sigKeyID)
					continue
				}
				if user != dev.UserID && !slices.Contains(signer.Usage, "user_signing") {
					fail(user, keyID, "M_INVALID_SIGNATURE", "another user's master key is signed with the user-signing key")
					continue
				}
				if err := verifyBy(obj, dev.UserID, signer); err != nil {
					fail(user, keyID, "M_INVALID_SIGNATURE", err.Error())
					continue
				}
				if sigs[dev.UserID] == nil {
					sigs[dev.UserID] = map[string]string{}
				}
				sigs[dev.UserID][sigKeyID] = sig
			}
			if len(sigs) == 0 {
				continue
			}
			if ok, err := s.store.AddSignatures(ctx, user, keyID, sigs); err != nil {
				return nil, err
			} else if ok {
				changedUsers[user] = true
			}
		}
	}
	for u := range changedUsers {
		s.announceKeyChange(u)
	}
	return map[string]any{"failures": failures}, nil
}

// storedKey returns a user's stored key object named by keyID: a device's
// keys (keyID is the device ID) or a cross-signing key (keyID is its
// public key); nil when there is none.
func (s *Service) storedKey(ctx context.Context, user, keyID string) ([]byte, error) {
	rd := s.store.Reader()
	devices, err := rd.QueryDeviceKeys(ctx, map[string][]string{user: {keyID}})
	if err != nil {
		return nil, err
	}
	if d, ok := devices[user][keyID]; ok {
		return d.Keys, nil
	}
	cross, err := rd.CrossSigningKeys(ctx, []string{user})
	if err != nil {
		return nil, err
	}
	for _, raw := range cross[user] {
		var k signedKey
		if json.Unmarshal(raw, &k) == nil {
			for _, pub := range k.Keys {
				if pub == keyID {
					return raw, nil
				}
			}
		}
	}
	return nil, nil
}

// syncDeviceKeys fills the end-to-end extensions of a sync response: the
// device's one-time key counts and unused fallback key types, and, for an
// incremental sync, device_lists. It returns the device list position for
// next_batch.
func (s *Service) syncDeviceKeys(ctx context.Context, dev *device, since *streamToken, resp *syncResponse, d syncData) (int64, error) {
	var after int64
	if since != nil {
		after = since.kpos
	}
	st, kpos, users, err := s.store.Reader().SyncKeyState(ctx, dev.UserID, dev.DeviceID, after, since != nil)
	if err != nil {
		return 0, err
	}
	resp.DeviceOneTimeKeysCount = withDefaultCount(st.Counts)
	resp.DeviceUnusedFallbackKeyTypes = st.UnusedFallback
	if since == nil {
		return kpos, nil
	}
	me := dev.UserID
	// joined: users who newly share a room with me (they or I joined);
	// leaving: users who left a room of mine, or were in one I left.
	joined, leaving := map[string]bool{}, map[string]bool{}
	// sharing: users known from this snapshot to share a room with me now.
	sharing := map[string]bool{}
	for _, sr := range d.rooms {
		room := sr.rng.RoomID
		switch sr.kind {
		case kindFull: // joined (by me) since the token: its members share it
			for _, u := range s.notifier.members(room) {
				if u != me {
					sharing[u] = true
				}
			}
		case kindLeft:
			for _, u := range s.notifier.members(room) {
				leaving[u] = true
			}
		}
		// Each user's last membership change in the range, in stream
		// order. A user whose last change in a room I am joined to is a
		// join shares that room now, whatever the in-memory copy (which
		// may not have caught up with this snapshot) says.
		events := slices.Concat(d.gaps[room], d.timelines[room].Events)
		slices.SortStableFunc(events, func(a, b store.StoredEvent) int { return cmp.Compare(a.Pos, b.Pos) })
		last := map[string]string{}
		for _, e := range events {
			if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey != me {
				last[*e.StateKey] = storedMembership(e)
			}
		}
		for u, m := range last {
			switch {
			case m == store.MembershipJoin && sr.kind != kindLeft:
				sharing[u] = true
			case m == store.MembershipJoin:
				joined[u] = true
			case m == store.MembershipLeave || m == "ban":
				leaving[u] = true
			}
		}
	}
	// Changed: my own keys, and those of users sharing a room with me now
	// whose keys changed or who newly share one. Left: users a membership
	// change concerned who share no room with me now (a user who joined and
	// left again in the range included). Key changes of anyone else are
	// not shown.
	lists := &deviceLists{Changed: []string{}, Left: []string{}}
	changed := map[string]bool{}
	for u := range sharing {
		changed[u] = true
	}
	for _, u := range users {
		if u == me || sharing[u] || s.notifier.sharesRoom(me, u) {
			changed[u] = true
		}
	}
	for u := range joined {
		if u == me {
			continue
		}
		if s.notifier.sharesRoom(me, u) {
			changed[u] = true
		} else {
			leaving[u] = true
		}
	}
	for u := range changed {
		lists.Changed = append(lists.Changed, u)
	}
	for u := range leaving {
		if u != me && !changed[u] && !s.notifier.sharesRoom(me, u) {
			lists.Left = append(lists.Left, u)
		}
	}
	slices.Sort(lists.Changed)
	slices.Sort(lists.Left)
	resp.DeviceLists = lists
	return kpos, nil
}

// storedMembership is content.membership of a stored m.room.member event.
func storedMembership(e store.StoredEvent) string {
	var ev struct {
		Content struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	_ = json.Unmarshal(e.JSON, &ev)
	return ev.Content.Membership
}

// hasUsage reports whether a key object lists the usage.
func hasUsage(raw []byte, usage string) bool {
	var k signedKey
	return json.Unmarshal(raw, &k) == nil && slices.Contains(k.Usage, usage)
}
