package users

import (
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// listDevices is GET /devices.
func (s *Accounts) listDevices(r *http.Request, dev *httpapi.Device) (any, error) {
	devs, err := s.accounts.Devices(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"devices": devs}, nil
}

// deviceIDParam reads {deviceId}.
func deviceIDParam(r *http.Request) (string, error) {
	id, err := httpapi.PathParam(r, "deviceId")
	if err != nil {
		return "", err
	}
	if id == "" || len(id) > 255 {
		return "", matrixhttp.InvalidParam("Invalid device ID")
	}
	return id, nil
}

// errNoDevice: another user's device is as unknown as a missing one.
func errNoDevice() error { return matrixhttp.NotFound("Unknown device") }

// getDevice is GET /devices/{deviceId}. Only the caller's own devices
// exist for them: another user's device ID is 404.
func (s *Accounts) getDevice(r *http.Request, dev *httpapi.Device) (any, error) {
	id, err := deviceIDParam(r)
	if err != nil {
		return nil, err
	}
	d, err := s.accounts.Device(r.Context(), dev.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoDevice()
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// putDevice is PUT /devices/{deviceId}: renames a device, or, for an
// application service, creates it when the user has no such device.
func (s *Accounts) putDevice(r *http.Request, dev *httpapi.Device) (any, error) {
	id, err := deviceIDParam(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	if req.DisplayName != nil && len(*req.DisplayName) > 512 {
		return nil, matrixhttp.InvalidParam("display_name too long")
	}
	if dev.Appservice != nil {
		// Application services create their users' devices this way
		// (spec v1.17, "Device management").
		created, err := s.accounts.CreateDevice(r.Context(), dev.UserID, id, req.DisplayName)
		if err != nil {
			return nil, err
		}
		if created {
			// "When a new device was created, the homeserver MUST return
			// a 201 HTTP status code" (device_management.yaml).
			return httpapi.Created{Body: struct{}{}}, nil
		}
	}
	if req.DisplayName == nil {
		// Nothing to change, but the device must still exist.
		_, err = s.accounts.Device(r.Context(), dev.UserID, id)
	} else {
		if len(*req.DisplayName) > 512 {
			return nil, matrixhttp.InvalidParam("display_name too long")
		}
		err = s.accounts.SetDeviceDisplayName(r.Context(), dev.UserID, id, req.DisplayName)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNoDevice()
	}
	if err != nil {
		return nil, err
	}
	if req.DisplayName != nil {
		s.keys.SendForRequest(r.Context(), dev.UserID) // the key-server shows the name with the keys
	}
	return struct{}{}, nil
}

// deleteDevice is DELETE /devices/{deviceId}, behind user-interactive auth.
func (s *Accounts) deleteDevice(r *http.Request, dev *httpapi.Device) (any, error) {
	id, err := deviceIDParam(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Auth *AuthData `json:"auth"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	// Check existence before asking for a password: a 404 is the answer
	// whatever the auth.
	if _, err := s.accounts.Device(r.Context(), dev.UserID, id); errors.Is(err, store.ErrNotFound) {
		return nil, errNoDevice()
	} else if err != nil {
		return nil, err
	}
	return s.deleteDevicesUIA(r, dev, req.Auth, []string{id})
}

// deleteDevicesBulk is POST /delete_devices, behind user-interactive auth.
// Unknown device IDs are ignored, as the spec says.
func (s *Accounts) deleteDevicesBulk(r *http.Request, dev *httpapi.Device) (any, error) {
	var req struct {
		Auth    *AuthData `json:"auth"`
		Devices []string  `json:"devices"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.Devices == nil {
		return nil, matrixhttp.MissingParam("devices is required")
	}
	return s.deleteDevicesUIA(r, dev, req.Auth, req.Devices)
}

// Application services delete without it (spec v1.17, "Device
// management").
func (s *Accounts) deleteDevicesUIA(r *http.Request, dev *httpapi.Device, auth *AuthData, ids []string) (any, error) {
	ctx := r.Context()
	var sess accounts.UIASession
	if dev.Appservice == nil {
		var err error
		if sess, err = s.RunUIA(ctx, purposeDeleteDevices, dev.UserID, auth); err != nil {
			return nil, err
		}
	}
	if err := s.accounts.DeleteDevices(ctx, dev.UserID, ids); err != nil {
		return nil, err
	}
	s.keys.SendForRequest(ctx, dev.UserID)
	if dev.Appservice == nil {
		if err := s.FinishUIA(ctx, sess); err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}
