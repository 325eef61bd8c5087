package keyserver

// Users' end-to-end encryption keys (client-server API, "End-to-End
// Encryption": key management and cross-signing), for local users. The
// client-API serves the HTTP endpoints and calls E2EKeyService
// (e2ehandler.go); the rules live here: what a key object must look like,
// which signatures count (gomatrixserverlib's VerifyJSON), and what a
// user may sign. Storage, the device list change log and its positions
// are in store/e2ekeys.go; publish.go puts every change on JetStream.
//
// Not done: remote users (the client-API reports them under failures),
// and hiding the signatures a user's user-signing key made on other
// users' master keys from everyone but that user.

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// Sentinel errors of the end-to-end key API; handler code turns them into
// gRPC statuses with an E2EKeyError reason.
var (
	// ErrBadJSON: a key object is not the JSON object it must be.
	ErrBadJSON = errors.New("bad JSON")
	// ErrInvalidParam: a value is not allowed.
	ErrInvalidParam = errors.New("invalid parameter")
	// ErrMissingParam: something required is missing.
	ErrMissingParam = errors.New("missing parameter")
	// ErrInvalidSignature: a signature does not verify or its key may not
	// sign this.
	ErrInvalidSignature = errors.New("invalid signature")
	// ErrMissing: no such key, backup version or backed-up session.
	ErrMissing = errors.New("not found")
)

// keyError is a sentinel with the message the client is shown.
type keyError struct {
	kind error
	msg  string
}

func (e *keyError) Error() string { return e.msg }
func (e *keyError) Unwrap() error { return e.kind }

