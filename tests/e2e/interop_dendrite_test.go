//go:build interop

// The interop test runs only with -tags interop (make interop), which
// builds Dendrite first: make test does not need Dendrite.

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// dendrite is a Dendrite monolith under test, federating over HTTPS.
type dendrite struct {
	*server
	name string
	// link relays to its federation listener; its server name is the
	// link's address, so that cutting the link partitions it.
	link *link
}

// startDendrite runs $DENDRITE_BIN (make interop builds it from the Go
// module proxy) in a temporary directory with SQLite databases, its
// client API on plain HTTP and its federation listener on HTTPS with a
// certificate for 127.0.0.1 from ca. Its server name is the address of a
// link to that listener (an IP literal with a port, so discovery needs no
// DNS and connects to it directly). Dendrite verifies other servers'
// certificates (disable_tls_validation stays false) against ca, which
// SSL_CERT_FILE makes its only trusted root; it fetches keys directly
// (no key perspectives).
func startDendrite(t *testing.T, ca *testkit.CA) *dendrite {
	t.Helper()
	bin := os.Getenv("DENDRITE_BIN")
	if bin == "" {
		t.Fatal("DENDRITE_BIN is not set: run make interop, which builds Dendrite into bin/")
	}
	dir := t.TempDir()
	httpAddr, fedAddr := freeAddr(t), freeAddr(t)
	lnk := newLink(t, fedAddr)
	name := lnk.addr
	run := func(name string, args ...string) []byte {
		cmd := exec.Command(filepath.Join(filepath.Dir(bin), name), args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return out
	}
	run("generate-keys", "--private-key", "matrix_key.pem")
	// -ci: open registration without verification, no rate limits, no key
	// perspectives (never matrix.org), JetStream in memory.
	cfg := string(run("generate-config", "-ci", "-server", name, "-dir", dir))
	cfg = strings.Replace(cfg, "level: trace", "level: info", 1)
	cfgFile := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key := ca.Issue(t, "127.0.0.1")
	d := &dendrite{name: name, link: lnk, server: &server{url: "http://" + httpAddr}}
	d.procs = []*proc{{
		name: "dendrite",
		bin:  bin,
		dir:  dir,
		args: []string{"--config", cfgFile, "--http-bind-address", httpAddr, "--https-bind-address", fedAddr,
			"--tls-cert", cert, "--tls-key", key, "--really-enable-open-registration"},
		env: []string{"SSL_CERT_FILE=" + ca.CertFile, "SSL_CERT_DIR=" + dir},
		log: filepath.Join(dir, "dendrite.log"),
	}}
	d.start(t)
	t.Cleanup(func() { d.shutdown(t); d.dumpLogs(t) })
	return d
}

// startMyelinForInterop runs Myelin in shape (allInOne or split) with
// federation on (federating's settings) and its public federation
// listener's certificate for 127.0.0.1 from ca. As Dendrite's, its server
// name is the address of a link to that listener (returned too). It needs
// no server-name map: Dendrite's name is an IP literal with a port, which
// discovery connects to directly.
func startMyelinForInterop(t *testing.T, ca *testkit.CA, shape func(*testing.T) *server) (*fedServer, *link) {
	t.Helper()
	listen := freeAddr(t)
	lnk := newLink(t, listen)
	fs := federating(t, ca, shape, lnk.addr)[0]
	for _, p := range fs.procs {
		p.env = append(p.env, "MYELIN_FEDERATION_SERVER_NAME_MAP=")
		if len(fs.procs) == 1 || p.name == "edge" {
			p.env = append(p.env, "MYELIN_FEDERATION_LISTEN="+listen)
		}
	}
	fs.fedAddr = listen
	startFederating(t, []*fedServer{fs})
	return fs, lnk
}

// interopReport collects a pass/fail line per flow.
type interopReport struct {
	lines  []string
	failed bool
}

// flow runs one flow as a subtest and records its outcome; a flow whose
// prerequisite failed is recorded as not run.
func (r *interopReport) flow(t *testing.T, name string, needs []bool, fn func(t *testing.T)) bool {
	if slices.Contains(needs, false) {
		r.lines = append(r.lines, fmt.Sprintf("SKIP  %s (a flow it needs failed)", name))
		r.failed = true
		return false
	}
	ok := t.Run(strings.ReplaceAll(name, " ", "_"), fn)
	status := "PASS"
	if !ok {
		status, r.failed = "FAIL", true
	}
	r.lines = append(r.lines, fmt.Sprintf("%s  %s", status, name))
	return ok
}

// backfilled pages back through room's history with /messages as cli's
// user sees it, up to the room's creation, and returns the bodies of the
// messages with prefix, oldest first.
func backfilled(ctx context.Context, cli *mautrix.Client, room id.RoomID, prefix string) ([]string, error) {
	var bodies []string
	from := ""
	for range 50 {
		resp, err := cli.Messages(ctx, room, from, "", mautrix.DirectionBackward, nil, 20)
		if err != nil {
			return nil, err
		}
		for _, ev := range resp.Chunk {
			if b := messageBody(ev); ev.Type.Type == "m.room.message" && strings.HasPrefix(b, prefix) {
				bodies = append(bodies, b)
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	slices.Reverse(bodies)
	return bodies, nil
}

// TestDendriteInterop federates Myelin, all-in-one and then split, with
// Dendrite v0.13.8 over HTTPS on loopback, both verifying certificates
// from a test CA, and drives both with mautrix-go: a Dendrite user joins
// a Myelin room and a Myelin user a Dendrite room, messages go both ways
// (each seen once and in order in /sync), history from before each join
// is backfilled through /messages, typing, redactions, concurrent
// renames, invites, profiles, aliases and public rooms work both ways,
// and both leave. It logs a pass/fail line per flow (and writes them to
// $INTEROP_REPORT) and fails when any flow fails.
func TestDendriteInterop(t *testing.T) {
	var reports []string
	t.Cleanup(func() {
		report := "interop with Dendrite v0.13.8:\n" + strings.Join(reports, "\n")
		t.Log(report)
		if f := os.Getenv("INTEROP_REPORT"); f != "" {
			_ = os.WriteFile(f, []byte(report+"\n"), 0o644)
		}
	})
	for _, sh := range []struct {
		name  string
		shape func(*testing.T) *server
	}{{"all-in-one", allInOne}, {"split", split}} {
		t.Run(sh.name, func(t *testing.T) {
			var r interopReport
			defer func() {
				reports = append(reports, "Myelin "+sh.name+":\n  "+strings.Join(r.lines, "\n  "))
			}()
			interopFlows(t, sh.shape, &r)
			if r.failed {
				t.Fail()
			}
		})
	}
}

func interopFlows(t *testing.T, shape func(*testing.T) *server, r *interopReport) {
	ca := testkit.NewCA(t)
	den := startDendrite(t, ca)
	my, myLink := startMyelinForInterop(t, ca, shape)
	partition := func(down bool) {
		myLink.setDown(down)
		den.link.setDown(down)
	}
	ctx := context.Background()
	alice := register(t, my.url, "alice")
	dave := register(t, den.url, "dave")
	aliceSync, daveSync := newRoomSyncer(alice), newRoomSyncer(dave)

	// Flows on a Myelin room, with history from before dave joins.
	lobby, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Myelin lobby"})
	if err != nil {
		t.Fatal(err)
	}
	lobbyBefore := sendAll(t, alice, lobby.RoomID, "before lobby", 5)

	joinedLobby := r.flow(t, "Dendrite user joins a Myelin room", nil, func(t *testing.T) {
		if _, err := dave.cli.JoinRoom(ctx, lobby.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{my.name}}); err != nil {
			t.Fatalf("dave joins %s via %s: %v", lobby.RoomID, my.name, err)
		}
		waitMembership(t, alice.cli, lobby.RoomID, dave.cli.UserID, "join")
		waitMembership(t, dave.cli, lobby.RoomID, alice.cli.UserID, "join")
	})
	lobbyTalk := r.flow(t, "messages both ways in the Myelin room", []bool{joinedLobby}, func(t *testing.T) {
		exchange(t, aliceSync, daveSync, lobby.RoomID, "lobby")
	})
	r.flow(t, "backfill of the Myelin room's history on Dendrite", []bool{joinedLobby}, func(t *testing.T) {
		waitBackfill(t, dave.cli, lobby.RoomID, "before lobby", lobbyBefore)
	})
	r.flow(t, "typing both ways in the Myelin room", []bool{joinedLobby}, func(t *testing.T) {
		waitTyping(t, alice, dave, lobby.RoomID)
		waitTyping(t, dave, alice, lobby.RoomID)
	})
	r.flow(t, "presence both ways (users sharing the Myelin room)", []bool{joinedLobby}, func(t *testing.T) {
		presenceSeen(t, alice, dave, "on Myelin")
		presenceSeen(t, dave, alice, "on Dendrite")
	})
	r.flow(t, "redactions both ways in the Myelin room", []bool{lobbyTalk}, func(t *testing.T) {
		redactSeen(t, dave, alice, lobby.RoomID)
		redactSeen(t, alice, dave, lobby.RoomID)
	})
	r.flow(t, "concurrent messages and conflicting state from both sides converge", []bool{lobbyTalk}, func(t *testing.T) {
		converge(t, alice, dave, lobby.RoomID, "conc", nil)
	})
	r.flow(t, "both sides send and rename while partitioned, then converge once healed", []bool{lobbyTalk}, func(t *testing.T) {
		converge(t, alice, dave, lobby.RoomID, "cut", partition)
	})

	// Flows on a Dendrite room, with history from before alice joins.
	den1, err := dave.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Dendrite den"})
	if err != nil {
		t.Fatal(err)
	}
	denBefore := sendAll(t, dave, den1.RoomID, "before den", 5)
	joinedDen := r.flow(t, "Myelin user joins a Dendrite room", nil, func(t *testing.T) {
		if _, err := alice.cli.JoinRoom(ctx, den1.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{den.name}}); err != nil {
			t.Fatalf("alice joins %s via %s: %v", den1.RoomID, den.name, err)
		}
		waitMembership(t, dave.cli, den1.RoomID, alice.cli.UserID, "join")
		waitMembership(t, alice.cli, den1.RoomID, dave.cli.UserID, "join")
	})
	denTalk := r.flow(t, "messages both ways in the Dendrite room", []bool{joinedDen}, func(t *testing.T) {
		exchange(t, daveSync, aliceSync, den1.RoomID, "den")
	})
	r.flow(t, "backfill of the Dendrite room's history on Myelin", []bool{joinedDen}, func(t *testing.T) {
		waitBackfill(t, alice.cli, den1.RoomID, "before den", denBefore)
	})

	r.flow(t, "Dendrite user invites a Myelin user, who joins", nil, func(t *testing.T) {
		inviteAndJoin(t, dave, aliceSync, den.name)
	})
	r.flow(t, "Myelin user invites a Dendrite user, who joins", nil, func(t *testing.T) {
		inviteAndJoin(t, alice, daveSync, my.name)
	})

	r.flow(t, "Dendrite user reads a Myelin user's profile", nil, func(t *testing.T) {
		profileSeen(t, alice, dave, "Alice on Myelin")
	})
	r.flow(t, "Myelin user reads a Dendrite user's profile", nil, func(t *testing.T) {
		profileSeen(t, dave, alice, "Dave on Dendrite")
	})
	r.flow(t, "Dendrite user finds a Myelin room by alias and in its public rooms, and joins by alias", nil, func(t *testing.T) {
		aliasAndDirectory(t, alice, dave, my.name)
	})
	r.flow(t, "Myelin user finds a Dendrite room by alias and in its public rooms, and joins by alias", nil, func(t *testing.T) {
		aliasAndDirectory(t, dave, alice, den.name)
	})

	r.flow(t, "Dendrite user leaves the Myelin room", []bool{joinedLobby, lobbyTalk}, func(t *testing.T) {
		if _, err := dave.cli.LeaveRoom(ctx, lobby.RoomID); err != nil {
			t.Fatalf("dave leaves: %v", err)
		}
		waitMembership(t, alice.cli, lobby.RoomID, dave.cli.UserID, "leave")
	})
	r.flow(t, "Myelin user leaves the Dendrite room", []bool{joinedDen, denTalk}, func(t *testing.T) {
		if _, err := alice.cli.LeaveRoom(ctx, den1.RoomID); err != nil {
			t.Fatalf("alice leaves: %v", err)
		}
		waitMembership(t, dave.cli, den1.RoomID, alice.cli.UserID, "leave")
	})
}

// exchange sends rounds of messages from the room's creator's server and
// the joined one in turn, each round waiting until the other side's /sync
// has it, and checks that both saw every message exactly once, in the
// order sent.
func exchange(t *testing.T, home, joined *roomSyncer, room id.RoomID, prefix string) {
	t.Helper()
	ctx := context.Background()
	for _, s := range []*roomSyncer{home, joined} {
		if err := s.sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for round := range 3 {
		want = append(want, sendAll(t, home.u, room, fmt.Sprintf("%s %d home", prefix, round), 4)...)
		joined.waitBodies(t, room, prefix+" ", want)
		want = append(want, sendAll(t, joined.u, room, fmt.Sprintf("%s %d joined", prefix, round), 4)...)
		home.waitBodies(t, room, prefix+" ", want)
	}
	joined.waitBodies(t, room, prefix+" ", want)
}

// waitBackfill waits until cli's /messages reaches back to the messages
// want (with prefix) and checks it has them exactly, in order.
func waitBackfill(t *testing.T, cli *mautrix.Client, room id.RoomID, prefix string, want []string) {
	t.Helper()
	var got []string
	fedEventually(t, fmt.Sprintf("%s pages back to %q in %s", cli.UserID, prefix, room), func() error {
		var err error
		if got, err = backfilled(context.Background(), cli, room, prefix); err != nil {
			return err
		}
		if len(got) < len(want) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
	assertExactly(t, string(cli.UserID), got, want)
}

// inviteAndJoin: from creates a private room on its server (at via) and
// invites the syncer's user, who sees the invite in /sync, joins through
// via, and is seen joined by from.
func inviteAndJoin(t *testing.T, from *user, invitee *roomSyncer, via string) {
	t.Helper()
	ctx := context.Background()
	room, err := from.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Invite only"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := from.cli.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: invitee.u.cli.UserID}); err != nil {
		t.Fatalf("%s invites %s: %v", from.cli.UserID, invitee.u.cli.UserID, err)
	}
	fedEventually(t, fmt.Sprintf("%s sees the invite to %s", invitee.u.cli.UserID, room.RoomID), func() error {
		if err := invitee.sync(ctx); err != nil {
			return err
		}
		if !invitee.invite[room.RoomID] {
			return fmt.Errorf("no invite yet")
		}
		return nil
	})
	if _, err := invitee.u.cli.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{via}}); err != nil {
		t.Fatalf("%s accepts the invite: %v", invitee.u.cli.UserID, err)
	}
	waitMembership(t, from.cli, room.RoomID, invitee.u.cli.UserID, "join")
}

// waitTyping: from starts typing in room, and to's /sync shows it.
func waitTyping(t *testing.T, from, to *user, room id.RoomID) {
	t.Helper()
	ctx := context.Background()
	if _, err := from.cli.UserTyping(ctx, room, true, 30*time.Second); err != nil {
		t.Fatalf("%s typing: %v", from.cli.UserID, err)
	}
	since := ""
	fedEventually(t, fmt.Sprintf("%s sees %s typing", to.cli.UserID, from.cli.UserID), func() error {
		resp, err := to.cli.SyncRequest(ctx, 1000, since, timelineFilter, false, "")
		if err != nil {
			return err
		}
		since = resp.NextBatch
		if jr := resp.Rooms.Join[room]; jr != nil {
			for _, ev := range jr.Ephemeral.Events {
				if ev.Type.Type != "m.typing" {
					continue
				}
				var c struct {
					UserIDs []string `json:"user_ids"`
				}
				_ = json.Unmarshal(ev.Content.VeryRaw, &c)
				if slices.Contains(c.UserIDs, string(from.cli.UserID)) {
					return nil
				}
			}
		}
		return fmt.Errorf("not typing")
	})
	if _, err := from.cli.UserTyping(ctx, room, false, 0); err != nil {
		t.Fatalf("%s stops typing: %v", from.cli.UserID, err)
	}
}

// redactSeen: from sends a message and redacts it; to's server shows the
// event redacted (content gone, redacted_because set).
func redactSeen(t *testing.T, from, to *user, room id.RoomID) {
	t.Helper()
	ctx := context.Background()
	sent, err := from.cli.SendText(ctx, room, "to be redacted")
	if err != nil {
		t.Fatal(err)
	}
	fedEventually(t, fmt.Sprintf("%s has %s's message", to.cli.UserID, from.cli.UserID), func() error {
		_, err := to.cli.GetEvent(ctx, room, sent.EventID)
		return err
	})
	if _, err := from.cli.RedactEvent(ctx, room, sent.EventID, mautrix.ReqRedact{Reason: "interop"}); err != nil {
		t.Fatalf("%s redacts: %v", from.cli.UserID, err)
	}
	fedEventually(t, fmt.Sprintf("%s sees %s's message redacted", to.cli.UserID, from.cli.UserID), func() error {
		ev, err := to.cli.GetEvent(ctx, room, sent.EventID)
		if err != nil {
			return err
		}
		if len(ev.Content.Raw) != 0 || ev.Unsigned.RedactedBecause == nil {
			return fmt.Errorf("content %v, redacted_because %v", ev.Content.Raw, ev.Unsigned.RedactedBecause)
		}
		return nil
	})
}

// profileSeen: owner sets a display name, which reader (of the other
// server) gets through its server's profile query.
func profileSeen(t *testing.T, owner, reader *user, name string) {
	t.Helper()
	ctx := context.Background()
	if err := owner.cli.SetDisplayName(ctx, name); err != nil {
		t.Fatal(err)
	}
	p, err := reader.cli.GetProfile(ctx, owner.cli.UserID)
	if err != nil {
		t.Fatalf("%s reads %s's profile: %v", reader.cli.UserID, owner.cli.UserID, err)
	}
	if p.DisplayName != name {
		t.Fatalf("%s's display name on %s's server: %q, want %q", owner.cli.UserID, reader.cli.UserID, p.DisplayName, name)
	}
}

// aliasAndDirectory: owner creates a published room with an alias on its
// server (serverName); joiner's server resolves the alias, lists the room
// in the owner server's public rooms, and joins by the alias.
func aliasAndDirectory(t *testing.T, owner, joiner *user, serverName string) {
	t.Helper()
	ctx := context.Background()
	local := "square-" + owner.cli.UserID.Localpart()
	room, err := owner.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", RoomAliasName: local, Name: "Square of " + string(owner.cli.UserID)})
	if err != nil {
		t.Fatal(err)
	}
	alias := id.RoomAlias("#" + local + ":" + serverName)
	res, err := joiner.cli.ResolveAlias(ctx, alias)
	if err != nil {
		t.Fatalf("%s resolves %s: %v", joiner.cli.UserID, alias, err)
	}
	if res.RoomID != room.RoomID || !slices.Contains(res.Servers, serverName) {
		t.Fatalf("%s resolved to %+v, want %s on %s", alias, res, room.RoomID, serverName)
	}
	pub, err := joiner.cli.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: serverName, Limit: 50})
	if err != nil {
		t.Fatalf("%s lists %s's public rooms: %v", joiner.cli.UserID, serverName, err)
	}
	listed := slices.ContainsFunc(pub.Chunk, func(pr *mautrix.PublicRoomInfo) bool {
		return pr.RoomID == room.RoomID && pr.CanonicalAlias == alias
	})
	if !listed {
		t.Fatalf("%s not among %s's public rooms (with its alias): %+v", room.RoomID, serverName, pub.Chunk)
	}
	if _, err := joiner.cli.JoinRoom(ctx, alias.String(), nil); err != nil {
		t.Fatalf("%s joins %s: %v", joiner.cli.UserID, alias, err)
	}
	waitMembership(t, owner.cli, room.RoomID, joiner.cli.UserID, "join")
}

