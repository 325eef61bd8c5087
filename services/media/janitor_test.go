package media

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/rpc"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/media/storage"
)

// The janitor deletes the content of uploads a dead process left behind
// (pending for longer than abandoned_upload_after) and media IDs created
// and expired unused; younger pending uploads (in progress elsewhere) and
// stored media stay.
func TestJanitor(t *testing.T) {
	ctx := context.Background()
	// Nothing here authenticates: the client is never called.
	conn, err := rpc.Dial("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	cfg := DefaultConfig()
	cfg.Storage.Path = t.TempDir()
	svc, err := New(ctx, cfg, Deps{Logger: zaptest.NewLogger(t), ServerName: "example.test", DatabaseURL: testDatabase(t),
		Users: clientapiv1.NewUserServiceClient(conn)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	now := time.Now()
	clock := now
	svc.now = func() time.Time { return clock }

	// A dead process's upload: pending, written, never named by a row.
	dead := contentKey("deadUpload")
	if err := svc.store.AddPendingObject(ctx, dead, now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.content.Put(ctx, dead, strings.NewReader("half"), 4); err != nil {
		t.Fatal(err)
	}
	// A stored upload and a created media ID.
	stored := contentKey("storedUpload")
	if _, err := svc.putContent(ctx, stored, strings.NewReader("kept"), 4, -1); err != nil {
		t.Fatal(err)
	}
	if err := svc.store.PutMedia(ctx, mediaRow("storedUpload", stored, now), 0); err != nil {
		t.Fatal(err)
	}
	if ok, err := svc.store.CreateMedia(ctx, "createdUnused", "@a:example.test", now.UnixMilli(), now.Add(time.Hour).UnixMilli(), 5); err != nil || !ok {
		t.Fatal(ok, err)
	}

	// Before the limits nothing goes.
	clock = now.Add(30 * time.Minute)
	svc.sweep(ctx)
	if _, err := svc.content.Get(ctx, dead); err != nil {
		t.Errorf("young pending upload: %v, want kept", err)
	}
	if _, err := svc.store.MediaByID(ctx, "createdUnused", clock.UnixMilli()); err != nil {
		t.Errorf("created media ID before its expiry: %v", err)
	}

	clock = now.Add(cfg.AbandonedUploadAfter + time.Minute)
	svc.sweep(ctx)
	if _, err := svc.content.Get(ctx, dead); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("abandoned upload: %v, want deleted", err)
	}
	if keys, err := svc.store.AbandonedObjects(ctx, clock.UnixMilli(), 10); err != nil || len(keys) != 0 {
		t.Errorf("pending objects after the sweep: %v, %v", keys, err)
	}
	if rc, err := svc.content.Get(ctx, stored); err != nil {
		t.Errorf("stored upload: %v, want kept", err)
	} else {
		rc.Close()
	}
	if n, err := svc.store.DeleteExpiredCreates(ctx, clock.UnixMilli()); err != nil || n != 0 {
		t.Errorf("expired created IDs left for a second sweep: %d, %v", n, err)
	}
}
