// Presence channels: member lists, member_added/member_removed on zero crossings, limits.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  record,
  frameData,
  presenceAuth,
  sleep,
  eventually,
} from './harness.mjs';

function members(ch) {
  const out = {};
  ch.members.each((m) => (out[m.id] = m.info));
  return out;
}

async function rawPresence(server, channel, user, extra = {}) {
  const rc = await server.rawConnected();
  const channelData = JSON.stringify(user);
  const m = await rc.subscribe(channel, {
    auth: presenceAuth(server.app, rc.socketId, channel, channelData),
    channel_data: channelData,
    ...extra,
  });
  return { rc, m };
}

describe('presence', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus({ limits: { max_presence_members: 3, max_user_info_bytes: 200 } });
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('subscription_succeeded carries ids, hash and count (raw)', async () => {
    const { rc: a, m: ma } = await rawPresence(server, 'presence-raw', { user_id: 'alice', user_info: { name: 'Alice' } });
    assert.equal(ma.event, 'pusher_internal:subscription_succeeded');
    assert.deepEqual(frameData(ma), { presence: { ids: ['alice'], hash: { alice: { name: 'Alice' } }, count: 1 } });
    const { rc: b, m: mb } = await rawPresence(server, 'presence-raw', { user_id: 'bob', user_info: { name: 'Bob' } });
    const d = frameData(mb).presence;
    assert.deepEqual([...d.ids].sort(), ['alice', 'bob']);
    assert.deepEqual(d.hash, { alice: { name: 'Alice' }, bob: { name: 'Bob' } });
    assert.equal(d.count, 2);
    const added = await a.next('pusher_internal:member_added');
    assert.equal(added.channel, 'presence-raw');
    assert.deepEqual(frameData(added), { user_id: 'bob', user_info: { name: 'Bob' } });
    b.close();
    const removed = await a.next('pusher_internal:member_removed');
    assert.deepEqual(frameData(removed), { user_id: 'bob' });
    a.close();
  });

  test('pusher-js: members list, me, member_added and member_removed', async () => {
    const alice = await server.connectedClient({ user: { id: 'alice', info: { name: 'Alice' } } });
    const chA = await subscribeOk(alice, 'presence-room');
    assert.equal(chA.members.count, 1);
    assert.equal(chA.members.me.id, 'alice');
    assert.deepEqual(chA.members.me.info, { name: 'Alice' });

    const added = once(chA, 'pusher:member_added');
    const bob = await server.connectedClient({ user: { id: 'bob', info: { name: 'Bob' } } });
    const chB = await subscribeOk(bob, 'presence-room');
    assert.deepEqual(members(chB), { alice: { name: 'Alice' }, bob: { name: 'Bob' } });
    assert.deepEqual(await added, { id: 'bob', info: { name: 'Bob' } });
    assert.equal(chA.members.count, 2);

    const removed = once(chA, 'pusher:member_removed');
    bob.disconnect();
    assert.deepEqual((await removed).id, 'bob');
    assert.equal(chA.members.count, 1);
    alice.disconnect();
  });

  test('second connection of the same user: no member_added; member_removed only after the last leaves', async () => {
    const watcher = await server.connectedClient({ user: { id: 'watcher', info: {} } });
    const ch = await subscribeOk(watcher, 'presence-multi');
    const adds = record(ch, 'pusher:member_added');
    const removes = record(ch, 'pusher:member_removed');

    const c1 = await server.connectedClient({ user: { id: 'carol', info: { n: 1 } } });
    await subscribeOk(c1, 'presence-multi');
    await eventually(() => adds.items.length === 1, { what: 'member_added for carol' });

    const c2 = await server.connectedClient({ user: { id: 'carol', info: { n: 1 } } });
    const ch2 = await subscribeOk(c2, 'presence-multi');
    // The positive control of each check that nothing came: a member joining now reaches the
    // watcher, and leaving, leaves.
    let controls = 0;
    const control = async () => {
      const id = `control-${++controls}`;
      const c = await server.connectedClient({ user: { id, info: {} } });
      await subscribeOk(c, 'presence-multi');
      await eventually(() => adds.items.some((m) => m.id === id), { what: `member_added for ${id}` });
      c.disconnect();
      await eventually(() => removes.items.some((m) => m.id === id), { what: `member_removed for ${id}` });
    };
    const ids = (items) => items.map((m) => m.id).filter((id) => !id.startsWith('control-'));
    // the second connection sees two distinct users, carol once
    assert.equal(ch2.members.count, 2);
    await sleep(400);
    await control();
    assert.deepEqual(ids(adds.items), ['carol'], `no second member_added: ${JSON.stringify(adds.items)}`);

    c1.disconnect();
    await sleep(500);
    await control();
    assert.deepEqual(ids(removes.items), [], 'carol is still connected once: no member_removed');
    assert.equal(ch.members.count, 2);

    c2.disconnect();
    await eventually(() => ids(removes.items).length === 1, { what: 'member_removed for carol' });
    assert.deepEqual(ids(removes.items), ['carol']);
    await sleep(300);
    await control();
    assert.deepEqual(ids(removes.items), ['carol']);
    watcher.disconnect();
  });

  test('same user twice on one channel: REST users lists it once and user_count counts users', async () => {
    const a = await server.connectedClient({ user: { id: 'dup', info: {} } });
    const b = await server.connectedClient({ user: { id: 'dup', info: {} } });
    await subscribeOk(a, 'presence-count');
    await subscribeOk(b, 'presence-count');
    const users = await (await sdk.get({ path: '/channels/presence-count/users' })).json();
    assert.deepEqual(users, { users: [{ id: 'dup' }] });
    const info = await (
      await sdk.get({ path: '/channels/presence-count', params: { info: 'user_count,subscription_count' } })
    ).json();
    assert.equal(info.occupied, true);
    assert.equal(info.user_count, 1);
    assert.equal(info.subscription_count, 2);
    a.disconnect();
    b.disconnect();
  });

  test('unsubscribe (not disconnect) also removes the member', async () => {
    const a = await server.connectedClient({ user: { id: 'stay', info: {} } });
    const chA = await subscribeOk(a, 'presence-unsub');
    const b = await server.connectedClient({ user: { id: 'leaver', info: {} } });
    await subscribeOk(b, 'presence-unsub');
    await eventually(() => chA.members.count === 2, { what: 'two members' });
    const removed = once(chA, 'pusher:member_removed');
    b.unsubscribe('presence-unsub');
    assert.equal((await removed).id, 'leaver');
    a.disconnect();
    b.disconnect();
  });

  test('presence over max_presence_members: LimitReached 403; an existing user may add a connection', async () => {
    const clients = [];
    for (const id of ['p1', 'p2', 'p3']) {
      const c = await server.connectedClient({ user: { id, info: {} } });
      await subscribeOk(c, 'presence-full');
      clients.push(c);
    }
    const extra = await server.connectedClient({ user: { id: 'p4', info: {} } });
    const err = await once(extra.subscribe('presence-full'), 'pusher:subscription_error');
    assert.equal(err.type, 'LimitReached');
    assert.equal(err.status, 403);

    // same user again is not a new member
    const again = await server.connectedClient({ user: { id: 'p1', info: {} } });
    await subscribeOk(again, 'presence-full');

    // after one leaves there is room
    clients[2].disconnect();
    await eventually(
      async () => {
        const r = await (await sdk.get({ path: '/channels/presence-full/users' })).json();
        return r.users.length === 2;
      },
      { what: 'p3 to leave' },
    );
    const late = await server.connectedClient({ user: { id: 'p5', info: {} } });
    await subscribeOk(late, 'presence-full');
    for (const c of [...clients, extra, again, late]) c.disconnect();
  });

  test('user_info over max_user_info_bytes: InvalidChannelData 400', async () => {
    const { rc, m } = await rawPresence(server, 'presence-bigInfo', { user_id: 'big', user_info: { blob: 'x'.repeat(500) } });
    assert.equal(m.event, 'pusher:subscription_error');
    const d = frameData(m);
    assert.equal(d.type, 'InvalidChannelData', JSON.stringify(d));
    assert.equal(d.status, 400);
    rc.close();
  });

  test('channel_data that is not JSON / has no user_id: InvalidChannelData 400', async () => {
    for (const channelData of ['not json', JSON.stringify({ user_info: {} })]) {
      const rc = await server.rawConnected();
      const m = await rc.subscribe('presence-bad', {
        auth: presenceAuth(server.app, rc.socketId, 'presence-bad', channelData),
        channel_data: channelData,
      });
      assert.equal(m.event, 'pusher:subscription_error', JSON.stringify(m));
      const d = frameData(m);
      assert.equal(d.type, 'InvalidChannelData', `${channelData}: ${JSON.stringify(d)}`);
      assert.equal(d.status, 400);
      rc.close();
    }
  });

  test('user_id over max_user_id_len (128): InvalidChannelData 400; exactly 128 is fine', async () => {
    const { rc, m } = await rawPresence(server, 'presence-longid', { user_id: 'u'.repeat(129), user_info: {} });
    assert.equal(m.event, 'pusher:subscription_error', JSON.stringify(m));
    assert.equal(frameData(m).type, 'InvalidChannelData');
    assert.equal(frameData(m).status, 400);
    rc.close();
    const ok = await rawPresence(server, 'presence-longid', { user_id: 'u'.repeat(128), user_info: {} });
    assert.equal(ok.m.event, 'pusher_internal:subscription_succeeded', JSON.stringify(ok.m));
    ok.rc.close();
  });

  test('channel_data without user_info is accepted', async () => {
    const { rc, m } = await rawPresence(server, 'presence-noinfo', { user_id: 'bare' });
    assert.equal(m.event, 'pusher_internal:subscription_succeeded', JSON.stringify(m));
    const p = frameData(m).presence;
    assert.deepEqual(p.ids, ['bare']);
    assert.equal(p.count, 1);
    assert.ok('bare' in p.hash);
    rc.close();
  });

  test('subscribing to the same presence channel twice on one socket counts once', async () => {
    const watcher = await server.connectedClient({ user: { id: 'w2', info: {} } });
    const ch = await subscribeOk(watcher, 'presence-dupsub');
    const adds = record(ch, 'pusher:member_added');
    const removes = record(ch, 'pusher:member_removed');
    const { rc, m } = await rawPresence(server, 'presence-dupsub', { user_id: 'twice', user_info: {} });
    assert.equal(m.event, 'pusher_internal:subscription_succeeded');
    const cd = JSON.stringify({ user_id: 'twice', user_info: {} });
    rc.send({
      event: 'pusher:subscribe',
      data: { channel: 'presence-dupsub', auth: presenceAuth(server.app, rc.socketId, 'presence-dupsub', cd), channel_data: cd },
    });
    await rc.ping();
    const info = await (
      await sdk.get({ path: '/channels/presence-dupsub', params: { info: 'user_count,subscription_count' } })
    ).json();
    assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 2 });
    rc.send({ event: 'pusher:unsubscribe', data: { channel: 'presence-dupsub' } });
    await eventually(() => removes.items.length === 1, { what: 'member_removed after one unsubscribe' });
    assert.equal(adds.items.length, 1);
    rc.close();
    watcher.disconnect();
  });

  test('an abrupt disconnect (TCP reset, no close frame) still removes the member', async () => {
    const watcher = await server.connectedClient({ user: { id: 'w3', info: {} } });
    const ch = await subscribeOk(watcher, 'presence-abrupt');
    const added = once(ch, 'pusher:member_added');
    const { rc, m } = await rawPresence(server, 'presence-abrupt', { user_id: 'crasher', user_info: {} });
    assert.equal(m.event, 'pusher_internal:subscription_succeeded');
    await added;
    const removed = once(ch, 'pusher:member_removed', { timeout: 5000 });
    rc.ws.terminate();
    assert.equal((await removed).id, 'crasher');
    watcher.disconnect();
  });

  test('numeric user_id is accepted and listed as a string id', async () => {
    const { rc, m } = await rawPresence(server, 'presence-num', { user_id: 42, user_info: {} });
    assert.equal(m.event, 'pusher_internal:subscription_succeeded', JSON.stringify(m));
    const ids = frameData(m).presence.ids.map(String);
    assert.deepEqual(ids, ['42']);
    rc.close();
  });
});
