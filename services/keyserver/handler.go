package keyserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// handler implements the generated KeyService server.
type handler struct {
	keyserverv1.UnimplementedKeyServiceServer
	svc *Service
}

var _ keyserverv1.KeyServiceServer = (*handler)(nil)

func (h *handler) ServerKeys(ctx context.Context, _ *keyserverv1.ServerKeysRequest) (*keyserverv1.ServerKeysResponse, error) {
	s := h.svc
	resp := &keyserverv1.ServerKeysResponse{
		ServerName:   string(s.server),
		VerifyKeys:   []*keyserverv1.VerifyKey{{KeyId: s.current.ID, PublicKey: s.current.Private.Public().(ed25519.PublicKey)}},
		ValidUntilTs: time.Now().Add(s.cfg.KeyValidity).UnixMilli(),
	}
	for _, k := range s.old {
		resp.OldVerifyKeys = append(resp.OldVerifyKeys, &keyserverv1.VerifyKey{
			KeyId: k.ID, PublicKey: k.Private.Public().(ed25519.PublicKey), ExpiredTs: k.ExpiredAt.UnixMilli(),
		})
	}
	return resp, nil
}

func (h *handler) SignJSON(ctx context.Context, req *keyserverv1.SignJSONRequest) (*keyserverv1.SignJSONResponse, error) {
	signed, sig, err := h.svc.sign(req.GetJson())
	switch {
	case errors.Is(err, ErrNotJSONObject):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &keyserverv1.SignJSONResponse{
		ServerName: string(h.svc.server),
		KeyId:      h.svc.current.ID,
		Signature:  sig,
		SignedJson: signed,
	}, nil
}

func (h *handler) BuildEvent(ctx context.Context, req *keyserverv1.BuildEventRequest) (*keyserverv1.BuildEventResponse, error) {
	ev, err := h.svc.buildEvent(req.GetRoomVersion(), req.GetProtoEvent())
	switch {
	case errors.Is(err, ErrBadEvent):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrEventTooLarge):
		return nil, status.Error(codes.OutOfRange, err.Error())
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &keyserverv1.BuildEventResponse{
		ServerName: string(h.svc.server),
		EventJson:  ev.JSON(),
		EventId:    ev.EventID(),
	}, nil
}
