package httpapi

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// TestFromRemote: the federation sender's statuses become the Matrix
// errors clients get: a remote's refusal with its own errcode and 4xx
// status, other servers unreachable as 502, federation off as 403, the
// rest through FromGRPC's table.
func TestFromRemote(t *testing.T) {
	refusal := func(code codes.Code, errcode, httpStatus, msg string) error {
		st, err := status.New(code, "remote said no").WithDetails(&errdetails.ErrorInfo{Domain: RemoteErrorDomain, Reason: errcode,
			Metadata: map[string]string{"server": "a.test", "http_status": httpStatus, "error": msg}})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	cases := []struct {
		name    string
		err     error
		status  int
		errcode string
	}{
		{"remote forbids", refusal(codes.PermissionDenied, "M_FORBIDDEN", "403", "not invited"), http.StatusForbidden, "M_FORBIDDEN"},
		{"remote room version", refusal(codes.FailedPrecondition, "M_INCOMPATIBLE_ROOM_VERSION", "400", "v99"), http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION"},
		{"remote not found", refusal(codes.NotFound, "M_NOT_FOUND", "404", "no such room"), http.StatusNotFound, "M_NOT_FOUND"},
		{"remote 500 with an errcode", refusal(codes.Unavailable, "M_UNKNOWN", "500", "boom"), http.StatusBadGateway, "M_UNKNOWN"},
		{"remote refusal without errcode", refusal(codes.FailedPrecondition, "", "400", ""), http.StatusBadRequest, "M_UNKNOWN"},
		{"unreachable", status.Error(codes.Unavailable, "no server could be reached"), http.StatusBadGateway, "M_UNKNOWN"},
		{"room-server did not take it", status.Error(codes.Aborted, "not accepted"), http.StatusBadGateway, "M_UNKNOWN"},
		{"federation off", status.Error(codes.FailedPrecondition, "federation is disabled"), http.StatusForbidden, "M_FORBIDDEN"},
		{"bad argument", status.Error(codes.InvalidArgument, "bad room ID"), http.StatusBadRequest, "M_BAD_JSON"},
		{"sender's own not found", status.Error(codes.NotFound, "unknown room"), http.StatusNotFound, "M_NOT_FOUND"},
		{"rate limited", status.Error(codes.ResourceExhausted, "slow down"), http.StatusTooManyRequests, "M_LIMIT_EXCEEDED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := FromRemote(context.Background(), zap.NewNop(), "op", c.err)
			var me *matrixhttp.Error
			if !errors.As(err, &me) {
				t.Fatalf("%v is not a Matrix error", err)
			}
			if me.Status != c.status || me.ErrCode != c.errcode {
				t.Fatalf("got %d %s (%s), want %d %s", me.Status, me.ErrCode, me.Message, c.status, c.errcode)
			}
		})
	}
	if err := FromRemote(context.Background(), zap.NewNop(), "op", nil); err != nil {
		t.Fatalf("nil: %v", err)
	}
}
