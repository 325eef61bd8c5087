package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// RemoteErrorDomain is the domain of the ErrorInfo detail the federation
// sender attaches to a remote server's refusal (reason = its errcode,
// metadata http_status and error).
const RemoteErrorDomain = "matrix.remote"

// FromRemote converts an error of the federation sender's gRPC API into
// a Matrix error: a remote server's refusal is passed on to the client as
// the remote gave it (its errcode, its status when it is a 4xx, and its
// message); a remote that could not be reached, or answered with
// something that is not the protocol's answer, is 502 M_UNKNOWN (Synapse
// and Dendrite answer the same); federation being off is 403 M_FORBIDDEN;
// anything else goes through FromGRPC's table.
func FromRemote(ctx context.Context, log *zap.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != RemoteErrorDomain {
			continue
		}
		code, _ := strconv.Atoi(info.GetMetadata()["http_status"])
		if code < 400 || code > 499 {
			code = http.StatusBadGateway
		}
		errcode := info.GetReason()
		if errcode == "" {
			errcode = "M_UNKNOWN"
		}
		msg := info.GetMetadata()["error"]
		if msg == "" {
			msg = "The remote server refused the request"
		}
		if server := info.GetMetadata()["server"]; server != "" {
			msg = server + ": " + msg
		}
		return matrixhttp.Errorf(code, errcode, "%s", msg)
	}
	switch st.Code() {
	case codes.Unavailable, codes.Aborted:
		if ctx.Err() == nil {
			log.Info("federation request failed", zap.String("op", op), zap.Error(err))
			return UnknownError(http.StatusBadGateway, "Could not complete the request with the other servers: "+st.Message())
		}
	case codes.FailedPrecondition:
		return matrixhttp.Forbidden("Federation is disabled on this server")
	}
	return FromGRPC(ctx, log, op, err, nil)
}
