package clientapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
)

// TestKeyBackup drives the server-side key backup API through mautrix-go:
// versions, the better-key rule on every upload, reads at the three
// levels, writes to an old version refused with the current one named,
// deletions, and another user seeing none of it.
func TestKeyBackup(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	do := func(cli *mautrix.Client, method string, body, out any, query map[string]string, path ...any) error {
		t.Helper()
		url := cli.BuildURLWithQuery(mautrix.ClientURLPath(append([]any{"v3"}, path...)), query)
		_, err := cli.MakeRequest(ctx, method, url, body, out)
		return err
	}
	authData := map[string]any{"public_key": "abcdefg", "signatures": map[string]any{}}
	const algorithm = "m.megolm_backup.v1.curve25519-aes-sha2"

	var noBackup map[string]any
	wantMatrixError(t, "latest version before any", do(alice, http.MethodGet, nil, &noBackup, nil, "room_keys", "version"), http.StatusNotFound, "M_NOT_FOUND")
	var created struct{ Version string }
	if err := do(alice, http.MethodPost, map[string]any{"algorithm": algorithm, "auth_data": authData}, &created, nil, "room_keys", "version"); err != nil || created.Version != "1" {
		t.Fatalf("create: %+v, %v", created, err)
	}
	v1 := map[string]string{"version": "1"}
	key := func(index, forwarded int, verified bool, data string) map[string]any {
		return map[string]any{"first_message_index": index, "forwarded_count": forwarded, "is_verified": verified, "session_data": map[string]any{"ciphertext": data}}
	}
	type counts struct {
		Etag  string
		Count int
	}
	var c counts
	if err := do(alice, http.MethodPut, key(5, 1, false, "first"), &c, v1, "room_keys", "keys", "!room:x", "sess1"); err != nil || c.Count != 1 {
		t.Fatalf("put one: %+v, %v", c, err)
	}
	etag := c.Etag
	// A worse key (higher first message index) is ignored; the etag stays.
	if err := do(alice, http.MethodPut, key(9, 0, false, "worse"), &c, v1, "room_keys", "keys", "!room:x", "sess1"); err != nil || c.Etag != etag {
		t.Fatalf("put a worse key: %+v, %v (etag was %s)", c, err, etag)
	}
	// A verified key beats an unverified one whatever its index.
	body := map[string]any{"rooms": map[string]any{
		"!room:x":  map[string]any{"sessions": map[string]any{"sess1": key(20, 3, true, "verified"), "sess2": key(0, 0, false, "second")}},
		"!other:x": map[string]any{"sessions": map[string]any{"sess3": key(0, 0, false, "third")}},
	}}
	if err := do(alice, http.MethodPut, body, &c, v1, "room_keys", "keys"); err != nil || c.Count != 3 || c.Etag == etag {
		t.Fatalf("put many: %+v, %v", c, err)
	}
	var one struct {
		SessionData map[string]string `json:"session_data"`
	}
	if err := do(alice, http.MethodGet, nil, &one, v1, "room_keys", "keys", "!room:x", "sess1"); err != nil || one.SessionData["ciphertext"] != "verified" {
		t.Fatalf("get one: %+v, %v", one, err)
	}
	var room struct {
		Sessions map[string]any `json:"sessions"`
	}
	if err := do(alice, http.MethodGet, nil, &room, v1, "room_keys", "keys", "!room:x"); err != nil || len(room.Sessions) != 2 {
		t.Fatalf("get room: %+v, %v", room, err)
	}
	var all struct {
		Rooms map[string]any `json:"rooms"`
	}
	if err := do(alice, http.MethodGet, nil, &all, v1, "room_keys", "keys"); err != nil || len(all.Rooms) != 2 {
		t.Fatalf("get all: %+v, %v", all, err)
	}
	var info struct {
		Algorithm string
		Count     int
		Etag      string
		Version   string
	}
	if err := do(alice, http.MethodGet, nil, &info, nil, "room_keys", "version"); err != nil || info.Count != 3 || info.Version != "1" || info.Algorithm != algorithm {
		t.Fatalf("version info: %+v, %v", info, err)
	}

	// A new version: writes to the old one are refused, naming the current.
	if err := do(alice, http.MethodPost, map[string]any{"algorithm": algorithm, "auth_data": authData}, &created, nil, "room_keys", "version"); err != nil || created.Version != "2" {
		t.Fatalf("second version: %+v, %v", created, err)
	}
	err := do(alice, http.MethodPut, key(0, 0, false, "late"), nil, v1, "room_keys", "keys", "!room:x", "sess9")
	wantMatrixError(t, "write to the old version", err, http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION")
	var he mautrix.HTTPError
	if !asHTTPError(err, &he) || he.RespError.ExtraData["current_version"] != "2" {
		t.Errorf("current_version of the refusal: %+v", he.RespError)
	}
	// Updating auth_data with another algorithm is refused.
	wantMatrixError(t, "algorithm change", do(alice, http.MethodPut, map[string]any{"algorithm": "other", "auth_data": authData}, nil, nil, "room_keys", "version", "2"),
		http.StatusBadRequest, "M_INVALID_PARAM")

	// Deletions: a key, then the whole first version (twice: idempotent).
	if err := do(alice, http.MethodDelete, nil, &c, v1, "room_keys", "keys", "!room:x", "sess2"); err != nil || c.Count != 2 {
		t.Fatalf("delete a key: %+v, %v", c, err)
	}
	for range 2 {
		if err := do(alice, http.MethodDelete, nil, nil, nil, "room_keys", "version", "1"); err != nil {
			t.Fatalf("delete version 1: %v", err)
		}
	}
	wantMatrixError(t, "read of a deleted version", do(alice, http.MethodGet, nil, &all, v1, "room_keys", "keys"), http.StatusNotFound, "M_NOT_FOUND")
	wantMatrixError(t, "delete of a version that never was", do(alice, http.MethodDelete, nil, nil, nil, "room_keys", "version", "7"), http.StatusNotFound, "M_NOT_FOUND")

	// Bob has no backup of his own and cannot read Alice's.
	wantMatrixError(t, "bob's latest version", do(bob, http.MethodGet, nil, &info, nil, "room_keys", "version"), http.StatusNotFound, "M_NOT_FOUND")
	wantMatrixError(t, "bob reads version 2", do(bob, http.MethodGet, nil, &all, map[string]string{"version": "2"}, "room_keys", "keys"), http.StatusNotFound, "M_NOT_FOUND")
}

func asHTTPError(err error, he *mautrix.HTTPError) bool {
	return errors.As(err, he) && he.RespError != nil
}
