package keyserver_test

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// TestRemoteDeviceLists: m.device_list_update EDUs of another server's
// user are applied in order; a repeat changes nothing; a gap in prev_id
// (or a first update of a list not held) marks the list stale until a
// resync (SetRemoteDeviceList) replaces it; an older resync does not
// replace a newer list; updates about this server's users, or from
// another server than the user's, are refused.
func TestRemoteDeviceLists(t *testing.T) {
	ctx := context.Background()
	ks := startE2E(t, testkit.Postgres(t), nil).client
	const bob = "@bob:remote.test"
	update := func(streamID int64, prev []int64, device string, deleted bool) *keyserverv1.UpdateRemoteDeviceListResponse {
		t.Helper()
		resp, err := ks.UpdateRemoteDeviceList(ctx, &keyserverv1.UpdateRemoteDeviceListRequest{Origin: "remote.test", UserId: bob,
			DeviceId: device, DisplayName: device + " name", StreamId: streamID, PrevIds: prev, Deleted: deleted,
			Keys: []byte(`{"user_id":"` + bob + `","device_id":"` + device + `","keys":{}}`)})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	list := func() *keyserverv1.RemoteDeviceList {
		t.Helper()
		resp, err := ks.QueryRemoteDeviceLists(ctx, &keyserverv1.QueryRemoteDeviceListsRequest{UserIds: []string{bob}})
		if err != nil || len(resp.GetLists()) != 1 {
			t.Fatalf("lists: %v %v", resp, err)
		}
		return resp.GetLists()[0]
	}
	devices := func(l *keyserverv1.RemoteDeviceList) []string {
		var out []string
		for _, d := range l.GetDevices() {
			out = append(out, d.GetDeviceId())
		}
		return out
	}
	// changedSince lists the users /sync's device_lists.changed would
	// name after position after, and the position now.
	changedSince := func(after int64) ([]string, int64) {
		t.Helper()
		st, err := ks.SyncKeys(ctx, &keyserverv1.SyncKeysRequest{UserId: alice, DeviceId: "D", After: after, WithChanges: true})
		if err != nil {
			t.Fatal(err)
		}
		return st.GetChangedUserIds(), st.GetPosition()
	}
	_, start := changedSince(0)
	// First update of a list not held: stale (only one device is known).
	if r := update(1, nil, "A", false); !r.GetStale() || r.GetDuplicate() {
		t.Fatalf("first update: %+v", r)
	}
	// The remote user's change is in the change log /sync reads.
	changed, pos := changedSince(start)
	if !slices.Equal(changed, []string{bob}) {
		t.Fatalf("changed after the first update: %v", changed)
	}
	if stale, err := ks.QueryRemoteDeviceLists(ctx, &keyserverv1.QueryRemoteDeviceListsRequest{StaleOnly: true}); err != nil || len(stale.GetLists()) != 1 {
		t.Fatalf("stale lists: %v %v", stale, err)
	}
	// The resync: the whole list.
	set, err := ks.SetRemoteDeviceList(ctx, &keyserverv1.SetRemoteDeviceListRequest{UserId: bob, StreamId: 3,
		Devices: []*keyserverv1.ListedDevice{{DeviceId: "A"}, {DeviceId: "B"}}, MasterKey: []byte(`{"user_id":"` + bob + `"}`)})
	if err != nil || !set.GetReplaced() {
		t.Fatalf("resync: %v %v", set, err)
	}
	if l := list(); l.GetStale() || len(devices(l)) != 2 || l.GetStreamId() != 3 || len(l.GetMasterKey()) == 0 {
		t.Fatalf("after the resync: %+v", l)
	}
	// In order: applied.
	if r := update(4, []int64{3}, "C", false); r.GetStale() || r.GetDuplicate() {
		t.Fatalf("update 4: %+v", r)
	}
	if r := update(5, []int64{4}, "A", true); r.GetStale() {
		t.Fatalf("update 5: %+v", r)
	}
	if l := list(); len(devices(l)) != 2 || devices(l)[0] != "B" || devices(l)[1] != "C" || l.GetStale() {
		t.Fatalf("after 4 and 5: %v", devices(l))
	}
	// Repeats and older updates change nothing (nor the change log).
	_, pos = changedSince(pos)
	if r := update(5, []int64{4}, "A", true); !r.GetDuplicate() {
		t.Fatalf("repeat: %+v", r)
	}
	if r := update(2, nil, "Z", false); !r.GetDuplicate() {
		t.Fatalf("older: %+v", r)
	}
	if changed, _ := changedSince(pos); len(changed) != 0 {
		t.Fatalf("changed after duplicates: %v", changed)
	}
	// A gap: 7 after 5, missing 6.
	if r := update(7, []int64{6}, "D", false); !r.GetStale() {
		t.Fatalf("a gap should mark the list stale: %+v", r)
	}
	// An older resync does not replace a newer list unless it is stale;
	// this one is stale, so it does.
	if set, err := ks.SetRemoteDeviceList(ctx, &keyserverv1.SetRemoteDeviceListRequest{UserId: bob, StreamId: 7,
		Devices: []*keyserverv1.ListedDevice{{DeviceId: "B"}, {DeviceId: "C"}, {DeviceId: "D"}}}); err != nil || !set.GetReplaced() {
		t.Fatalf("resync of a stale list: %v %v", set, err)
	}
	if set, err := ks.SetRemoteDeviceList(ctx, &keyserverv1.SetRemoteDeviceListRequest{UserId: bob, StreamId: 6}); err != nil || set.GetReplaced() {
		t.Fatalf("an older resync replaced a newer list: %v %v", set, err)
	}
	if l := list(); len(devices(l)) != 3 || l.GetStale() {
		t.Fatalf("final list: %v stale %t", devices(l), l.GetStale())
	}
	// Refused: this server's user, another server's EDU, a key filed
	// under another device.
	for _, req := range []*keyserverv1.UpdateRemoteDeviceListRequest{
		{Origin: "example.test", UserId: alice, DeviceId: "X", StreamId: 1},
		{Origin: "evil.test", UserId: bob, DeviceId: "X", StreamId: 9},
		{Origin: "remote.test", UserId: bob, DeviceId: "X", StreamId: 9, Keys: []byte(`{"device_id":"Y"}`)},
		{Origin: "remote.test", UserId: bob, StreamId: 9},
	} {
		if _, err := ks.UpdateRemoteDeviceList(ctx, req); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.NotFound {
			t.Errorf("%+v: %v", req, err)
		}
	}
	if _, err := ks.UpdateRemoteSigningKeys(ctx, &keyserverv1.UpdateRemoteSigningKeysRequest{Origin: "remote.test", UserId: bob,
		SelfSigningKey: []byte(`{"user_id":"` + bob + `","usage":["self_signing"]}`)}); err != nil {
		t.Fatal(err)
	}
	if l := list(); len(l.GetSelfSigningKey()) == 0 {
		t.Fatal("self-signing key not kept")
	}
	if _, err := ks.MarkRemoteDeviceListStale(ctx, &keyserverv1.MarkRemoteDeviceListStaleRequest{UserIds: []string{bob}}); err != nil {
		t.Fatal(err)
	}
	if !list().GetStale() {
		t.Fatal("not marked stale")
	}
}

// TestLocalDeviceList: /user/devices' view of a local user: devices with
// their names and keys, the stream ID of the latest device change, and
// the cross-signing keys.
func TestLocalDeviceList(t *testing.T) {
	ctx := context.Background()
	ks := startE2E(t, testkit.Postgres(t), nil).client
	empty, err := ks.LocalDeviceList(ctx, &keyserverv1.LocalDeviceListRequest{UserId: alice})
	if err != nil || empty.GetStreamId() != 0 || len(empty.GetDevices()) != 0 {
		t.Fatalf("no devices: %v %v", empty, err)
	}
	dk := newDeviceKey(t)
	if _, err := ks.UploadKeys(ctx, &keyserverv1.UploadKeysRequest{UserId: alice, DeviceId: "DEV1", DeviceKeys: dk.deviceKeys(t, "DEV1", "c")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DeviceRenamed(ctx, &keyserverv1.DeviceRenamedRequest{UserId: alice, DeviceId: "DEV1", DisplayName: "phone"}); err != nil {
		t.Fatal(err)
	}
	l, err := ks.LocalDeviceList(ctx, &keyserverv1.LocalDeviceListRequest{UserId: alice})
	if err != nil || l.GetStreamId() == 0 || len(l.GetDevices()) != 1 || l.GetDevices()[0].GetDisplayName() != "phone" || len(l.GetDevices()[0].GetKeys()) == 0 {
		t.Fatalf("list: %v %v", l, err)
	}
	if _, err := ks.LocalDeviceList(ctx, &keyserverv1.LocalDeviceListRequest{UserId: "@bob:remote.test"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("another server's user: %v", err)
	}
}
