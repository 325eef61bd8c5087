package keys

// Users' end-to-end keys and key backups used to live in the client-API's
// own tables (migrations 034 and 035). They belong to the key-server now.
// A server upgraded from then still has rows there, so at start the
// client-API hands them over through the key-server's ImportKeys (one
// stream, committed by the key-server as one transaction; done once, so a
// retry after a lost answer changes nothing) and then drops its tables.
// Until that is done the key endpoints answer 503, /sync leaves the key
// data out, and the service is not ready (/readyz). A fresh database's
// tables are empty: they are dropped at once, without the key-server.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// ErrKeysNotHandedOver is what Ready reports until the old key tables are
// handed over to the key-server.
var ErrKeysNotHandedOver = errors.New("end-to-end keys: hand-over to the key-server not done")

// importTimeout bounds one hand-over attempt.
const importTimeout = 10 * time.Minute

// needKeys wraps a key endpoint: 503 until the keys are in the
// key-server, or when there is no key-server.
func (s *Service) needKeys(h httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(r *http.Request, dev *httpapi.Device) (any, error) {
		if !s.keys.available() {
			return nil, httpapi.UnknownError(http.StatusServiceUnavailable, "End-to-end keys are not available yet")
		}
		return h(r, dev)
	}
}

// handOver retries the hand-over until it is done or ctx ends.
func (k *Bridge) HandOver(ctx context.Context) {
	wait := time.Second
	for !k.ready.Load() {
		err := k.handOverOnce(ctx)
		if err == nil {
			k.ready.Store(true)
			return
		}
		if ctx.Err() != nil {
			return
		}
		k.log.Warn("handing the end-to-end keys over to the key-server failed; retrying", zap.Error(err), zap.Duration("in", wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// handOverOnce streams the old tables' rows to the key-server and drops
// the tables once it has committed them.
func (k *Bridge) handOverOnce(ctx context.Context) error {
	if k.e2e == nil {
		return errors.New("no key-server configured")
	}
	// The key-server must answer before the hand-over's transaction
	// starts: a stream waits for it without a deadline.
	if _, err := k.e2e.KeyChanges(ctx, &keyserverv1.KeyChangesRequest{}); err != nil {
		return fmt.Errorf("key-server: %w", err)
	}
	var stream keyserverv1.E2EKeyService_ImportKeysClient
	// A stream has no default deadline; this bounds one attempt (the
	// import is one key-server transaction).
	streamCtx, cancel := context.WithTimeout(ctx, importTimeout)
	defer cancel()
	send := func(b store.KeyExport) error {
		if stream == nil {
			var err error
			if stream, err = k.e2e.ImportKeys(streamCtx); err != nil {
				return err
			}
		}
		if err := stream.Send(exportToProto(b)); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		// io.EOF: the key-server answered already (an earlier import);
		// CloseAndRecv has its answer.
		return nil
	}
	var resp *keyserverv1.ImportKeysResponse
	commit := func() error {
		if stream == nil {
			return nil
		}
		var err error
		resp, err = stream.CloseAndRecv()
		return err
	}
	found, rows, err := k.store.HandOverKeys(ctx, send, commit)
	if err != nil {
		return fmt.Errorf("hand over: %w", err)
	}
	switch {
	case resp != nil && resp.GetAlreadyImported():
		k.log.Info("end-to-end keys were in the key-server already; old tables dropped")
	case resp != nil:
		k.log.Info("end-to-end keys handed over to the key-server; old tables dropped", zap.Int("rows", rows), zap.Int64("stored", resp.GetRows()))
	case found:
		k.log.Info("old end-to-end key tables were empty; dropped")
	}
	return nil
}

// exportToProto is one ImportKeys batch.
func exportToProto(b store.KeyExport) *keyserverv1.ImportKeysRequest {
	req := &keyserverv1.ImportKeysRequest{MinPosition: b.MinPosition}
	for _, d := range b.Devices {
		req.Devices = append(req.Devices, &keyserverv1.ImportedDevice{UserId: d.UserID, DeviceId: d.DeviceID, Keys: d.Keys, DisplayName: d.DisplayName})
	}
	for _, k := range b.OneTimeKeys {
		req.OneTimeKeys = append(req.OneTimeKeys, &keyserverv1.ImportedOneTimeKey{UserId: k.UserID, DeviceId: k.DeviceID, Algorithm: k.Algorithm, KeyId: k.KeyID, Key: k.Key})
	}
	for _, k := range b.FallbackKeys {
		req.FallbackKeys = append(req.FallbackKeys, &keyserverv1.ImportedFallbackKey{UserId: k.UserID, DeviceId: k.DeviceID,
			Algorithm: k.Algorithm, KeyId: k.KeyID, Key: k.Key, Used: k.Used})
	}
	for _, k := range b.CrossSigningKeys {
		req.CrossSigningKeys = append(req.CrossSigningKeys, &keyserverv1.ImportedCrossSigningKey{UserId: k.UserID, KeyType: k.KeyType, Keys: k.Keys})
	}
	for _, c := range b.Changes {
		req.DeviceListChanges = append(req.DeviceListChanges, &keyserverv1.ImportedDeviceListChange{Position: c.Pos, UserId: c.UserID})
	}
	for _, v := range b.BackupVersions {
		req.BackupVersions = append(req.BackupVersions, &keyserverv1.ImportedBackupVersion{UserId: v.UserID, Version: v.Version,
			Algorithm: v.Algorithm, AuthData: v.AuthData, Etag: v.Etag, Deleted: v.Deleted})
	}
	for _, k := range b.BackupKeys {
		req.BackupKeys = append(req.BackupKeys, &keyserverv1.ImportedBackupKey{UserId: k.UserID, Version: k.Version, Key: &keyserverv1.BackupKey{
			RoomId: k.RoomID, SessionId: k.SessionID, FirstMessageIndex: k.FirstMessageIndex, ForwardedCount: k.ForwardedCount,
			IsVerified: k.IsVerified, SessionData: k.SessionData}})
	}
	return req
}

// errKeysToImport: the old key tables hold rows.
var errKeysToImport = errors.New("old key tables hold rows")

// dropEmptyTables marks the keys ready when the old key tables are gone,
// or drops them when they are empty (a fresh database); otherwise Run
// hands them over (handOver).
func (k *Bridge) DropEmptyTables(ctx context.Context) error {
	exists, err := k.store.OldKeyTablesExist(ctx)
	if err != nil {
		return err
	}
	if exists {
		_, _, err = k.store.HandOverKeys(ctx, func(store.KeyExport) error { return errKeysToImport }, func() error { return nil })
		if errors.Is(err, errKeysToImport) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("drop the old key tables: %w", err)
		}
		k.log.Info("old end-to-end key tables were empty; dropped")
	}
	k.ready.Store(true)
	return nil
}
