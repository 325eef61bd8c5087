package keys

// Keys of other servers' users: /keys/query and /keys/claim ask their
// servers through the federation sender (QueryKeys, ClaimKeys: every
// server concerned in parallel, each answering only for its own users),
// and merge the answers into the response; a server that could not be
// asked is reported under failures, as the spec describes.

import (
	"context"
	"encoding/json"
	"time"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// remoteTimeout is the per-server wait: the request's timeout (ms),
// default 10 s, capped at a minute.
func remoteTimeout(ms int64) int64 {
	if ms <= 0 {
		return (10 * time.Second).Milliseconds()
	}
	return min(ms, time.Minute.Milliseconds())
}

// remoteFailures adds the sender's failures (server → JSON object).
func remoteFailures(in map[string][]byte, failures map[string]any) {
	for server, raw := range in {
		var obj map[string]any
		if json.Unmarshal(raw, &obj) != nil {
			obj = map[string]any{"message": string(raw)}
		}
		failures[server] = obj
	}
}

// queryRemoteKeys asks the users' servers for their device and
// cross-signing keys and adds them to the response's maps.
func (s *Service) queryRemoteKeys(ctx context.Context, users map[string][]string, timeoutMS int64,
	deviceKeys map[string]map[string]json.RawMessage, master, self map[string]json.RawMessage, failures map[string]any) error {
	want := map[string][]string{}
	for u, devices := range users {
		if devices == nil {
			devices = []string{}
		}
		want[u] = devices
	}
	body, err := json.Marshal(want)
	if err != nil {
		return err
	}
	resp, err := s.fed.QueryKeys(ctx, &fedsenderv1.QueryKeysRequest{DeviceKeys: body, TimeoutMs: remoteTimeout(timeoutMS)})
	if err != nil {
		return httpapi.FromRemote(ctx, s.log, "QueryKeys", err)
	}
	var got struct {
		DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
		MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
		SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	}
	if len(resp.GetResponse()) > 0 {
		if err := json.Unmarshal(resp.GetResponse(), &got); err != nil {
			return err
		}
	}
	for u, devices := range got.DeviceKeys {
		if _, asked := users[u]; asked {
			deviceKeys[u] = devices
		}
	}
	for u, k := range got.MasterKeys {
		if _, asked := users[u]; asked {
			master[u] = k
		}
	}
	for u, k := range got.SelfSigningKeys {
		if _, asked := users[u]; asked {
			self[u] = k
		}
	}
	remoteFailures(resp.GetFailures(), failures)
	return nil
}

// claimRemoteKeys claims one-time keys of the users' devices from their
// servers and adds them to claimed.
func (s *Service) claimRemoteKeys(ctx context.Context, users map[string]map[string]string, timeoutMS int64,
	claimed map[string]map[string]map[string]json.RawMessage, failures map[string]any) error {
	body, err := json.Marshal(users)
	if err != nil {
		return err
	}
	resp, err := s.fed.ClaimKeys(ctx, &fedsenderv1.ClaimKeysRequest{OneTimeKeys: body, TimeoutMs: remoteTimeout(timeoutMS)})
	if err != nil {
		return httpapi.FromRemote(ctx, s.log, "ClaimKeys", err)
	}
	var got struct {
		OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	}
	if len(resp.GetResponse()) > 0 {
		if err := json.Unmarshal(resp.GetResponse(), &got); err != nil {
			return err
		}
	}
	for u, devices := range got.OneTimeKeys {
		if _, asked := users[u]; asked {
			claimed[u] = devices
		}
	}
	remoteFailures(resp.GetFailures(), failures)
	return nil
}
