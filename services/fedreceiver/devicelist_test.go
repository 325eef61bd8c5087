package fedreceiver_test

import (
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// TestDeviceListResync: an m.device_list_update the key-server cannot
// apply in order (the first of a list it does not hold, or one whose
// prev_id it has not seen) makes the list stale, and the receiver
// refetches the whole list with /user/devices from the user's server
// (server-server API, "Device Management"): the list is then the
// server's, no longer stale. An update in order needs no refetch; a
// refetch that fails leaves the list stale.
func TestDeviceListResync(t *testing.T) {
	e := newEnv(t, nil)
	bob := e.remote.User("bob")
	device := func(id string) fclient.RespUserDevice {
		return fclient.RespUserDevice{DeviceID: id, DisplayName: "bob's " + id, Keys: fclient.RespUserDeviceKeys{
			UserID: bob, DeviceID: id, Algorithms: []string{"m.olm.v1.curve25519-aes-sha2"},
			Keys: map[gomatrixserverlib.KeyID]spec.Base64Bytes{gomatrixserverlib.KeyID("ed25519:" + id): spec.Base64Bytes("key-" + id)}}}
	}
	setDevices := func(streamID int64, ids ...string) {
		devs := fclient.RespUserDevices{UserID: bob, StreamID: streamID}
		for _, id := range ids {
			devs.Devices = append(devs.Devices, device(id))
		}
		e.remote.Mu.Lock()
		e.remote.Devices[bob] = devs
		e.remote.Mu.Unlock()
	}
	update := func(streamID int64, prev []int64, deviceID string) {
		t.Helper()
		if status, _ := e.remote.Send(nil, edu(t, "m.device_list_update", map[string]any{"user_id": bob, "device_id": deviceID,
			"stream_id": streamID, "prev_id": prev, "keys": device(deviceID).Keys})); status != 200 {
			t.Fatalf("send m.device_list_update %d: %d", streamID, status)
		}
	}
	list := func() *keyserverv1.RemoteDeviceList {
		t.Helper()
		lists, err := e.e2e.QueryRemoteDeviceLists(e.ctx, &keyserverv1.QueryRemoteDeviceListsRequest{UserIds: []string{bob}})
		if err != nil || len(lists.GetLists()) != 1 {
			t.Fatalf("bob's list: %v %v", lists, err)
		}
		return lists.GetLists()[0]
	}
	check := func(what string, stale bool, streamID int64, ids ...string) {
		t.Helper()
		l := list()
		var got []string
		for _, d := range l.GetDevices() {
			got = append(got, d.GetDeviceId())
			if !stale && len(d.GetKeys()) == 0 {
				t.Fatalf("%s: device %s without keys", what, d.GetDeviceId())
			}
		}
		slices.Sort(got)
		if l.GetStale() != stale || l.GetStreamId() != streamID || !slices.Equal(got, ids) {
			t.Fatalf("%s: devices %v stream %d stale %t; want %v stream %d stale %t", what, got, l.GetStreamId(), l.GetStale(), ids, streamID, stale)
		}
	}

	// The first update of a list not held: refetched.
	setDevices(3, "PHONE", "TABLET")
	update(3, nil, "TABLET")
	check("after the first update", false, 3, "PHONE", "TABLET")
	if n := e.remote.Called("user_devices"); n != 1 {
		t.Fatalf("/user/devices asked %d times, want 1", n)
	}
	// In order (prev_id seen): applied, not refetched.
	update(4, []int64{3}, "LAPTOP")
	check("after an update in order", false, 4, "LAPTOP", "PHONE", "TABLET")
	if n := e.remote.Called("user_devices"); n != 1 {
		t.Fatalf("/user/devices asked %d times for an update in order", n)
	}
	// A gap (prev_id 6 never seen): refetched; the server's list wins.
	setDevices(7, "LAPTOP", "WATCH")
	update(7, []int64{6}, "WATCH")
	check("after a gap", false, 7, "LAPTOP", "WATCH")
	if n := e.remote.Called("user_devices"); n != 2 {
		t.Fatalf("/user/devices asked %d times, want 2", n)
	}
	// A refetch that fails leaves the list stale (with the update).
	e.remote.SetBehaviour("user_devices", "error")
	update(10, []int64{9}, "DESKTOP")
	check("after a failed refetch", true, 10, "DESKTOP", "LAPTOP", "WATCH")
	// The next gap refetches again.
	e.remote.SetBehaviour("user_devices", "")
	setDevices(12, "DESKTOP")
	update(12, []int64{11}, "DESKTOP")
	check("after the next gap", false, 12, "DESKTOP")
}
