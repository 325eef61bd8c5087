package push

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Pushers (GET /pushers, POST /pushers/set). Delivery to the pushers'
// push gateways is internal/pushgateway's.

// pusherJSON is a pusher as GET /pushers shows it.
type pusherJSON struct {
	PushKey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
}

func (s *Service) getPushers(r *http.Request, dev *httpapi.Device) (any, error) {
	ps, err := s.store.Pushers(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	out := make([]pusherJSON, 0, len(ps))
	for _, p := range ps {
		out = append(out, pusherJSON{
			PushKey: p.PushKey, Kind: p.Kind, AppID: p.AppID, AppDisplayName: p.AppDisplayName,
			DeviceDisplayName: p.DeviceDisplayName, ProfileTag: p.ProfileTag, Lang: p.Lang, Data: p.Data,
		})
	}
	return map[string]any{"pushers": out}, nil
}

// setPusher is POST /pushers/set: create or update (kind set) or delete
// (kind null) the caller's pusher for (app_id, pushkey).
func (s *Service) setPusher(r *http.Request, dev *httpapi.Device) (any, error) {
	var body struct {
		PushKey           *string         `json:"pushkey"`
		Kind              json.RawMessage `json:"kind"`
		AppID             *string         `json:"app_id"`
		AppDisplayName    *string         `json:"app_display_name"`
		DeviceDisplayName *string         `json:"device_display_name"`
		ProfileTag        string          `json:"profile_tag"`
		Lang              *string         `json:"lang"`
		Data              json.RawMessage `json:"data"`
		Append            bool            `json:"append"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
		return nil, err
	}
	var missing []string
	for name, absent := range map[string]bool{"kind": body.Kind == nil, "app_id": body.AppID == nil, "pushkey": body.PushKey == nil} {
		if absent {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, matrixhttp.MissingParam("Missing parameters: " + strings.Join(missing, ", "))
	}
	switch {
	case *body.AppID == "" || len(*body.AppID) > 64:
		return nil, matrixhttp.InvalidParam("app_id must be 1 to 64 characters")
	case *body.PushKey == "" || len(*body.PushKey) > 512:
		return nil, matrixhttp.InvalidParam("pushkey must be 1 to 512 bytes")
	}
	ctx := r.Context()
	if string(body.Kind) == "null" {
		if err := s.store.DeletePusher(ctx, dev.UserID, *body.AppID, *body.PushKey); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	}
	var kind string
	if json.Unmarshal(body.Kind, &kind) != nil {
		return nil, matrixhttp.BadJSON("kind must be a string or null")
	}
	if kind != "http" {
		return nil, matrixhttp.InvalidParam("Unsupported pusher kind " + kind + ": only http pushers are supported")
	}
	for name, absent := range map[string]bool{
		"app_display_name": body.AppDisplayName == nil, "device_display_name": body.DeviceDisplayName == nil,
		"lang": body.Lang == nil, "data": body.Data == nil,
	} {
		if absent {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, matrixhttp.MissingParam("Missing parameters: " + strings.Join(missing, ", "))
	}
	var data map[string]any
	if json.Unmarshal(body.Data, &data) != nil || data == nil {
		return nil, matrixhttp.BadJSON("data must be an object")
	}
	rawURL, ok := data["url"].(string)
	if !ok {
		return nil, matrixhttp.MissingParam("data.url is required for http pushers")
	}
	// The spec asks for HTTPS; plain HTTP is accepted for gateways on a
	// private network (and tests).
	if u, err := url.Parse(rawURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Path != pushGatewayPath {
		return nil, matrixhttp.InvalidParam("data.url must be an http(s) URL with the path " + pushGatewayPath)
	}
	if f, present := data["format"]; present {
		if _, ok := f.(string); !ok {
			return nil, matrixhttp.InvalidParam("data.format must be a string")
		}
	}
	err := s.store.SetPusher(ctx, store.Pusher{
		UserID: dev.UserID, AppID: *body.AppID, PushKey: *body.PushKey, Kind: kind,
		AppDisplayName: *body.AppDisplayName, DeviceDisplayName: *body.DeviceDisplayName, ProfileTag: body.ProfileTag,
		Lang: *body.Lang, Data: body.Data, PushKeyTS: s.now().Unix(), DeviceID: dev.DeviceID,
	}, body.Append)
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

const pushGatewayPath = "/_matrix/push/v1/notify"

// Pushers lists a user's pushers (GET /pushers; the UserService's
// ListPushers).
func (s *Service) Pushers(ctx context.Context, userID string) ([]store.Pusher, error) {
	return s.store.Pushers(ctx, userID)
}
