package keyserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// e2eHandler implements the generated E2EKeyService server: it converts
// between proto messages and the service's types, and turns errors into
// gRPC statuses (the only place that does).
type e2eHandler struct {
	keyserverv1.UnimplementedE2EKeyServiceServer
	svc *Service
}

var _ keyserverv1.E2EKeyServiceServer = (*e2eHandler)(nil)

// ErrorDomain is the google.rpc.ErrorInfo domain of E2EKeyService errors.
const ErrorDomain = "keyserver.myelin"

// e2eStatus turns an error into a gRPC status: sentinels become
// INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION with an ErrorInfo
// whose reason names the E2EKeyError; anything else is INTERNAL (or
// CANCELED when the caller went away).
func (h *e2eHandler) e2eStatus(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	code, reason := codes.Internal, keyserverv1.E2EKeyError_E2E_KEY_ERROR_UNSPECIFIED
	meta := map[string]string{}
	var wrong store.ErrWrongBackupVersion
	switch {
	case errors.As(err, &wrong):
		code, reason = codes.FailedPrecondition, keyserverv1.E2EKeyError_E2E_KEY_ERROR_WRONG_BACKUP_VERSION
		meta["current_version"] = strconv.FormatInt(wrong.Current, 10)
	case errors.Is(err, ErrMissing):
		code, reason = codes.NotFound, keyserverv1.E2EKeyError_E2E_KEY_ERROR_NOT_FOUND
	default:
		if r, ok := errorReason(err); ok {
			code, reason = codes.InvalidArgument, r
		}
	}
	if code == codes.Internal {
		if ctx.Err() != nil {
			return status.Error(codes.Canceled, ctx.Err().Error())
		}
		h.svc.log.Error("e2e key call failed", zap.String("op", op), zap.Error(err))
		return status.Error(codes.Internal, "internal error")
	}
	st, derr := status.New(code, err.Error()).WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: ErrorDomain, Metadata: meta})
	if derr != nil {
		return status.Error(code, err.Error())
	}
	return st.Err()
}

// errorReason is the E2EKeyError of an invalid-argument sentinel.
func errorReason(err error) (keyserverv1.E2EKeyError, bool) {
	switch {
	case errors.Is(err, ErrBadJSON):
		return keyserverv1.E2EKeyError_E2E_KEY_ERROR_BAD_JSON, true
	case errors.Is(err, ErrInvalidParam):
		return keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_PARAM, true
	case errors.Is(err, ErrMissingParam):
		return keyserverv1.E2EKeyError_E2E_KEY_ERROR_MISSING_PARAM, true
	case errors.Is(err, ErrInvalidSignature):
		return keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_SIGNATURE, true
	case errors.Is(err, ErrMissing):
		return keyserverv1.E2EKeyError_E2E_KEY_ERROR_NOT_FOUND, true
	case errors.Is(err, errRemote):
		return keyserverv1.E2EKeyError_E2E_KEY_ERROR_REMOTE, true
	}
	return keyserverv1.E2EKeyError_E2E_KEY_ERROR_UNSPECIFIED, false
}

// requireUser refuses a request without a user (and device, when asked).
func requireUser(userID string, deviceID *string) error {
	if userID == "" || (deviceID != nil && *deviceID == "") {
		return status.Error(codes.InvalidArgument, "user_id and device_id are required")
	}
	return nil
}

// keyMap turns key entries into "algorithm:key_id" → key; an entry whose
// key is not JSON is refused.
func keyMap(entries []*keyserverv1.KeyEntry, what string) (map[string]json.RawMessage, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	out := make(map[string]json.RawMessage, len(entries))
	for _, e := range entries {
		if !json.Valid(e.GetKey()) {
			return nil, refuse(ErrBadJSON, "%s key %q is not JSON", what, e.GetKeyId())
		}
		out[e.GetKeyId()] = e.GetKey()
	}
	return out, nil
}

