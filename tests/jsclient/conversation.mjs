// A scripted two-user conversation against a Myelin server, driven only
// through matrix-js-sdk's client API (the second client library next to
// mautrix-go, issue #3). tests/e2e TestJSClient runs it with the server's
// base URL; by hand: `node conversation.mjs http://127.0.0.1:8008`.
//
// Each step asserts its outcome. A failed step is reported with what was
// expected and what came back, and the script goes on with the steps that do
// not need its result (those are reported as skipped), so one run shows every
// gap. It exits 1 unless every step passed. Two kinds of step:
//   - the conversation itself, through request/response calls (createRoom,
//     invite, sendMessage, redactEvent, createMessagesRequest, search...);
//   - what the SDK's own /sync loop (startClient) shows of it, live, and
//     timeline pagination on a synced client (paginateEventTimeline).
// A hung step fails after STEP_TIMEOUT_MS instead of hanging the test.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.argv[2] || process.env.MYELIN_URL;
if (!baseUrl) {
  console.error("usage: node conversation.mjs <homeserver base URL>");
  process.exit(2);
}
// The SDK logs every sync at info, and warns about its own bookkeeping; keep
// its errors (failed requests, expected ones too), one line each.
// Listeners in sdkErrorListeners see the first Error of each.
logger.setLevel("error");
const sdkErrorListeners = new Set();
logger.error = (...args) => {
  console.log("  (sdk)", ...args.map((a) => (a instanceof Error ? describe(a) : a)));
  const err = args.find((a) => a instanceof Error);
  if (err) for (const l of sdkErrorListeners) l(err);
};

const STEP_TIMEOUT_MS = 30_000;
const run = Date.now().toString(36); // unique user names per run

// ---------------------------------------------------------------------------
// Steps and assertions

class StepError extends Error {}

function check(cond, msg, got) {
  if (!cond) throw new StepError(got === undefined ? msg : `${msg}; got ${JSON.stringify(got)}`);
}

function checkEqual(got, want, what) {
  check(got === want, `${what}: want ${JSON.stringify(want)}`, got);
}

function checkSame(got, want, what) {
  check(JSON.stringify(got) === JSON.stringify(want), `${what}: want ${JSON.stringify(want)}`, got);
}

const counts = { passed: 0, failed: 0, skipped: 0 };
const FAILED = Symbol("failed");
let stepNo = 0;