func refuse(kind error, format string, args ...any) error {
	return &keyError{kind: kind, msg: fmt.Sprintf(format, args...)}
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

// isLocal reports whether userID is a well-formed user ID of this server.
func (s *Service) isLocal(userID string) bool {
	uid, err := spec.NewUserID(userID, true)
	return err == nil && uid.Domain() == s.server
}

// validKeyIDs checks "algorithm:key_id" map keys.
func validKeyIDs(keys map[string]json.RawMessage, what string) error {
	for id := range keys {
		if a, k, ok := strings.Cut(id, ":"); !ok || a == "" || k == "" {
			return refuse(ErrInvalidParam, "%s key ID %q is not algorithm:key_id", what, id)
		}
	}
	return nil
}

// uploadKeys checks and stores one device's upload.
func (s *Service) uploadKeys(ctx context.Context, up store.KeyUpload) (map[string]int64, error) {
	if len(up.DeviceKeys) > 0 && string(up.DeviceKeys) != "null" {
		var k signedKey
		if err := json.Unmarshal(up.DeviceKeys, &k); err != nil {
			return nil, refuse(ErrBadJSON, "device_keys is not a device keys object")
		}
		if k.UserID != up.UserID || k.DeviceID != up.DeviceID {
			return nil, refuse(ErrInvalidParam, "device_keys must be this device's: user_id and device_id differ from the access token's")
		}
		if len(k.Keys) == 0 {
			return nil, refuse(ErrInvalidParam, "device_keys has no keys")
		}
	} else {
		up.DeviceKeys = nil
	}
	if err := validKeyIDs(up.OneTimeKeys, "one-time"); err != nil {
		return nil, err
	}
	if err := validKeyIDs(up.FallbackKeys, "fallback"); err != nil {
		return nil, err
	}
	counts, changed, err := s.store.UploadKeys(ctx, up)
	if errors.Is(err, store.ErrKeyConflict) {
		return nil, refuse(ErrInvalidParam, "%s", err.Error())
	}
	if err != nil {
		return nil, err
	}
	if changed {
		s.publisher.poke()
	}
	return counts, nil
}

// userKeys is what QueryKeys answers for one user.
type userKeys struct {
	devices                          map[string]store.QueriedDevice
	master, selfSigning, userSigning []byte
}

// queryKeys returns the asked users' device keys (all devices when the
// list is empty) and cross-signing keys; the user-signing key only to its
// owner.
func (s *Service) queryKeys(ctx context.Context, want map[string][]string, requester string) (map[string]userKeys, error) {
	found, err := s.store.QueryDeviceKeys(ctx, want)
	if err != nil {
		return nil, err
	}
	users := make([]string, 0, len(want))
	for u := range want {
		users = append(users, u)
	}
	cross, err := s.store.CrossSigningKeys(ctx, users)
	if err != nil {
		return nil, err
	}
	out := make(map[string]userKeys, len(want))
	for _, u := range users {
		uk := userKeys{devices: found[u], master: cross[u][store.KeyMaster], selfSigning: cross[u][store.KeySelfSigning]}
		// A user-signing key is only shown to its owner.
		if u == requester {
			uk.userSigning = cross[u][store.KeyUserSigning]
		}
		out[u] = uk
	}
	return out, nil
}

// crossSigningFields names the request field of each key type, for
// messages.
var crossSigningFields = map[string]string{store.KeyMaster: "master_key", store.KeySelfSigning: "self_signing_key", store.KeyUserSigning: "user_signing_key"}

// uploadCrossSigning checks and stores a user's cross-signing keys (key
// type → object as sent; absent, null or an empty object: not uploaded).
// The self- and user-signing keys must be signed by the master key (the
// new one, or the stored one). When the user has a master key and the
// upload differs from the stored keys, it needs authenticated; without it
// nothing is stored and authRequired is true.
func (s *Service) uploadCrossSigning(ctx context.Context, userID string, fields map[string][]byte, authenticated bool) (authRequired bool, err error) {
	keys := map[string][]byte{}
	parsed := map[string]signedKey{}
	for _, typ := range []string{store.KeyMaster, store.KeySelfSigning, store.KeyUserSigning} {
		v := fields[typ]
		field := crossSigningFields[typ]
		if len(v) == 0 || string(v) == "null" {
			continue
		}
		var k signedKey
		if err := json.Unmarshal(v, &k); err != nil {
			return false, refuse(ErrBadJSON, "%s is not a cross-signing key", field)
		}
		if len(k.Keys) == 0 && k.UserID == "" {
			continue // an empty object stands for an absent key (mautrix sends all three)
		}
		if k.UserID != userID || !slices.Contains(k.Usage, typ) || len(k.Keys) != 1 {
			return false, refuse(ErrInvalidParam, "%s must be one key of this user with usage %s", field, typ)
		}
		keys[typ], parsed[typ] = v, k
	}
	if len(keys) == 0 {
		return false, refuse(ErrMissingParam, "No cross-signing keys given")
	}
	stored, err := s.store.PutCrossSigningKeys(ctx, userID, keys, func(mine map[string][]byte) (bool, error) {
		same := true
		for typ, v := range keys {
			same = same && mine[typ] != nil && store.JSONEqual(mine[typ], v)
		}
		// The master key that signs the others: the new one, or the stored one.
		master, ok := parsed[store.KeyMaster]
		if !ok {
			if mine[store.KeyMaster] == nil {
				return false, refuse(ErrMissingParam, "No master signing key is available")
			}
			if err := json.Unmarshal(mine[store.KeyMaster], &master); err != nil {
				return false, err
			}
		}
		for _, typ := range []string{store.KeySelfSigning, store.KeyUserSigning} {
			if v, ok := keys[typ]; ok {
				if err := verifyBy(v, userID, master); err != nil {
					return false, refuse(ErrInvalidSignature, "%s key: %v", typ, err)
				}
			}
		}
		if mine[store.KeyMaster] != nil && !same && !authenticated {
			authRequired = true
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return false, err
	}
	if stored {
		s.publisher.poke()
	}
	return authRequired, nil
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

// signedObject is one key object of a signature upload.
type signedObject struct {
	userID, keyID string
	object        []byte
}

// signatureFailure is one object of a signature upload that was refused.
type signatureFailure struct {
	userID, keyID string
	kind          error // a sentinel, or errRemote
	msg           string
}

// errRemote marks a signature of another server's key: it needs
// federation.
var errRemote = errors.New("remote key")

// uploadSignatures checks and stores signatures made by signer: of their
// own devices and master key (by their self-signing key or a device), and
// of other users' master keys (by their user-signing key). Each signature
// is checked against the signer's key before it is stored; the objects
// that fail are returned.
func (s *Service) uploadSignatures(ctx context.Context, signer string, objects []signedObject) ([]signatureFailure, error) {
	var failures []signatureFailure
	fail := func(o signedObject, kind error, msg string) {
		failures = append(failures, signatureFailure{userID: o.userID, keyID: o.keyID, kind: kind, msg: msg})
	}
	// The signer's keys: own devices and cross-signing keys.
	own, err := s.store.QueryDeviceKeys(ctx, map[string][]string{signer: nil})
	if err != nil {
		return nil, err
	}
	ownCross, err := s.store.CrossSigningKeys(ctx, []string{signer})
	if err != nil {
		return nil, err
	}
	signerKey := func(keyID string) (signedKey, bool) {
		id := strings.TrimPrefix(keyID, "ed25519:")
		if d, ok := own[signer][id]; ok {
			var k signedKey
			return k, json.Unmarshal(d.Keys, &k) == nil
		}
		for _, raw := range ownCross[signer] {
			var k signedKey
			if json.Unmarshal(raw, &k) == nil {
				if _, kid, err := publicKeyOf(k); err == nil && kid == keyID {
					return k, true
				}
			}
		}
		return signedKey{}, false
	}
	changed := false
	for _, o := range objects {
		if !s.isLocal(o.userID) {
			fail(o, errRemote, "signatures of remote keys need federation")
			continue
		}
		var k signedKey
		if err := json.Unmarshal(o.object, &k); err != nil || k.UserID != o.userID {
			fail(o, ErrInvalidParam, "not a key object of this user")
			continue
		}
		stored, err := s.store.StoredKey(ctx, o.userID, o.keyID)
		if err != nil {
			return nil, err
		}
		if stored == nil {
			fail(o, ErrMissing, "no such key")
			continue
		}
		// The signature must be over the key as stored.
		if !store.SameKeyObject(stored, o.object) {
			fail(o, ErrInvalidParam, "the object differs from the stored key")
			continue
		}
		// Another user's keys: only their master key, and only by the
		// signer's user-signing key (signatures of someone else's devices
		// would publish who verified whom).
		if o.userID != signer && !hasUsage(stored, store.KeyMaster) {
			fail(o, ErrInvalidParam, "only another user's master key may be signed")
			continue
		}
		sigs := map[string]map[string]string{}
		for sigKeyID, sig := range k.Signatures[signer] {
			key, ok := signerKey(sigKeyID)
			if !ok {
				fail(o, ErrInvalidSignature, "unknown signing key "+sigKeyID)
				continue
			}
			if o.userID != signer && !slices.Contains(key.Usage, store.KeyUserSigning) {
				fail(o, ErrInvalidSignature, "another user's master key is signed with the user-signing key")
				continue
			}
			if err := verifyBy(o.object, signer, key); err != nil {
				fail(o, ErrInvalidSignature, err.Error())
				continue
			}
			if sigs[signer] == nil {
				sigs[signer] = map[string]string{}
			}
			sigs[signer][sigKeyID] = sig
		}
		if len(sigs) == 0 {
			continue
		}
		ok, err := s.store.AddSignatures(ctx, o.userID, o.keyID, sigs)
		if err != nil {
			return nil, err
		}
		changed = changed || ok
	}
	if changed {
		s.publisher.poke()
	}
	return failures, nil
}

// hasUsage reports whether a key object lists the usage.
func hasUsage(raw []byte, usage string) bool {
	var k signedKey
	return json.Unmarshal(raw, &k) == nil && slices.Contains(k.Usage, usage)
}

// devicesDeleted drops deleted devices' keys and names.
func (s *Service) devicesDeleted(ctx context.Context, userID string, deviceIDs []string) error {
	changed, err := s.store.DeleteDevices(ctx, userID, deviceIDs)
	if changed {
		s.publisher.poke()
	}
	return err
}

// deviceRenamed records a device's new display name.
func (s *Service) deviceRenamed(ctx context.Context, userID, deviceID, name string) error {
	changed, err := s.store.RenameDevice(ctx, userID, deviceID, name)
	if changed {
		s.publisher.poke()
	}
	return err
}