func (h *e2eHandler) UploadKeys(ctx context.Context, req *keyserverv1.UploadKeysRequest) (*keyserverv1.UploadKeysResponse, error) {
	device := req.GetDeviceId()
	if err := requireUser(req.GetUserId(), &device); err != nil {
		return nil, err
	}
	up := store.KeyUpload{UserID: req.GetUserId(), DeviceID: device, DisplayName: req.GetDeviceDisplayName(), DeviceKeys: req.GetDeviceKeys()}
	var err error
	if up.OneTimeKeys, err = keyMap(req.GetOneTimeKeys(), "one-time"); err != nil {
		return nil, h.e2eStatus(ctx, "UploadKeys", err)
	}
	if up.FallbackKeys, err = keyMap(req.GetFallbackKeys(), "fallback"); err != nil {
		return nil, h.e2eStatus(ctx, "UploadKeys", err)
	}
	counts, err := h.svc.uploadKeys(ctx, up)
	if err != nil {
		return nil, h.e2eStatus(ctx, "UploadKeys", err)
	}
	return &keyserverv1.UploadKeysResponse{OneTimeKeyCounts: counts}, nil
}

func (h *e2eHandler) QueryKeys(ctx context.Context, req *keyserverv1.QueryKeysRequest) (*keyserverv1.QueryKeysResponse, error) {
	want := map[string][]string{}
	for _, u := range req.GetUsers() {
		want[u.GetUserId()] = append(want[u.GetUserId()], u.GetDeviceIds()...)
	}
	found, err := h.svc.queryKeys(ctx, want, req.GetRequesterUserId())
	if err != nil {
		return nil, h.e2eStatus(ctx, "QueryKeys", err)
	}
	resp := &keyserverv1.QueryKeysResponse{Users: make(map[string]*keyserverv1.UserKeys, len(found))}
	for user, uk := range found {
		out := &keyserverv1.UserKeys{Devices: make(map[string]*keyserverv1.QueriedDevice, len(uk.devices)),
			MasterKey: uk.master, SelfSigningKey: uk.selfSigning, UserSigningKey: uk.userSigning}
		for id, d := range uk.devices {
			out.Devices[id] = &keyserverv1.QueriedDevice{Keys: d.Keys, DisplayName: d.DisplayName}
		}
		resp.Users[user] = out
	}
	return resp, nil
}

func (h *e2eHandler) ClaimKeys(ctx context.Context, req *keyserverv1.ClaimKeysRequest) (*keyserverv1.ClaimKeysResponse, error) {
	want := make([]store.ClaimRequest, 0, len(req.GetClaims()))
	for _, c := range req.GetClaims() {
		want = append(want, store.ClaimRequest{UserID: c.GetUserId(), DeviceID: c.GetDeviceId(), Algorithm: c.GetAlgorithm()})
	}
	claimed, err := h.svc.store.ClaimKeys(ctx, want)
	if err != nil {
		return nil, h.e2eStatus(ctx, "ClaimKeys", err)
	}
	resp := &keyserverv1.ClaimKeysResponse{Keys: make([]*keyserverv1.ClaimedKey, 0, len(claimed))}
	for _, k := range claimed {
		resp.Keys = append(resp.Keys, &keyserverv1.ClaimedKey{UserId: k.UserID, DeviceId: k.DeviceID, KeyId: k.KeyID, Key: k.Key})
	}
	return resp, nil
}

func (h *e2eHandler) KeyChanges(ctx context.Context, req *keyserverv1.KeyChangesRequest) (*keyserverv1.KeyChangesResponse, error) {
	users, err := h.svc.store.KeyChangesBetween(ctx, req.GetAfter(), req.GetUpto())
	if err != nil {
		return nil, h.e2eStatus(ctx, "KeyChanges", err)
	}
	return &keyserverv1.KeyChangesResponse{UserIds: users}, nil
}

func (h *e2eHandler) UploadCrossSigningKeys(ctx context.Context, req *keyserverv1.UploadCrossSigningKeysRequest) (*keyserverv1.UploadCrossSigningKeysResponse, error) {
	if err := requireUser(req.GetUserId(), nil); err != nil {
		return nil, err
	}
	fields := map[string][]byte{
		store.KeyMaster: req.GetMasterKey(), store.KeySelfSigning: req.GetSelfSigningKey(), store.KeyUserSigning: req.GetUserSigningKey(),
	}
	authRequired, err := h.svc.uploadCrossSigning(ctx, req.GetUserId(), fields, req.GetAuthenticated())
	if err != nil {
		return nil, h.e2eStatus(ctx, "UploadCrossSigningKeys", err)
	}
	return &keyserverv1.UploadCrossSigningKeysResponse{AuthRequired: authRequired}, nil
}

