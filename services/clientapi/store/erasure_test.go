package store

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// Erase records the erasure at the latest stored position, keeps the first
// position when repeated, and deletes the user's data outside events (and
// no one else's).
func TestErase(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	store := func(k int) {
		t.Helper()
		id := fmt.Sprintf("$e%d", k)
		if _, err := st.Apply(ctx, []Input{{Event: Event{EventID: id, RoomID: "!r:x", Type: "m.room.message", Sender: "@a:x",
			JSON: []byte(fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","sender":"@a:x","content":{}}`, id))}}}); err != nil {
			t.Fatal(err)
		}
	}
	store(1)
	store(2)
	for _, u := range []string{"@gone:x", "@stays:x"} {
		if _, err := st.PutAccountData(ctx, u, "", "m.tag.test", []byte(`{"a":1}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := st.PutAccountData(ctx, u, "!r:x", "m.room.test", []byte(`{"b":2}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateFilter(ctx, u, []byte(`{"room":{}}`)); err != nil {
			t.Fatal(err)
		}
	}
	rd := st.Reader()
	if got, err := rd.ErasedUsers(ctx); err != nil || len(got) != 0 {
		t.Fatalf("erased users before: %v, %v", got, err)
	}
	if err := st.Erase(ctx, "@gone:x"); err != nil {
		t.Fatal(err)
	}
	max, err := rd.MaxPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	store(3)
	if err := st.Erase(ctx, "@gone:x"); err != nil {
		t.Fatal(err)
	}
	got, err := rd.ErasedUsers(ctx)
	if err != nil || len(got) != 1 || got["@gone:x"] != max || max == 0 {
		t.Fatalf("erased users %v (%v); want @gone:x at %d", got, err, max)
	}
	for _, c := range []struct {
		user string
		want bool
	}{{"@gone:x", false}, {"@stays:x", true}} {
		for _, room := range []string{"", "!r:x"} {
			typ := map[string]string{"": "m.tag.test", "!r:x": "m.room.test"}[room]
			_, err := rd.AccountDataEntry(ctx, c.user, room, typ)
			if found := err == nil; found != c.want || (err != nil && !errors.Is(err, ErrNotFound)) {
				t.Errorf("%s: account data %q in %q: %v, want found=%v", c.user, typ, room, err, c.want)
			}
		}
		var filters int
		if err := st.db.QueryRow(ctx, `SELECT count(*) FROM filters WHERE user_id = $1`, c.user).Scan(&filters); err != nil {
			t.Fatal(err)
		}
		if (filters == 1) != c.want {
			t.Errorf("%s: %d filters, want kept=%v", c.user, filters, c.want)
		}
	}
}
