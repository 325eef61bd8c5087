package clientapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/services/clientapi"
)

// TestAdminDeletesAnyAlias: a server admin (made by shared-secret
// registration, as operators do) may delete an alias of a room they are
// not in; an ordinary stranger may not.
func TestAdminDeletesAnyAlias(t *testing.T) {
	const secret = "alias-test-secret"
	cfg := clientapi.DefaultConfig()
	cfg.Registration.SharedSecret = secret
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	stranger := newUser(t, hs, "stranger")
	if _, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomAliasName: "secret-den"}); err != nil {
		t.Fatal(err)
	}
	alias := id.RoomAlias("#secret-den:" + serverName)

	admin := adminClient(t, hs, secret, "root")

	_, err := stranger.DeleteAlias(ctx, alias)
	wantErr(t, "stranger deletes the alias", err, mautrix.MForbidden)
	_, err = admin.DeleteAlias(ctx, alias)
	must(t, "admin deletes the alias", err)
	_, err = alice.ResolveAlias(ctx, alias)
	wantErr(t, "resolve the deleted alias", err, mautrix.MNotFound)
}

// adminClient registers a server admin through shared-secret registration
// (as operators do) and returns it logged in.
func adminClient(t *testing.T, hs, secret, name string) *mautrix.Client {
	t.Helper()
	ctx := context.Background()
	admin, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if _, err := admin.MakeRequest(ctx, "GET", hs+"/_synapse/admin/v1/register", nil, &nonce); err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce.Nonce + "\x00" + name + "\x00" + name + "-pw\x00admin"))
	var reg mautrix.RespRegister
	if _, err := admin.MakeRequest(ctx, "POST", hs+"/_synapse/admin/v1/register", map[string]any{
		"nonce": nonce.Nonce, "username": name, "password": name + "-pw", "admin": true, "mac": hex.EncodeToString(m.Sum(nil)),
	}, &reg); err != nil {
		t.Fatal(err)
	}
	admin.SetCredentials(reg.UserID, reg.AccessToken)
	return admin
}