func (h *e2eHandler) UploadSignatures(ctx context.Context, req *keyserverv1.UploadSignaturesRequest) (*keyserverv1.UploadSignaturesResponse, error) {
	if err := requireUser(req.GetUserId(), nil); err != nil {
		return nil, err
	}
	objects := make([]signedObject, 0, len(req.GetObjects()))
	for _, o := range req.GetObjects() {
		objects = append(objects, signedObject{userID: o.GetUserId(), keyID: o.GetKeyId(), object: o.GetObject()})
	}
	failures, err := h.svc.uploadSignatures(ctx, req.GetUserId(), objects)
	if err != nil {
		return nil, h.e2eStatus(ctx, "UploadSignatures", err)
	}
	resp := &keyserverv1.UploadSignaturesResponse{}
	for _, f := range failures {
		reason, _ := errorReason(f.kind)
		resp.Failures = append(resp.Failures, &keyserverv1.SignatureFailure{UserId: f.userID, KeyId: f.keyID, Reason: reason, Message: f.msg})
	}
	return resp, nil
}

func (h *e2eHandler) DevicesDeleted(ctx context.Context, req *keyserverv1.DevicesDeletedRequest) (*keyserverv1.DevicesDeletedResponse, error) {
	if err := requireUser(req.GetUserId(), nil); err != nil {
		return nil, err
	}
	if err := h.svc.devicesDeleted(ctx, req.GetUserId(), req.GetDeviceIds()); err != nil {
		return nil, h.e2eStatus(ctx, "DevicesDeleted", err)
	}
	return &keyserverv1.DevicesDeletedResponse{}, nil
}

func (h *e2eHandler) DeviceRenamed(ctx context.Context, req *keyserverv1.DeviceRenamedRequest) (*keyserverv1.DeviceRenamedResponse, error) {
	device := req.GetDeviceId()
	if err := requireUser(req.GetUserId(), &device); err != nil {
		return nil, err
	}
	if err := h.svc.deviceRenamed(ctx, req.GetUserId(), device, req.GetDisplayName()); err != nil {
		return nil, h.e2eStatus(ctx, "DeviceRenamed", err)
	}
	return &keyserverv1.DeviceRenamedResponse{}, nil
}

func (h *e2eHandler) SyncKeys(ctx context.Context, req *keyserverv1.SyncKeysRequest) (*keyserverv1.SyncKeysResponse, error) {
	st, err := h.svc.store.SyncKeys(ctx, req.GetUserId(), req.GetDeviceId(), req.GetAfter(), req.GetWithChanges())
	if err != nil {
		return nil, h.e2eStatus(ctx, "SyncKeys", err)
	}
	return &keyserverv1.SyncKeysResponse{
		OneTimeKeyCounts: st.Counts, UnusedFallbackKeyTypes: st.UnusedFallback, Position: st.Position, ChangedUserIds: st.Changed,
	}, nil
}

func (h *e2eHandler) CreateBackupVersion(ctx context.Context, req *keyserverv1.CreateBackupVersionRequest) (*keyserverv1.CreateBackupVersionResponse, error) {
	if err := requireUser(req.GetUserId(), nil); err != nil {
		return nil, err
	}
	v, err := h.svc.createBackupVersion(ctx, req.GetUserId(), req.GetAlgorithm(), req.GetAuthData())
	if err != nil {
		return nil, h.e2eStatus(ctx, "CreateBackupVersion", err)
	}
	return &keyserverv1.CreateBackupVersionResponse{Version: v}, nil
}

func (h *e2eHandler) GetBackupVersion(ctx context.Context, req *keyserverv1.GetBackupVersionRequest) (*keyserverv1.BackupVersion, error) {
	b, err := h.svc.backupVersion(ctx, req.GetUserId(), req.GetVersion())
	if err != nil {
		return nil, h.e2eStatus(ctx, "GetBackupVersion", err)
	}
	return &keyserverv1.BackupVersion{Version: b.Version, Algorithm: b.Algorithm, AuthData: b.AuthData, Etag: b.Etag, Count: b.Count}, nil
}

func (h *e2eHandler) UpdateBackupVersion(ctx context.Context, req *keyserverv1.UpdateBackupVersionRequest) (*keyserverv1.UpdateBackupVersionResponse, error) {
	err := h.svc.updateBackupVersion(ctx, req.GetUserId(), req.GetVersion(), req.GetAlgorithm(), req.GetAuthData())
	if err != nil {
		return nil, h.e2eStatus(ctx, "UpdateBackupVersion", err)
	}
	return &keyserverv1.UpdateBackupVersionResponse{}, nil
}