// step runs one named part of the conversation with a deadline and returns
// fn's result (true when it returns nothing), or FAILED. needs lists earlier
// results: when one of them FAILED, the step is skipped and FAILED too.
async function step(name, needs, fn) {
  const n = ++stepNo;
  if (needs.some((v) => v === FAILED)) {
    counts.skipped++;
    console.log(`SKIP ${n} - ${name} (an earlier step it needs failed)`);
    return FAILED;
  }
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new StepError(`timed out after ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  try {
    const out = await Promise.race([fn(), deadline]);
    counts.passed++;
    console.log(`ok ${n} - ${name}`);
    return out === undefined ? true : out;
  } catch (err) {
    counts.failed++;
    console.log(`FAIL ${n} - ${name}: ${describe(err)}`);
    return FAILED;
  } finally {
    clearTimeout(timer);
  }
}

function describe(err) {
  if (err instanceof sdk.MatrixError) {
    return `HTTP ${err.httpStatus} ${err.errcode}: ${err.data?.error ?? err.message} (${err.url ?? ""})`;
  }
  return err instanceof StepError ? err.message : err?.stack || String(err);
}

// expectMatrixError runs fn, which must be refused with errcode.
async function expectMatrixError(errcode, fn) {
  try {
    await fn();
  } catch (err) {
    check(err instanceof sdk.MatrixError, `want ${errcode}, got a non-Matrix error: ${describe(err)}`);
    checkEqual(err.errcode, errcode, "errcode");
    return;
  }
  throw new StepError(`want ${errcode}, but the request succeeded`);
}

// ---------------------------------------------------------------------------
// Clients and the SDK's sync loop

// clientFor makes a client for a register/login response: its access token
// and, when the server issued one, a refresh token the SDK uses on expiry.
function clientFor(resp) {
  const anon = sdk.createClient({ baseUrl });
  return sdk.createClient({
    baseUrl,
    userId: resp.user_id,
    deviceId: resp.device_id,
    accessToken: resp.access_token,
    refreshToken: resp.refresh_token,
    tokenRefreshFunction: async (refreshToken) => {
      const r = await anon.refreshToken(refreshToken);
      return { accessToken: r.access_token, refreshToken: r.refresh_token };
    },
  });
}

const syncErrors = new Map(); // client -> the error its sync loop stopped on

// startSync runs the SDK's own /sync loop and resolves after the first sync.
async function startSync(client, opts) {
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      if (state === sdk.SyncState.Prepared) resolve();
      if (state === sdk.SyncState.Error) {
        const err = data?.error ?? new Error("sync error");
        syncErrors.set(client, err);
        reject(err);
      }
    });
  });
  // startClient itself does not fail on HTTP errors: it retries forever and
  // reports them through the sync state, or only in the SDK's log for its
  // set-up requests (push rules, filter). Catch the first of those.
  let listener;
  const setupFailed = new Promise((_, reject) => {
    listener = reject;
    sdkErrorListeners.add(listener);
  });
  try {
    await client.startClient(opts);
    await Promise.race([prepared, setupFailed]);
  } finally {
    sdkErrorListeners.delete(listener);
  }
}

// waitFor polls cond (state the SDK's sync loop updates) until it holds.
async function waitFor(client, what, cond) {
  for (;;) {
    const v = cond();
    if (v) return v;
    const err = syncErrors.get(client);
    if (err) throw new StepError(`${what}: sync failed: ${describe(err)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// once runs a check exactly once, right after the write it checks: the
// server answers a write only when reads show it (read your own writes),
// so no check here waits or retries.
const once = (check) => check();

const liveMembership = (client, roomId, userId) => client.getRoom(roomId)?.getMember(userId)?.membership;
const liveEvent = (client, roomId, eventId) => client.getRoom(roomId)?.findEventById(eventId);

async function memberState(client, roomId, userId) {
  return (await client.getStateEvent(roomId, sdk.EventType.RoomMember, userId)).membership;
}

// ---------------------------------------------------------------------------
// The conversation

const password = (name) => `correct horse battery ${name}`;
const aliceName = `alice-${run}`;
const bobName = `bob-${run}`;

const alice = await step("alice registers (m.login.dummy)", [], async () => {
  const anon = sdk.createClient({ baseUrl });
  const resp = await anon.register(aliceName, password(aliceName), null, { type: "m.login.dummy" });
  check(resp.user_id?.startsWith(`@${aliceName}:`), "register returns the new user ID", resp.user_id);
  check(resp.access_token, "register returns an access token", resp);
  const client = clientFor(resp);
  checkEqual((await client.whoami()).user_id, resp.user_id, "whoami");
  return client;
});

const bob = await step("bob registers, then logs in with his password", [], async () => {
  const anon = sdk.createClient({ baseUrl });
  const reg = await anon.register(bobName, password(bobName), null, { type: "m.login.dummy" });
  const resp = await sdk.createClient({ baseUrl }).loginWithPassword(bobName, password(bobName));
  checkEqual(resp.user_id, reg.user_id, "login user_id");
  check(resp.device_id && resp.device_id !== reg.device_id, "login creates a new device", resp.device_id);
  await expectMatrixError("M_FORBIDDEN", () => sdk.createClient({ baseUrl }).loginWithPassword(bobName, "wrong"));
  return clientFor(resp);
});
if (alice === FAILED || bob === FAILED) finish();
const aliceId = alice.getUserId();
const bobId = bob.getUserId();

const synced = await step("both clients run the SDK's sync loop (startClient)", [], async () => {
  await Promise.all([startSync(alice, { initialSyncLimit: 50 }), startSync(bob, { initialSyncLimit: 50 })]);
});

const roomId = await step("alice creates a private_chat room", [], async () => {
  const { room_id: id } = await alice.createRoom({
    preset: sdk.Preset.PrivateChat,
    visibility: sdk.Visibility.Private,
  });
  check(id?.startsWith("!"), "createRoom returns a room ID", id);
  checkEqual(
    (await alice.getStateEvent(id, sdk.EventType.RoomJoinRules, "")).join_rule,
    "invite",
    "private_chat join_rule",
  );
  const hv = await alice.getStateEvent(id, sdk.EventType.RoomHistoryVisibility, "");
  checkEqual(hv.history_visibility, "shared", "private_chat history_visibility");
  checkEqual(await memberState(alice, id, aliceId), "join", "alice's membership");
  return id;
});
if (roomId === FAILED) finish();

const roomName = "Orchard planning";
const roomTopic = "What to grow next season";
const named = await step("alice sets the room name and topic", [], async () => {
  check((await alice.setRoomName(roomId, roomName)).event_id, "setRoomName returns an event ID");
  check((await alice.setRoomTopic(roomId, roomTopic)).event_id, "setRoomTopic returns an event ID");
  checkEqual((await alice.getStateEvent(roomId, sdk.EventType.RoomName, "")).name, roomName, "m.room.name");
  checkEqual((await alice.getStateEvent(roomId, sdk.EventType.RoomTopic, "")).topic, roomTopic, "m.room.topic");
});

await step("alice's sync shows the room with its name", [synced, named], async () => {
  await waitFor(alice, "alice joined", () => alice.getRoom(roomId)?.getMyMembership() === "join");
  await waitFor(alice, "the room's name", () => alice.getRoom(roomId)?.name === roomName);
});

await step("bob cannot join before he is invited", [], async () => {
  await expectMatrixError("M_FORBIDDEN", () => bob.joinRoom(roomId));
});

const invited = await step("alice invites bob", [], async () => {
  await alice.invite(roomId, bobId);
  await once(async () => checkEqual(await memberState(alice, roomId, bobId), "invite", "bob's membership"));
});

await step("bob's sync shows the invite; alice's shows bob invited", [synced, invited], async () => {
  await waitFor(bob, "bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await waitFor(alice, "bob invited", () => liveMembership(alice, roomId, bobId) === "invite");
});

const joined = await step("bob joins (joinRoom)", [invited], async () => {
  const room = await bob.joinRoom(roomId);
  checkEqual(room.roomId, roomId, "joined room");
  await once(async () => checkEqual(await memberState(alice, roomId, bobId), "join", "bob's membership"));
  await once(async () => {
    const { joined_rooms: rooms } = await bob.getJoinedRooms();
    check(rooms.includes(roomId), "the room is in bob's joined rooms", rooms);
  });
});

await step(
  "bob's sync shows him joined with the name and topic; alice's shows bob",
  [synced, joined, named],
  async () => {
    await waitFor(bob, "bob joined", () => bob.getRoom(roomId)?.getMyMembership() === "join");
    await waitFor(bob, "the room's name", () => bob.getRoom(roomId)?.name === roomName);
    const topic = bob.getRoom(roomId).currentState.getStateEvents(sdk.EventType.RoomTopic, "")?.getContent().topic;
    checkEqual(topic, roomTopic, "topic in bob's room state");
    await waitFor(alice, "bob joined", () => liveMembership(alice, roomId, bobId) === "join");
  },
);

// The conversation. bodies[i] is what the i-th message says, senders[i] who.
const bodies = [
  "Hello Bob, shall we talk about the pineapple harvest?",
  "Hi Alice! The harvest looks good this year.",
  "Great, see you at the marmalade festival",
  "Secret: the kumquat code is 1234",
  "Bring the baskets please",
];
const senders = [alice, bob, alice, bob, alice];

const sent = await step("both send messages (sendMessage and sendEvent)", [joined], async () => {
  const ids = [];
  for (let i = 0; i < bodies.length; i++) {
    const content = { msgtype: sdk.MsgType.Text, body: bodies[i] };
    const res =
      i % 2 === 0
        ? await senders[i].sendMessage(roomId, content)
        : await senders[i].sendEvent(roomId, sdk.EventType.RoomMessage, content);
    check(res.event_id?.startsWith("$"), "send returns an event ID", res);
    ids.push(res.event_id);
  }
  const ev = await once(() => bob.fetchRoomEvent(roomId, ids[0]));
  checkEqual(ev.content?.body, bodies[0], "alice's first message as bob fetches it (fetchRoomEvent)");
  return ids;
});

await step("each sees every message live in its sync", [synced, sent], async () => {
  for (const [who, client] of [
    ["alice", alice],
    ["bob", bob],
  ]) {
    for (let i = 0; i < sent.length; i++) {
      const ev = await waitFor(client, `${who} sees message ${i}`, () => liveEvent(client, roomId, sent[i]));
      checkEqual(ev.getContent().body, bodies[i], `${who}'s copy of message ${i}`);
      checkEqual(ev.getSender(), senders[i].getUserId(), `sender of message ${i}`);
    }
  }
});

const editedBody = "Great, see you at the orchard festival";
const editId = await step("alice edits her message (m.replace)", [sent], async () => {
  const res = await alice.sendEvent(roomId, sdk.EventType.RoomMessage, {
    msgtype: sdk.MsgType.Text,
    body: `* ${editedBody}`,
    "m.new_content": { msgtype: sdk.MsgType.Text, body: editedBody },
    "m.relates_to": { rel_type: sdk.RelationType.Replace, event_id: sent[2] },
  });
  check(res.event_id, "the edit has an event ID", res);
  await once(async () => {
    const { events } = await bob.relations(roomId, sent[2], sdk.RelationType.Replace);
    checkSame(
      events.map((e) => e.getId()),
      [res.event_id],
      "m.replace relations of the edited message (relations)",
    );
  });
  return res.event_id;
});

await step("bob's sync shows the edit", [synced, editId], async () => {
  const edit = await waitFor(bob, "the edit", () => liveEvent(bob, roomId, editId));
  checkEqual(edit.getRelation()?.rel_type, sdk.RelationType.Replace, "rel_type of the edit");
  checkEqual(edit.getRelation()?.event_id, sent[2], "edited event");
});

// where lists search results as "room event", sorted.
const where = (res) =>
  res.results.map((r) => `${r.context.getEvent().getRoomId()} ${r.context.getEvent().getId()}`).sort();

await step("search (searchRoomEvents) finds the kumquat before it is redacted", [sent], () =>
  once(async () => {
    checkSame(where(await alice.searchRoomEvents({ term: "kumquat" })), [`${roomId} ${sent[3]}`], "kumquat results");
  }),
);

const redactionId = await step("bob redacts his kumquat message (redactEvent)", [sent], async () => {
  const res = await bob.redactEvent(roomId, sent[3], undefined, { reason: "oops" });
  check(res.event_id, "the redaction has an event ID", res);
  await once(async () => {
    const ev = await alice.fetchRoomEvent(roomId, sent[3]);
    checkSame(ev.content, {}, "content of the redacted message as alice fetches it");
  });
  return res.event_id;
});

await step("both syncs show the redaction applied", [synced, redactionId], async () => {
  for (const [who, client] of [
    ["alice", alice],
    ["bob", bob],
  ]) {
    const ev = await waitFor(client, `${who} sees the redaction`, () => {
      const e = liveEvent(client, roomId, sent[3]);
      return e?.isRedacted() && e;
    });
    checkEqual(ev.getContent().body, undefined, `${who}'s copy of the redacted body`);
  }
});

await step("bob cannot redact alice's message (power level)", [sent], async () => {
  await expectMatrixError("M_FORBIDDEN", () => bob.redactEvent(roomId, sent[0]));
});

await step("/messages backwards (createMessagesRequest): order, edit, redaction", [editId, redactionId], () =>
  once(async () => {
    const chunk = [];
    let from = null;
    for (let page = 0; page < 20; page++) {
      const res = await bob.createMessagesRequest(roomId, from, 4, sdk.Direction.Backward);
      check(Array.isArray(res.chunk), "a chunk", res);
      chunk.push(...res.chunk);
      if (!res.end || res.chunk.length === 0) break;
      from = res.end;
    }
    const ids = chunk.map((e) => e.event_id);
    checkEqual(new Set(ids).size, ids.length, "no event twice across pages");
    const want = [...sent, editId, redactionId].reverse();
    checkSame(
      ids.filter((id) => want.includes(id)),
      want,
      "newest first",
    );
    checkEqual(chunk[chunk.length - 1].type, sdk.EventType.RoomCreate, "the oldest event");

    const byId = Object.fromEntries(chunk.map((e) => [e.event_id, e]));
    const redacted = byId[sent[3]];
    checkSame(redacted.content, {}, "content of the redacted message");
    checkEqual(redacted.unsigned?.redacted_because?.event_id, redactionId, "redacted_because");
    const redaction = byId[redactionId];
    checkEqual(redaction.content?.redacts ?? redaction.redacts, sent[3], "what the redaction redacts");

    const original = byId[sent[2]];
    checkEqual(original.content.body, bodies[2], "the original keeps its own content");
    const replace = original.unsigned?.["m.relations"]?.[sdk.RelationType.Replace];
    check(replace, "the edited message bundles its m.replace", original.unsigned);
    checkEqual(replace.event_id, editId, "bundled m.replace event");
    checkEqual(replace.content?.["m.new_content"]?.body, editedBody, "bundled m.replace new content");
    // The SDK's own reading of the bundle.
    const mapped = bob.getEventMapper()(original);
    checkEqual(mapped.getServerAggregatedRelation(sdk.RelationType.Replace)?.event_id, editId, "SDK bundled relation");
  }),
);

await step(
  "timeline pagination (paginateEventTimeline) on a freshly synced client",
  [synced, editId, redactionId],
  async () => {
    // A second login of alice with a one-event initial sync pages back
    // through the room to its creation, oldest first.
    const fresh = clientFor(await sdk.createClient({ baseUrl }).loginWithPassword(aliceName, password(aliceName)));
    await startSync(fresh, { initialSyncLimit: 1 });
    try {
      const room = fresh.getRoom(roomId);
      check(room, "the fresh client knows the room");
      const timeline = room.getLiveTimeline();
      check(timeline.getEvents().length <= 2, "the initial sync is limited", timeline.getEvents().length);
      for (let i = 0; i < 20 && (await fresh.paginateEventTimeline(timeline, { backwards: true, limit: 3 })); i++);
      const events = timeline.getEvents();
      checkEqual(events[0].getType(), sdk.EventType.RoomCreate, "the first event after paging back");
      const want = [...sent, editId, redactionId];
      checkSame(
        events.map((e) => e.getId()).filter((id) => want.includes(id)),
        want,
        "oldest first",
      );
      checkEqual(room.findEventById(sent[3]).isRedacted(), true, "paged-back redacted message");
      checkEqual(room.findEventById(sent[3]).getContent().body, undefined, "paged-back redacted body");
      const replace = room.findEventById(sent[2]).getServerAggregatedRelation(sdk.RelationType.Replace);
      checkEqual(replace?.event_id, editId, "paged-back bundled m.replace");
    } finally {
      fresh.stopClient();
      await fresh.logout(true);
    }
  },
);

const otherRoom = await step("alice has a second room with another pineapple", [], async () => {
  const { room_id: id } = await alice.createRoom({ preset: sdk.Preset.PrivateChat, name: "Smoothies" });
  const res = await alice.sendMessage(id, { msgtype: sdk.MsgType.Text, body: "pineapple smoothie recipe" });
  return { id, eventId: res.event_id };
});

await step("search (searchRoomEvents) finds words in the right rooms only", [sent, otherRoom, redactionId], () =>
  once(async () => {
    // bob shares only the first room with alice.
    checkSame(
      where(await bob.searchRoomEvents({ term: "pineapple" })),
      [`${roomId} ${sent[0]}`],
      "bob's pineapple results",
    );
    checkSame(
      where(await alice.searchRoomEvents({ term: "pineapple" })),
      [`${roomId} ${sent[0]}`, `${otherRoom.id} ${otherRoom.eventId}`].sort(),
      "alice's pineapple results",
    );
    checkSame(
      where(await alice.searchRoomEvents({ term: "pineapple", filter: { rooms: [otherRoom.id] } })),
      [`${otherRoom.id} ${otherRoom.eventId}`],
      "alice's pineapple results in the smoothie room only",
    );
    checkSame(
      where(await bob.searchRoomEvents({ term: "harvest" })),
      [`${roomId} ${sent[0]}`, `${roomId} ${sent[1]}`].sort(),
      "bob's harvest results",
    );
    checkSame(
      where(await alice.searchRoomEvents({ term: "kumquat" })),
      [],
      "results for a word only in the redacted message",
    );
  }),
);

const bobLeft = await step("bob leaves", [joined], async () => {
  await bob.leave(roomId);
  await once(async () => checkEqual(await memberState(alice, roomId, bobId), "leave", "bob's membership"));
  await once(async () => {
    const { joined_rooms: rooms } = await bob.getJoinedRooms();
    check(!rooms.includes(roomId), "the room is no longer in bob's joined rooms", rooms);
  });
  await expectMatrixError("M_FORBIDDEN", () =>
    bob.sendMessage(roomId, { msgtype: sdk.MsgType.Text, body: "still here?" }),
  );
});

await step("bob's sync shows him gone; alice's shows bob left", [synced, bobLeft], async () => {
  await waitFor(bob, "bob left", () => bob.getRoom(roomId)?.getMyMembership() === "leave");
  await waitFor(alice, "bob left", () => liveMembership(alice, roomId, bobId) === "leave");
});

await step("alice leaves her rooms", [otherRoom], async () => {
  await alice.leave(roomId);
  await alice.leave(otherRoom.id);
  await once(async () => {
    const { joined_rooms: rooms } = await alice.getJoinedRooms();
    checkSame(rooms, [], "alice's joined rooms");
  });
});

finish();

function finish() {
  for (const c of [alice, bob]) if (c && c !== FAILED) c.stopClient();
  // The plain closing line CI tools read, then the verdict.
  console.log(`jsclient: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
  process.exit(counts.failed || counts.skipped ? 1 : 0);
}
