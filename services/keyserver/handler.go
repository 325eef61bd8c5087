package keyserver

import (
	"context"
	"crypto/ed25519"
	"errors"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
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
	keys := s.keys.Load()
	resp := &keyserverv1.ServerKeysResponse{
		ServerName:   string(s.server),
		VerifyKeys:   []*keyserverv1.VerifyKey{{KeyId: keys.current.ID, PublicKey: keys.current.Private.Public().(ed25519.PublicKey)}},
		ValidUntilTs: time.Now().Add(s.cfg.KeyValidity).UnixMilli(),
	}
	for _, k := range keys.old {
		resp.OldVerifyKeys = append(resp.OldVerifyKeys, &keyserverv1.VerifyKey{
			KeyId: k.ID, PublicKey: k.Private.Public().(ed25519.PublicKey), ExpiredTs: k.ExpiredAt.UnixMilli(),
		})
	}
	return resp, nil
}

func (h *handler) SignJSON(ctx context.Context, req *keyserverv1.SignJSONRequest) (*keyserverv1.SignJSONResponse, error) {
	signed, sig, keyID, err := h.svc.sign(req.GetJson())
	switch {
	case errors.Is(err, ErrNotJSONObject):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &keyserverv1.SignJSONResponse{
		ServerName: string(h.svc.server),
		KeyId:      keyID,
		Signature:  sig,
		SignedJson: signed,
	}, nil
}

// serverKeyHandler implements the generated ServerKeyService server.
type serverKeyHandler struct {
	keyserverv1.UnimplementedServerKeyServiceServer
	svc *Service
}

var _ keyserverv1.ServerKeyServiceServer = (*serverKeyHandler)(nil)

func (h *serverKeyHandler) SigningKey(ctx context.Context, _ *keyserverv1.SigningKeyRequest) (*keyserverv1.SigningKeyResponse, error) {
	key := h.svc.current()
	return &keyserverv1.SigningKeyResponse{
		ServerName:   string(h.svc.server),
		KeyId:        key.ID,
		Seed:         key.Private.Seed(),
		ValidUntilTs: time.Now().Add(signingKeyRefresh).UnixMilli(),
	}, nil
}

func (h *serverKeyHandler) QueryServerKeys(ctx context.Context, req *keyserverv1.QueryServerKeysRequest) (*keyserverv1.QueryServerKeysResponse, error) {
	if len(req.GetKeys()) > maxQueriedKeys {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d keys per query", maxQueriedKeys)
	}
	wants := make([]want, 0, len(req.GetKeys()))
	for _, k := range req.GetKeys() {
		wants = append(wants, want{
			server:   spec.ServerName(k.GetServerName()),
			keyID:    gomatrixserverlib.KeyID(k.GetKeyId()),
			minValid: spec.Timestamp(k.GetMinValidUntilTs()),
		})
	}
	keys, err := h.svc.queryServerKeys(ctx, wants)
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil, status.FromContextError(err).Err()
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &keyserverv1.QueryServerKeysResponse{Keys: keys}, nil
}

func (h *serverKeyHandler) RotateKey(ctx context.Context, _ *keyserverv1.RotateKeyRequest) (*keyserverv1.RotateKeyResponse, error) {
	old, current, err := h.svc.rotate(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &keyserverv1.RotateKeyResponse{KeyId: current.ID, OldKeyId: old.ID, OldKeyExpiredTs: old.ExpiredAt.UnixMilli()}, nil
}
