package keyserver

// Server-side key backups (client-server API, "Server-side key backups").
// The data stays opaque (store/keybackup.go): the key-server only compares
// the metadata of two keys for one session to keep the better one, and
// accepts writes to the user's latest version only.

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// errNoVersion is the answer for a backup version that does not exist.
func errNoVersion() error { return refuse(ErrMissing, "No such backup version") }

// checkBackupVersion checks what a version is created or updated with.
func checkBackupVersion(algorithm string, authData []byte) error {
	if algorithm == "" {
		return refuse(ErrMissingParam, "algorithm is required")
	}
	var obj map[string]json.RawMessage
	if len(authData) == 0 || authData[0] != '{' || json.Unmarshal(authData, &obj) != nil {
		return refuse(ErrBadJSON, "auth_data must be an object")
	}
	return nil
}

func (s *Service) createBackupVersion(ctx context.Context, userID, algorithm string, authData []byte) (int64, error) {
	if err := checkBackupVersion(algorithm, authData); err != nil {
		return 0, err
	}
	return s.store.CreateBackupVersion(ctx, userID, algorithm, authData)
}

func (s *Service) backupVersion(ctx context.Context, userID string, version int64) (store.BackupVersion, error) {
	b, err := s.store.BackupVersionInfo(ctx, userID, version)
	if errors.Is(err, store.ErrNoBackup) {
		return b, errNoVersion()
	}
	return b, err
}

func (s *Service) updateBackupVersion(ctx context.Context, userID string, version int64, algorithm string, authData []byte) error {
	if err := checkBackupVersion(algorithm, authData); err != nil {
		return err
	}
	err := s.store.UpdateBackupAuthData(ctx, userID, version, algorithm, authData)
	switch {
	case errors.Is(err, store.ErrNoBackup):
		return errNoVersion()
	case errors.Is(err, store.ErrBackupAlgorithm):
		return refuse(ErrInvalidParam, "algorithm differs from the backup's")
	}
	return err
}

func (s *Service) deleteBackupVersion(ctx context.Context, userID string, version int64) error {
	if err := s.store.DeleteBackupVersion(ctx, userID, version); errors.Is(err, store.ErrNoBackup) {
		return errNoVersion()
	} else if err != nil {
		return err
	}
	return nil
}

// putBackupKeys stores keys (room → session → key) in the latest version.
// A version that is not the latest is a store.ErrWrongBackupVersion
// naming the latest; when there is none at all, ErrMissing.
func (s *Service) putBackupKeys(ctx context.Context, userID string, version int64, keys map[string]map[string]store.BackupKey) (etag, count int64, err error) {
	for _, sessions := range keys {
		for _, k := range sessions {
			var obj map[string]json.RawMessage
			if len(k.SessionData) == 0 || k.SessionData[0] != '{' || json.Unmarshal(k.SessionData, &obj) != nil {
				return 0, 0, refuse(ErrBadJSON, "session_data must be an object")
			}
		}
	}
	etag, count, err = s.store.PutBackupKeys(ctx, userID, version, keys)
	var wrong store.ErrWrongBackupVersion
	if errors.As(err, &wrong) && wrong.Current == 0 {
		return 0, 0, refuse(ErrMissing, "No backup version exists")
	}
	return etag, count, err
}

// backupKeys returns a version's keys: all, one room's, or one session's
// (ErrMissing when that session has no key).
func (s *Service) backupKeys(ctx context.Context, userID string, version int64, room, session string) (map[string]map[string]store.BackupKey, error) {
	keys, err := s.store.BackupKeys(ctx, userID, version, room, session)
	if errors.Is(err, store.ErrNoBackup) {
		return nil, errNoVersion()
	} else if err != nil {
		return nil, err
	}
	if session != "" {
		if _, ok := keys[room][session]; !ok {
			return nil, refuse(ErrMissing, "No key for this session in the backup")
		}
	}
	return keys, nil
}

func (s *Service) deleteBackupKeys(ctx context.Context, userID string, version int64, room, session string) (etag, count int64, err error) {
	etag, count, err = s.store.DeleteBackupKeys(ctx, userID, version, room, session)
	if errors.Is(err, store.ErrNoBackup) {
		return 0, 0, errNoVersion()
	}
	return etag, count, err
}