func (h *e2eHandler) DeleteBackupVersion(ctx context.Context, req *keyserverv1.DeleteBackupVersionRequest) (*keyserverv1.DeleteBackupVersionResponse, error) {
	if err := h.svc.deleteBackupVersion(ctx, req.GetUserId(), req.GetVersion()); err != nil {
		return nil, h.e2eStatus(ctx, "DeleteBackupVersion", err)
	}
	return &keyserverv1.DeleteBackupVersionResponse{}, nil
}

func (h *e2eHandler) PutBackupKeys(ctx context.Context, req *keyserverv1.PutBackupKeysRequest) (*keyserverv1.BackupKeysTag, error) {
	keys := map[string]map[string]store.BackupKey{}
	for _, k := range req.GetKeys() {
		if keys[k.GetRoomId()] == nil {
			keys[k.GetRoomId()] = map[string]store.BackupKey{}
		}
		keys[k.GetRoomId()][k.GetSessionId()] = backupKeyFromProto(k)
	}
	etag, count, err := h.svc.putBackupKeys(ctx, req.GetUserId(), req.GetVersion(), keys)
	if err != nil {
		return nil, h.e2eStatus(ctx, "PutBackupKeys", err)
	}
	return &keyserverv1.BackupKeysTag{Etag: etag, Count: count}, nil
}

func (h *e2eHandler) GetBackupKeys(ctx context.Context, req *keyserverv1.GetBackupKeysRequest) (*keyserverv1.GetBackupKeysResponse, error) {
	keys, err := h.svc.backupKeys(ctx, req.GetUserId(), req.GetVersion(), req.GetRoomId(), req.GetSessionId())
	if err != nil {
		return nil, h.e2eStatus(ctx, "GetBackupKeys", err)
	}
	resp := &keyserverv1.GetBackupKeysResponse{}
	for room, sessions := range keys {
		for session, k := range sessions {
			resp.Keys = append(resp.Keys, backupKeyToProto(room, session, k))
		}
	}
	return resp, nil
}

func (h *e2eHandler) DeleteBackupKeys(ctx context.Context, req *keyserverv1.DeleteBackupKeysRequest) (*keyserverv1.BackupKeysTag, error) {
	etag, count, err := h.svc.deleteBackupKeys(ctx, req.GetUserId(), req.GetVersion(), req.GetRoomId(), req.GetSessionId())
	if err != nil {
		return nil, h.e2eStatus(ctx, "DeleteBackupKeys", err)
	}
	return &keyserverv1.BackupKeysTag{Etag: etag, Count: count}, nil
}

func backupKeyFromProto(k *keyserverv1.BackupKey) store.BackupKey {
	return store.BackupKey{FirstMessageIndex: k.GetFirstMessageIndex(), ForwardedCount: k.GetForwardedCount(),
		IsVerified: k.GetIsVerified(), SessionData: k.GetSessionData()}
}

func backupKeyToProto(room, session string, k store.BackupKey) *keyserverv1.BackupKey {
	return &keyserverv1.BackupKey{RoomId: room, SessionId: session, FirstMessageIndex: k.FirstMessageIndex,
		ForwardedCount: k.ForwardedCount, IsVerified: k.IsVerified, SessionData: k.SessionData}
}

// importSource names the store the client-API's keys are imported from.
const importSource = "clientapi"

// ImportKeys writes the streamed rows in one transaction, committed when
// the stream ends.
func (h *e2eHandler) ImportKeys(stream grpc.ClientStreamingServer[keyserverv1.ImportKeysRequest, keyserverv1.ImportKeysResponse]) error {
	ctx := stream.Context()
	already, rows, err := h.svc.store.Import(ctx, importSource, func(im *store.Importer) error {
		for {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := importBatch(ctx, im, req); err != nil {
				return err
			}
		}
	})
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			return err // the stream broke: nothing was stored
		}
		return h.e2eStatus(ctx, "ImportKeys", err)
	}
	if already {
		h.svc.log.Info("end-to-end keys were imported before; nothing changed")
	} else {
		h.svc.log.Info("end-to-end keys imported", zap.Int64("rows", rows))
		h.svc.publisher.poke()
	}
	return stream.SendAndClose(&keyserverv1.ImportKeysResponse{AlreadyImported: already, Rows: rows})
}

