package fedreceiver_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
)

// TestQueries: /version, /openid/userinfo, /query/profile,
// /query/directory, /publicRooms (GET and POST), /hierarchy, the
// end-to-end key endpoints, and the spec's 404/405 M_UNRECOGNIZED.
func TestQueries(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	q := "/_matrix/federation/v1/"

	// /version needs no X-Matrix.
	status, body := e.remote.Do(fedpeer.Request{Method: "GET", Path: q + "version", Unsigned: true})
	var v struct {
		Server struct {
			Name string `json:"name"`
		} `json:"server"`
	}
	if status != 200 || json.Unmarshal(body, &v) != nil || v.Server.Name != "Myelin" {
		t.Fatalf("/version: %d %s", status, body)
	}
	if status, body := e.remote.Do(fedpeer.Request{Method: "GET", Path: q + "openid/userinfo?access_token=x", Unsigned: true}); status != 401 || errcode(body) != "M_UNKNOWN_TOKEN" {
		t.Fatalf("/openid/userinfo: %d %s", status, body)
	}
	if status, body := e.remote.Do(fedpeer.Request{Method: "GET", Path: q + "openid/userinfo", Unsigned: true}); status != 400 || errcode(body) != "M_MISSING_PARAM" {
		t.Fatalf("/openid/userinfo without a token: %d %s", status, body)
	}
	// A token alice asked the client-API for names her.
	openid, err := alice.RequestOpenIDToken(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	status, body = e.remote.Do(fedpeer.Request{Method: "GET", Path: q + "openid/userinfo?access_token=" + url.QueryEscape(openid.AccessToken), Unsigned: true})
	var info struct {
		Sub string `json:"sub"`
	}
	if status != 200 || json.Unmarshal(body, &info) != nil || info.Sub != alice.UserID.String() {
		t.Fatalf("/openid/userinfo of alice's token: %d %s", status, body)
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", q + "nothing", 404},
		{"GET", q + "query/unknown_kind", 404},
		{"GET", "/_matrix/federation/v3/send_join/x/y", 404},
		{"POST", q + "version", 405},
		{"GET", q + "send/txn", 405},
		{"DELETE", q + "query/profile", 405},
	} {
		status, body := e.remote.Do(fedpeer.Request{Method: c.method, Path: c.path})
		if status != c.status || errcode(body) != "M_UNRECOGNIZED" {
			t.Errorf("%s %s: %d %s, want %d M_UNRECOGNIZED", c.method, c.path, status, body, c.status)
		}
	}

	// Profile.
	if err := alice.SetDisplayName(e.ctx, "Alice A."); err != nil {
		t.Fatal(err)
	}
	status, body = e.remote.Get(q + "query/profile?user_id=" + esc(alice.UserID.String()))
	var p struct {
		Displayname string `json:"displayname"`
	}
	if status != 200 || json.Unmarshal(body, &p) != nil || p.Displayname != "Alice A." {
		t.Fatalf("/query/profile: %d %s", status, body)
	}
	for _, c := range []struct {
		query  string
		status int
	}{
		{"user_id=" + esc(alice.UserID.String()) + "&field=avatar_url", 404},
		{"user_id=" + esc(alice.UserID.String()) + "&field=other", 400},
		{"user_id=" + esc("@nobody:"+hsName), 404},
		{"user_id=" + esc("@x:evil.test"), 404},
		{"user_id=notanid", 400},
		{"", 400},
	} {
		if status, body := e.remote.Get(q + "query/profile?" + c.query); status != c.status {
			t.Errorf("/query/profile?%s: %d %s, want %d", c.query, status, body, c.status)
		}
	}

	// Directory and public rooms.
	roomID := e.createRoom(alice, "11", "public_chat")
	alias := id.RoomAlias("#fed:" + hsName)
	if _, err := alice.CreateAlias(e.ctx, alias, id.RoomID(roomID)); err != nil {
		t.Fatal(err)
	}
	status, body = e.remote.Get(q + "query/directory?room_alias=" + esc(alias.String()))
	var dir struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	if status != 200 || json.Unmarshal(body, &dir) != nil || dir.RoomID != roomID || len(dir.Servers) == 0 || dir.Servers[0] != hsName {
		t.Fatalf("/query/directory: %d %s", status, body)
	}
	if status, _ := e.remote.Get(q + "query/directory?room_alias=" + esc("#none:"+hsName)); status != 404 {
		t.Fatalf("/query/directory of an unknown alias: %d", status)
	}
	if status, body := doClient(t, alice, "PUT", "/_matrix/client/v3/directory/list/room/"+esc(roomID), map[string]string{"visibility": "public"}); status != 200 {
		t.Fatalf("publish: %d %s", status, body)
	}
	status, body = e.remote.Get(q + "publicRooms?limit=5")
	var pub struct {
		Chunk []struct {
			RoomID           string `json:"room_id"`
			Name             string `json:"name"`
			NumJoinedMembers int    `json:"num_joined_members"`
		} `json:"chunk"`
	}
	if status != 200 || json.Unmarshal(body, &pub) != nil || len(pub.Chunk) != 1 || pub.Chunk[0].RoomID != roomID || pub.Chunk[0].NumJoinedMembers != 1 || pub.Chunk[0].Name != "room v11" {
		t.Fatalf("GET /publicRooms: %d %s", status, body)
	}
	status, body = e.remote.Do(fedpeer.Request{Method: "POST", Path: q + "publicRooms", Body: map[string]any{"filter": map[string]any{"generic_search_term": "nothing like it"}}})
	if status != 200 || json.Unmarshal(body, &pub) != nil || len(pub.Chunk) != 0 {
		t.Fatalf("POST /publicRooms with a search term: %d %s", status, body)
	}
	status, body = e.remote.Do(fedpeer.Request{Method: "POST", Path: q + "publicRooms", Body: map[string]any{"filter": map[string]any{"generic_search_term": "V11"}}})
	if status != 200 || json.Unmarshal(body, &pub) != nil || len(pub.Chunk) != 1 {
		t.Fatalf("POST /publicRooms: %d %s", status, body)
	}
	if status, _ := e.remote.Get(q + "publicRooms?since=bad"); status != 400 {
		t.Fatalf("/publicRooms with a bad since: %d", status)
	}

	// Hierarchy: a space with a public child and a private one.
	child := e.createRoom(alice, "11", "public_chat")
	private := e.createRoom(alice, "11", "private_chat")
	spaceResp, err := alice.CreateRoom(e.ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "space",
		CreationContent: map[string]any{"type": "m.space"}})
	if err != nil {
		t.Fatal(err)
	}
	space := spaceResp.RoomID
	for _, c := range []string{child, private, "!unknown:elsewhere.test"} {
		if _, err := alice.SendStateEvent(e.ctx, space, event.StateSpaceChild, c, map[string]any{"via": []string{hsName}}); err != nil {
			t.Fatal(err)
		}
	}
	status, body = e.remote.Get(q + "hierarchy/" + esc(space.String()))
	var h struct {
		Room struct {
			RoomID        string            `json:"room_id"`
			RoomType      string            `json:"room_type"`
			ChildrenState []json.RawMessage `json:"children_state"`
		} `json:"room"`
		Children []struct {
			RoomID string `json:"room_id"`
		} `json:"children"`
		Inaccessible []string `json:"inaccessible_children"`
	}
	if status != 200 || json.Unmarshal(body, &h) != nil || h.Room.RoomID != space.String() || h.Room.RoomType != "m.space" ||
		len(h.Room.ChildrenState) != 3 || len(h.Children) != 1 || h.Children[0].RoomID != child ||
		len(h.Inaccessible) != 1 || h.Inaccessible[0] != private {
		t.Fatalf("/hierarchy: %d %s", status, body)
	}
	if status, _ := e.remote.Get(q + "hierarchy/" + esc(private)); status != 404 {
		t.Fatalf("/hierarchy of a private room: %d", status)
	}

	// End-to-end keys of a local user.
	pub25519, priv := mustEd25519(t)
	deviceKeys := map[string]any{"user_id": alice.UserID, "device_id": alice.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:" + alice.DeviceID.String(): "curvepublic", "ed25519:" + alice.DeviceID.String(): pub25519}}
	signed, err := gomatrixserverlib.SignJSON(alice.UserID.String(), gomatrixserverlib.KeyID("ed25519:"+alice.DeviceID.String()), priv, mustJSON(t, deviceKeys))
	if err != nil {
		t.Fatal(err)
	}
	otk, err := gomatrixserverlib.SignJSON(alice.UserID.String(), gomatrixserverlib.KeyID("ed25519:"+alice.DeviceID.String()), priv, []byte(`{"key":"otkpublic"}`))
	if err != nil {
		t.Fatal(err)
	}
	status, body = doClient(t, alice, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
		"device_keys": json.RawMessage(signed), "one_time_keys": map[string]any{"signed_curve25519:AAAA": json.RawMessage(otk)}})
	if status != 200 {
		t.Fatalf("keys/upload: %d %s", status, body)
	}
	status, body = e.remote.Get(q + "user/devices/" + esc(alice.UserID.String()))
	var devs struct {
		UserID   string `json:"user_id"`
		StreamID int64  `json:"stream_id"`
		Devices  []struct {
			DeviceID string          `json:"device_id"`
			Keys     json.RawMessage `json:"keys"`
		} `json:"devices"`
	}
	if status != 200 || json.Unmarshal(body, &devs) != nil || devs.UserID != alice.UserID.String() || devs.StreamID == 0 ||
		len(devs.Devices) != 1 || devs.Devices[0].DeviceID != alice.DeviceID.String() {
		t.Fatalf("/user/devices: %d %s", status, body)
	}
	if status, _ := e.remote.Get(q + "user/devices/" + esc("@x:evil.test")); status != 404 {
		t.Fatalf("/user/devices of another server's user: %d", status)
	}
	status, body = e.remote.Do(fedpeer.Request{Method: "POST", Path: q + "user/keys/query",
		Body: map[string]any{"device_keys": map[string][]string{alice.UserID.String(): {}, "@x:evil.test": {}}}})
	var kq struct {
		DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
	}
	if status != 200 || json.Unmarshal(body, &kq) != nil || len(kq.DeviceKeys) != 1 || kq.DeviceKeys[alice.UserID.String()][alice.DeviceID.String()] == nil {
		t.Fatalf("/user/keys/query: %d %s", status, body)
	}
	status, body = e.remote.Do(fedpeer.Request{Method: "POST", Path: q + "user/keys/claim",
		Body: map[string]any{"one_time_keys": map[string]any{alice.UserID.String(): map[string]string{alice.DeviceID.String(): "signed_curve25519"}}}})
	var kc struct {
		OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	}
	if status != 200 || json.Unmarshal(body, &kc) != nil || kc.OneTimeKeys[alice.UserID.String()][alice.DeviceID.String()]["signed_curve25519:AAAA"] == nil {
		t.Fatalf("/user/keys/claim: %d %s", status, body)
	}
	// Claimed once: the next claim finds none.
	status, body = e.remote.Do(fedpeer.Request{Method: "POST", Path: q + "user/keys/claim",
		Body: map[string]any{"one_time_keys": map[string]any{alice.UserID.String(): map[string]string{alice.DeviceID.String(): "signed_curve25519"}}}})
	kc.OneTimeKeys = nil
	if status != 200 || json.Unmarshal(body, &kc) != nil || len(kc.OneTimeKeys[alice.UserID.String()]) != 0 {
		t.Fatalf("/user/keys/claim again: %d %s", status, body)
	}
}

func mustEd25519(t *testing.T) (string, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return spec.Base64Bytes(pub).Encode(), priv
}

// doClient sends a client-server request as cli.
func doClient(t *testing.T, cli *mautrix.Client, method, path string, body any) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, cli.HomeserverURL.String()+path, bytes.NewReader(mustJSON(t, body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, out
}
