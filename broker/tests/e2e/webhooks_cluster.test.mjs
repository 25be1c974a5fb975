// The cluster's webhooks on three real nodes: once per change for the whole cluster, however many
// nodes have subscribers, and none for a subscriber back within the vacate delay on another
// node; nothing lost when the leader is killed in the middle of a burst (a few
// sent again, with the same ids); and everything sent, in order per channel, once a receiver
// that was down for a minute (refusing, then answering 500, then hanging) is back. Every request
// is checked with the Node SDK's webhook validator.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  subscribeOk,
  eventually,
  freePort,
  metric,
  presenceAuth,
  sleep,
  withTimeout,
  DEFAULT_APP,
} from './harness.mjs';
import { startCluster } from './cluster.mjs';
import { startReceiver } from './webhook_receiver.mjs';

const VACATE_DELAY_MS = 2000;
const MEMBER_EVENTS = ['member_added', 'member_removed'];

describe("the cluster's webhooks on three nodes", () => {
  let cluster;
  let port;
  // The receiver is stopped and started again at the same URL: every one it was.
  const receivers = [];
  let mode = 'ok';
  const answer = () => ({ ok: 200, fail: 500, hang: null })[mode];
  // The events of the requests the receiver took (answered 200), in arrival order.
  const events = () =>
    receivers.flatMap((r) => r.requests.filter((q) => q.valid && q.status === 200).flatMap((q) => q.events));
  const named = (name, channel) => events().filter((e) => e.name === name && e.channel === channel);

  before(async () => {
    port = await freePort();
    receivers.push(await startReceiver(DEFAULT_APP, { port, answer }));
    cluster = await startCluster(3, {
      apps: [
        {
          ...DEFAULT_APP,
          webhooks: [
            {
              url: receivers[0].url,
              event_types: ['channel_occupied', 'channel_vacated', 'subscription_count', ...MEMBER_EVENTS],
            },
          ],
          webhook_delivery: {
            batch_window_ms: 50,
            batch_max_events: 100,
            vacate_delay_ms: VACATE_DELAY_MS,
            timeout_ms: 1000,
            max_backoff_ms: 2000,
          },
        },
      ],
    });
  });
  after(async () => {
    await cluster?.cleanup();
    for (const r of receivers) await r.close();
  });

  /** A raw connection to node `id` whose user `user` has joined `channel`. */
  async function join(id, channel, user) {
    const node = cluster.node(id);
    const rc = await node.rawConnected();
    const channelData = JSON.stringify({ user_id: user });
    rc.send({
      event: 'pusher:subscribe',
      data: { channel, auth: presenceAuth(node.app, rc.socketId, channel, channelData), channel_data: channelData },
    });
    const m = await rc.next((f) => f.channel === channel && f.event.includes('subscription'), { timeout: 20000 });
    assert.equal(m.event, 'pusher_internal:subscription_succeeded', JSON.stringify(m));
    return rc;
  }

  /**
   * A member of `channel` on node `id` that watches others join: a presence subscriber hears of a
   * user on another node only once the cluster has committed the join. `awaitJoined(users)`
   * waits for that; leaving before it could make a join and a leave one net change, none.
   */
  async function watcher(id, channel) {
    const rc = await join(id, channel, `watcher-${id}`);
    return {
      rc,
      async awaitJoined(users) {
        const joined = () =>
          new Set(rc.messages.filter((m) => m.event === 'pusher_internal:member_added').map((m) => JSON.parse(m.data).user_id));
        await eventually(() => users.every((u) => joined().has(u)), {
          timeout: 20000,
          interval: 50,
          what: `node ${id} to see ${users.length} users join ${channel}`,
        });
      },
    };
  }

  const isWatcher = (e) => e.user_id?.startsWith('watcher-');

  test('one channel_occupied and one channel_vacated per channel; a user on two nodes joins and leaves once', async () => {
    const clients = [];
    for (const id of [1, 2, 3]) {
      const c = await cluster.node(id).connectedClient();
      await subscribeOk(c, 'everywhere');
      clients.push(c);
    }
    const counts = () => named('subscription_count', 'everywhere').map((e) => e.subscription_count);
    await eventually(() => counts().includes(3), { timeout: 10000, what: 'the count of all three nodes' });
    // pusher-js: alice in a tab on node 1 and another on node 2, bob on node 3.
    const inPresence = async (id, user) => {
      const client = await cluster.node(id).connectedClient({ user: { id: user } });
      await subscribeOk(client, 'presence-two-nodes');
      return { close: () => client.disconnect() };
    };
    const alice1 = await inPresence(1, 'alice');
    const alice2 = await inPresence(2, 'alice');
    const bob = await inPresence(3, 'bob');
    await eventually(() => named('member_added', 'presence-two-nodes').length === 2, { timeout: 10000, what: 'two members added' });
    alice1.close();
    bob.close();
    await eventually(() => named('member_removed', 'presence-two-nodes').length === 1, { timeout: 10000, what: 'bob removed' });
    assert.equal(named('member_removed', 'presence-two-nodes')[0].user_id, 'bob', 'alice is still there on node 2');
    alice2.close();
    for (const c of clients) c.disconnect();
    await eventually(
      () =>
        named('channel_vacated', 'everywhere').length === 1 &&
        named('member_removed', 'presence-two-nodes').length === 2 &&
        named('channel_vacated', 'presence-two-nodes').length === 1,
      { timeout: 10000 + VACATE_DELAY_MS, what: 'everything vacated and alice gone' },
    );
    assert.equal(named('channel_occupied', 'everywhere').length, 1, 'one channel_occupied for three nodes');
    await eventually(() => counts().at(-1) === 0, { timeout: 10000, what: 'a count of 0 at last' });
    assert.equal(named('channel_occupied', 'presence-two-nodes').length, 1);
    assert.deepEqual(
      named('member_added', 'presence-two-nodes').map((e) => e.user_id).sort(),
      ['alice', 'bob'],
    );
    assert.ok(receivers.every((r) => r.requests.every((q) => q.valid)), 'valid for the Node SDK');
  });

  test('a subscriber that moves to another node within the vacate delay sends neither vacated nor occupied again', async () => {
    const leader = await cluster.leaderSeenBy(1);
    const waiting = async () =>
      metric(await cluster.node(leader).metrics(), 'chorus_webhooks_queued', { webhook: 0, stream: 'cluster' });
    const before = await cluster.node(2).connectedClient();
    await subscribeOk(before, 'moving');
    await eventually(() => named('channel_occupied', 'moving').length === 1, { timeout: 10000, what: 'moving occupied' });
    before.disconnect();
    // The vacate is committed and waits out its delay on the leader: then the page comes back,
    // on another node.
    await eventually(async () => (await waiting()) >= 1, { what: "moving's vacate to wait on the leader" });
    const after = await cluster.node(3).connectedClient();
    await subscribeOk(after, 'moving');

    const control = await cluster.node(1).connectedClient();
    await subscribeOk(control, 'moving-control');
    await eventually(() => named('channel_occupied', 'moving-control').length === 1, { timeout: 10000, what: 'control occupied' });
    control.disconnect();
    await eventually(() => named('channel_vacated', 'moving-control').length === 1, {
      timeout: 10000 + VACATE_DELAY_MS,
      what: 'the control vacated, after where moving would have been',
    });
    assert.equal(named('channel_vacated', 'moving').length, 0, 'no channel_vacated');
    assert.equal(named('channel_occupied', 'moving').length, 1, 'no second channel_occupied');
    after.disconnect();
    await eventually(() => named('channel_vacated', 'moving').length === 1, {
      timeout: 10000 + VACATE_DELAY_MS,
      what: 'moving vacated once its subscriber is gone for good',
    });
  });

  test('everything waits while the receiver refuses, answers 500, then hangs for a minute; then all of it comes, in order per channel', async () => {
    const channels = ['presence-outage-a', 'presence-outage-b', 'presence-outage-c'];
    const expected = new Map(channels.map((c) => [c, []]));
    const watchers = new Map();
    for (const channel of channels) watchers.set(channel, await watcher(1, channel));
    let n = 0;
    // One user joins then leaves each channel in turn, from a node in turn, for `ms`.
    async function churn(ms) {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        const channel = channels[n % channels.length];
        const user = `u${n}`;
        const rc = await join((n % 2) + 2, channel, user);
        await watchers.get(channel).awaitJoined([user]);
        rc.close();
        await rc.waitClosed();
        expected.get(channel).push(`member_added:${user}`, `member_removed:${user}`);
        n += 1;
        await sleep(1000);
      }
    }
    await receivers[0].close();
    await churn(Number(process.env.WEBHOOK_OUTAGE_PHASE_MS ?? 20000));
    mode = 'fail';
    receivers.push(await startReceiver(DEFAULT_APP, { port, answer }));
    await churn(Number(process.env.WEBHOOK_OUTAGE_PHASE_MS ?? 20000));
    mode = 'hang';
    await churn(Number(process.env.WEBHOOK_OUTAGE_PHASE_MS ?? 20000));
    const arrivedBefore = events().filter((e) => channels.includes(e.channel)).length;
    mode = 'ok';
    const firsts = () => {
      const seen = new Set();
      return events().filter(
        (e) => channels.includes(e.channel) && MEMBER_EVENTS.includes(e.name) && !isWatcher(e) && !seen.has(e.id) && seen.add(e.id),
      );
    };
    try {
      await eventually(() => firsts().length === n * 2, { timeout: 30000, what: `all ${n * 2} membership changes` });
    } catch (e) {
      for (const node of cluster.nodes) {
        const text = await node.metrics().catch(() => '');
        console.log(`# node ${node.id}: ${text.split('\n').filter((l) => l.startsWith('chorus_webhook')).join('\n# ')}`);
      }
      console.log(`# arrived ${firsts().length} of ${n * 2}; requests ${receivers.map((r) => r.requests.length)}`);
      throw e;
    }
    assert.equal(arrivedBefore, 0, 'nothing was taken while the receiver was down');
    for (const channel of channels) {
      const got = firsts()
        .filter((e) => e.channel === channel)
        .map((e) => `${e.name}:${e.user_id}`);
      assert.deepEqual(got, expected.get(channel), `${channel} in the order committed`);
    }
    const failing = receivers[1].requests.filter((r) => r.status !== 200).length;
    assert.ok(failing >= 2, `the receiver answered 500 or hung ${failing} times`);
    for (const w of watchers.values()) w.rc.close();
  });

  test('kill -9 of the leader during 1000 membership changes: every change arrives, a repeat with the same id', async () => {
    const leader = await cluster.leaderSeenBy(1);
    assert.ok(leader, 'a leader');
    const [joinsOn, watchesOn] = [1, 2, 3].filter((id) => id !== leader);
    const channel = 'presence-burst';
    const watching = await watcher(watchesOn, channel);
    const USERS = 500;
    const WAVE = 25;
    for (let wave = 0; wave < USERS / WAVE; wave++) {
      if (wave === 6) {
        const killed = cluster.node(leader);
        killed.proc.kill('SIGKILL');
        await withTimeout(killed.exited, 10000, 'the leader to die');
      }
      const users = Array.from({ length: WAVE }, (_, i) => `b${wave * WAVE + i}`);
      const joined = await Promise.all(users.map((user) => join(joinsOn, channel, user)));
      await watching.awaitJoined(users);
      for (const rc of joined) rc.close();
      await Promise.all(joined.map((rc) => rc.waitClosed()));
    }
    const ids = new Map();
    const arrived = () => {
      ids.clear();
      for (const e of events()) {
        if (e.channel !== channel || !MEMBER_EVENTS.includes(e.name) || isWatcher(e)) continue;
        const change = `${e.name}:${e.user_id}`;
        if (!ids.has(change)) ids.set(change, new Set());
        ids.get(change).add(e.id);
      }
      return ids.size;
    };
    try {
      await eventually(() => arrived() === USERS * 2, { timeout: 60000, interval: 200, what: 'all 1000 changes' });
    } catch (e) {
      const missing = [];
      for (let i = 0; i < USERS; i++) for (const name of MEMBER_EVENTS) if (!ids.has(`${name}:b${i}`)) missing.push(`${name}:b${i}`);
      console.log(`# DIAG missing ${missing.length}: ${missing.slice(0, 40)}`);
      for (const q of receivers.flatMap((r) => r.requests)) {
        console.log(`# DIAG req valid=${q.valid} status=${q.status} n=${q.events.length} ${q.events.map((e) => `${e.name.slice(0, 8)}:${e.user_id ?? ''}:${e.id}`).join(',').slice(0, 300)}`);
      }
      for (const id of [joinsOn, watchesOn]) {
        const text = await cluster.node(id).metrics().catch(() => '');
        console.log(`# DIAG node ${id}: ${text.split('\n').filter((l) => l.startsWith('chorus_webhooks_')).join(' | ')}`);
        console.log(`# DIAG node ${id} leader ${await cluster.leaderSeenBy(id)}`);
      }
      throw e;
    }
    for (const [change, seen] of ids) {
      assert.equal(seen.size, 1, `${change} came with ids ${[...seen]}`);
    }
    const all = events().filter((e) => e.channel === channel && MEMBER_EVENTS.includes(e.name) && !isWatcher(e));
    console.log(`# ${all.length} member webhooks for 1000 changes (${all.length - 1000} sent again)`);
    watching.rc.close();
  });
});