// importBatch writes one streamed batch.
func importBatch(ctx context.Context, im *store.Importer, req *keyserverv1.ImportKeysRequest) error {
	im.MinPosition(req.GetMinPosition())
	devices := make([]store.ImportedDevice, 0, len(req.GetDevices()))
	for _, d := range req.GetDevices() {
		devices = append(devices, store.ImportedDevice{UserID: d.GetUserId(), DeviceID: d.GetDeviceId(), DisplayName: d.GetDisplayName(), Keys: d.GetKeys()})
	}
	otks := make([]store.ImportedOneTimeKey, 0, len(req.GetOneTimeKeys()))
	for _, k := range req.GetOneTimeKeys() {
		otks = append(otks, store.ImportedOneTimeKey{UserID: k.GetUserId(), DeviceID: k.GetDeviceId(), Algorithm: k.GetAlgorithm(), KeyID: k.GetKeyId(), Key: k.GetKey()})
	}
	fallback := make([]store.ImportedFallbackKey, 0, len(req.GetFallbackKeys()))
	for _, k := range req.GetFallbackKeys() {
		fallback = append(fallback, store.ImportedFallbackKey{UserID: k.GetUserId(), DeviceID: k.GetDeviceId(), Algorithm: k.GetAlgorithm(),
			KeyID: k.GetKeyId(), Key: k.GetKey(), Used: k.GetUsed()})
	}
	cross := make([]store.ImportedCrossSigningKey, 0, len(req.GetCrossSigningKeys()))
	for _, k := range req.GetCrossSigningKeys() {
		cross = append(cross, store.ImportedCrossSigningKey{UserID: k.GetUserId(), KeyType: k.GetKeyType(), Keys: k.GetKeys()})
	}
	changes := make([]store.ImportedChange, 0, len(req.GetDeviceListChanges()))
	for _, c := range req.GetDeviceListChanges() {
		changes = append(changes, store.ImportedChange{Pos: c.GetPosition(), UserID: c.GetUserId()})
	}
	versions := make([]store.ImportedBackupVersion, 0, len(req.GetBackupVersions()))
	for _, v := range req.GetBackupVersions() {
		versions = append(versions, store.ImportedBackupVersion{UserID: v.GetUserId(), Version: v.GetVersion(), Algorithm: v.GetAlgorithm(),
			AuthData: v.GetAuthData(), Etag: v.GetEtag(), Deleted: v.GetDeleted()})
	}
	backupKeys := make([]store.ImportedBackupKey, 0, len(req.GetBackupKeys()))
	for _, k := range req.GetBackupKeys() {
		backupKeys = append(backupKeys, store.ImportedBackupKey{UserID: k.GetUserId(), Version: k.GetVersion(),
			RoomID: k.GetKey().GetRoomId(), Session: k.GetKey().GetSessionId(), Key: backupKeyFromProto(k.GetKey())})
	}
	for _, step := range []func() error{
		func() error { return im.Devices(ctx, devices) },
		func() error { return im.OneTimeKeys(ctx, otks) },
		func() error { return im.FallbackKeys(ctx, fallback) },
		func() error { return im.CrossSigningKeys(ctx, cross) },
		func() error { return im.Changes(ctx, changes) },
		func() error { return im.BackupVersions(ctx, versions) },
		func() error { return im.BackupKeys(ctx, backupKeys) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

func listedDevices(ds []store.ListedDevice) []*keyserverv1.ListedDevice {
	out := make([]*keyserverv1.ListedDevice, len(ds))
	for i, d := range ds {
		out[i] = &keyserverv1.ListedDevice{DeviceId: d.DeviceID, DisplayName: d.DisplayName, Keys: d.Keys}
	}
	return out
}

func (h *e2eHandler) LocalDeviceList(ctx context.Context, req *keyserverv1.LocalDeviceListRequest) (*keyserverv1.LocalDeviceListResponse, error) {
	l, err := h.svc.localDeviceList(ctx, req.GetUserId())
	if err != nil {
		return nil, h.e2eStatus(ctx, "LocalDeviceList", err)
	}
	return &keyserverv1.LocalDeviceListResponse{UserId: l.UserID, StreamId: l.StreamID, Devices: listedDevices(l.Devices),
		MasterKey: l.MasterKey, SelfSigningKey: l.SelfSigningKey}, nil
}

func (h *e2eHandler) UpdateRemoteDeviceList(ctx context.Context, req *keyserverv1.UpdateRemoteDeviceListRequest) (*keyserverv1.UpdateRemoteDeviceListResponse, error) {
	dup, stale, err := h.svc.updateRemoteDeviceList(ctx, req.GetOrigin(), store.RemoteDeviceUpdate{
		UserID: req.GetUserId(), DeviceID: req.GetDeviceId(), DisplayName: req.GetDisplayName(), StreamID: req.GetStreamId(),
		PrevIDs: req.GetPrevIds(), Deleted: req.GetDeleted(), Keys: req.GetKeys(),
	})
	if err != nil {
		return nil, h.e2eStatus(ctx, "UpdateRemoteDeviceList", err)
	}
	return &keyserverv1.UpdateRemoteDeviceListResponse{Duplicate: dup, Stale: stale}, nil
}

func (h *e2eHandler) UpdateRemoteSigningKeys(ctx context.Context, req *keyserverv1.UpdateRemoteSigningKeysRequest) (*keyserverv1.UpdateRemoteSigningKeysResponse, error) {
	if err := h.svc.updateRemoteSigningKeys(ctx, req.GetOrigin(), req.GetUserId(), req.GetMasterKey(), req.GetSelfSigningKey()); err != nil {
		return nil, h.e2eStatus(ctx, "UpdateRemoteSigningKeys", err)
	}
	return &keyserverv1.UpdateRemoteSigningKeysResponse{}, nil
}

func (h *e2eHandler) MarkRemoteDeviceListStale(ctx context.Context, req *keyserverv1.MarkRemoteDeviceListStaleRequest) (*keyserverv1.MarkRemoteDeviceListStaleResponse, error) {
	if err := h.svc.markRemoteDeviceListsStale(ctx, req.GetUserIds()); err != nil {
		return nil, h.e2eStatus(ctx, "MarkRemoteDeviceListStale", err)
	}
	return &keyserverv1.MarkRemoteDeviceListStaleResponse{}, nil
}

func (h *e2eHandler) SetRemoteDeviceList(ctx context.Context, req *keyserverv1.SetRemoteDeviceListRequest) (*keyserverv1.SetRemoteDeviceListResponse, error) {
	l := store.DeviceList{UserID: req.GetUserId(), StreamID: req.GetStreamId(), MasterKey: req.GetMasterKey(), SelfSigningKey: req.GetSelfSigningKey()}
	for _, d := range req.GetDevices() {
		l.Devices = append(l.Devices, store.ListedDevice{DeviceID: d.GetDeviceId(), DisplayName: d.GetDisplayName(), Keys: d.GetKeys()})
	}
	replaced, err := h.svc.setRemoteDeviceList(ctx, l)
	if err != nil {
		return nil, h.e2eStatus(ctx, "SetRemoteDeviceList", err)
	}
	return &keyserverv1.SetRemoteDeviceListResponse{Replaced: replaced}, nil
}

func (h *e2eHandler) QueryRemoteDeviceLists(ctx context.Context, req *keyserverv1.QueryRemoteDeviceListsRequest) (*keyserverv1.QueryRemoteDeviceListsResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	if len(req.GetUserIds()) == 0 && !req.GetStaleOnly() {
		return nil, h.e2eStatus(ctx, "QueryRemoteDeviceLists", fmt.Errorf("%w: user_ids or stale_only", ErrMissingParam))
	}
	lists, err := h.svc.store.RemoteDeviceLists(ctx, req.GetUserIds(), req.GetStaleOnly(), limit)
	if err != nil {
		return nil, h.e2eStatus(ctx, "QueryRemoteDeviceLists", err)
	}
	resp := &keyserverv1.QueryRemoteDeviceListsResponse{}
	for _, l := range lists {
		resp.Lists = append(resp.Lists, &keyserverv1.RemoteDeviceList{UserId: l.UserID, StreamId: l.StreamID, Stale: l.Stale,
			Devices: listedDevices(l.Devices), MasterKey: l.MasterKey, SelfSigningKey: l.SelfSigningKey})
	}
	return resp, nil
}