// converge: home (the room's creator) lets other change state, then both
// send messages (with prefix) and rename the room at the same time,
// forking the room's graph between the two servers, with the servers cut
// apart by partition (when not nil) while they do; both servers must end
// with every message once, each sender's in order, and the same current
// state.
func converge(t *testing.T, home, other *user, room id.RoomID, prefix string, partition func(down bool)) {
	t.Helper()
	ctx := context.Background()
	var pl map[string]any
	if err := home.cli.StateEvent(ctx, room, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	pl["users"].(map[string]any)[string(other.cli.UserID)] = 50
	plResp, err := home.cli.SendStateEvent(ctx, room, event.StatePowerLevels, "", pl)
	if err != nil {
		t.Fatal(err)
	}
	fedEventually(t, "the power levels on the other server", func() error {
		st, err := other.cli.State(ctx, room)
		if err != nil {
			return err
		}
		if ev := st[event.StatePowerLevels][""]; ev == nil || ev.ID != plResp.EventID {
			return fmt.Errorf("power levels %v", ev)
		}
		return nil
	})
	both := []*user{home, other}
	if partition != nil {
		partition(true)
	}
	sent := make([][]string, 2)
	var wg sync.WaitGroup
	for i, u := range both {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 12 {
				if j%4 == 3 {
					if _, err := u.cli.SendStateEvent(ctx, room, event.StateRoomName, "", map[string]any{"name": fmt.Sprintf("%s %d", u.cli.UserID, j)}); err != nil {
						t.Errorf("%s renames: %v", u.cli.UserID, err)
						return
					}
					continue
				}
				b := fmt.Sprintf("%s %s %d", prefix, u.cli.UserID, j)
				if _, err := u.cli.SendText(ctx, room, b); err != nil {
					t.Errorf("%s sends: %v", u.cli.UserID, err)
					return
				}
				sent[i] = append(sent[i], b)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if partition != nil {
		// The partition held: home has none of other's messages.
		s := newRoomSyncer(home)
		if err := s.sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := withPrefix(s.bodies[room], prefix+" "+string(other.cli.UserID)+" "); len(got) > 0 {
			t.Fatalf("messages crossed the partition: %v", got)
		}
		partition(false)
	}
	for _, reader := range both {
		s := newRoomSyncer(reader)
		for i, from := range both {
			prefix := prefix + " " + string(from.cli.UserID) + " "
			fedEventually(t, fmt.Sprintf("%s has %s's messages", reader.cli.UserID, from.cli.UserID), func() error {
				if err := s.sync(ctx); err != nil {
					return err
				}
				if got := withPrefix(s.bodies[room], prefix); len(got) < len(sent[i]) {
					return fmt.Errorf("%d of %d", len(got), len(sent[i]))
				}
				return nil
			})
			assertExactly(t, fmt.Sprintf("%s, messages of %s", reader.cli.UserID, from.cli.UserID), withPrefix(s.bodies[room], prefix), sent[i])
		}
	}
	fedEventually(t, "the same current state on both servers", func() error {
		var states []string
		for _, u := range both {
			st, err := u.cli.State(ctx, room)
			if err != nil {
				return err
			}
			states = append(states, stateIDs(st))
		}
		if states[0] != states[1] {
			return fmt.Errorf("current state differs:\n %s\n %s", states[0], states[1])
		}
		return nil
	})
}

// presenceSeen: from sets its presence (unavailable, with a status
// message), which to's server learns over federation and shows in to's
// /sync. (Not through GET /presence/{userId}/status: Dendrite v0.13.8
// answers "unavailable" for every remote user there, as its user API
// refuses to look up remote users' devices.)
func presenceSeen(t *testing.T, from, to *user, status string) {
	t.Helper()
	ctx := context.Background()
	if err := from.cli.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: status}); err != nil {
		t.Fatalf("%s sets presence: %v", from.cli.UserID, err)
	}
	since := ""
	fedEventually(t, fmt.Sprintf("%s sees %s's presence in /sync", to.cli.UserID, from.cli.UserID), func() error {
		resp, err := to.cli.SyncRequest(ctx, 1000, since, timelineFilter, false, "")
		if err != nil {
			return err
		}
		since = resp.NextBatch
		for _, ev := range resp.Presence.Events {
			var c struct {
				Presence  string `json:"presence"`
				StatusMsg string `json:"status_msg"`
			}
			_ = json.Unmarshal(ev.Content.VeryRaw, &c)
			if ev.Sender == from.cli.UserID && c.Presence == "unavailable" && c.StatusMsg == status {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
}
