package clientapi

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/rpc"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
)

// UserService.Authenticate over real gRPC: a valid token's user and
// device, an expired one answered with expired, unknown and empty ones
// refused.
func TestAuthenticateRPC(t *testing.T) {
	h := newHarness(t, accountsConfig(), nil)
	offset := h.clock()
	srv := rpc.NewServer(h.svc.log)
	h.svc.RegisterGRPC(srv)
	lis := rpc.ListenInProcess()
	go srv.Serve(lis) //nolint:errcheck
	t.Cleanup(srv.Stop)
	conn, err := rpc.DialInProcess(lis, "media")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	users := clientapiv1.NewUserServiceClient(conn)
	ctx := context.Background()

	reg := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "authme", "password": "pw", "refresh_token": true,
		"auth": map[string]any{"type": authDummy}})
	h.expect(reg, 200, "")
	token := reg.body["access_token"].(string)
	resp, err := users.Authenticate(ctx, &clientapiv1.AuthenticateRequest{AccessToken: token})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetUserId() != reg.body["user_id"] || resp.GetDeviceId() != reg.body["device_id"] || resp.GetGuest() || resp.GetAdmin() ||
		resp.GetLocked() || resp.GetSuspended() || resp.GetExpired() {
		t.Errorf("Authenticate: %v, want %s's device %s, nothing set", resp, reg.body["user_id"], reg.body["device_id"])
	}

	offset.Store(int64(6 * time.Minute)) // past access_token_lifetime
	resp, err = users.Authenticate(ctx, &clientapiv1.AuthenticateRequest{AccessToken: token})
	if err != nil || !resp.GetExpired() || resp.GetUserId() != reg.body["user_id"] {
		t.Errorf("Authenticate of an expired token: %v, %v; want expired", resp, err)
	}

	for tok, want := range map[string]codes.Code{"myl_unknown": codes.Unauthenticated, "": codes.InvalidArgument} {
		if _, err := users.Authenticate(ctx, &clientapiv1.AuthenticateRequest{AccessToken: tok}); status.Code(err) != want {
			t.Errorf("Authenticate(%q): %v, want %s", tok, err, want)
		}
	}
}
