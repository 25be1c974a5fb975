// A cluster of three chorus processes with the real clients: an event the Node SDK triggers on
// one node reaches pusher-js clients connected to the others, in order; a pusher-js client
// event on one node reaches a pusher-js client on another and is not echoed to its sender;
// pusher-js presence members on different nodes see one list, with single member_added and
// member_removed events; the Node SDK's channel queries on any node count the subscribers and
// users of every node.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { subscribeOk, once, record, eventually, sleep } from './harness.mjs';
import { startCluster } from './cluster.mjs';

describe('cluster', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(3);
  });
  after(async () => {
    await cluster?.cleanup();
  });

  test('an event triggered on node 1 reaches pusher-js on nodes 2 and 3, in order', async () => {
    const on2 = await cluster.node(2).connectedClient();
    const on3 = await cluster.node(3).connectedClient();
    const got2 = record(await subscribeOk(on2, 'scores'), 'goal');
    const got3 = record(await subscribeOk(on3, 'scores'), 'goal');
    await cluster.awaitInterest(1, 'scores', [2, 3]);
    const sdk = cluster.node(1).sdk();
    const sent = [];
    for (let n = 0; n < 100; n++) {
      sent.push({ n });
      await sdk.trigger('scores', 'goal', { n });
    }
    await eventually(() => got2.items.length >= 100 && got3.items.length >= 100, {
      what: 'every event on nodes 2 and 3',
    });
    assert.deepEqual(got2.items, sent);
    assert.deepEqual(got3.items, sent);
    on2.disconnect();
    on3.disconnect();
  });

  test('a pusher-js client event on node 2 reaches node 3 and not its sender', async () => {
    const sender = await cluster.node(2).connectedClient();
    const receiver = await cluster.node(3).connectedClient();
    const mine = await subscribeOk(sender, 'private-room');
    const theirs = await subscribeOk(receiver, 'private-room');
    await cluster.awaitInterest(2, 'private-room', [2, 3]);
    const echo = record(mine, 'client-typing');
    const got = once(theirs, 'client-typing');
    assert.equal(mine.trigger('client-typing', { who: 'sender' }), true);
    assert.deepEqual(await got, { who: 'sender' });
    await sleep(300);
    assert.deepEqual(echo.items, [], 'the sender must not get its own client event');
    sender.disconnect();
    receiver.disconnect();
  });

  test('pusher-js presence members on nodes 1, 2 and 3 see one list and single events', async () => {
    const members = (channel) => {
      const all = {};
      channel.members.each((m) => (all[m.id] = m.info));
      return all;
    };
    const alice = await cluster.node(1).connectedClient({ user: { id: 'alice', info: { name: 'Alice' } } });
    const roomA = await subscribeOk(alice, 'presence-lobby');
    const addedA = record(roomA, 'pusher:member_added');
    const removedA = record(roomA, 'pusher:member_removed');
    const bob = await cluster.node(2).connectedClient({ user: { id: 'bob', info: { name: 'Bob' } } });
    const roomB = await subscribeOk(bob, 'presence-lobby');
    const carol = await cluster.node(3).connectedClient({ user: { id: 'carol', info: { name: 'Carol' } } });
    const roomC = await subscribeOk(carol, 'presence-lobby');
    const everyone = { alice: { name: 'Alice' }, bob: { name: 'Bob' }, carol: { name: 'Carol' } };
    for (const room of [roomA, roomB, roomC]) {
      await eventually(() => room.members.count === 3, { what: 'three members everywhere' });
      assert.deepEqual(members(room), everyone);
    }
    assert.deepEqual(addedA.items.map((m) => m.id).sort(), ['bob', 'carol']);

    const removedB = record(roomB, 'pusher:member_removed');
    carol.disconnect();
    await eventually(() => removedA.items.length === 1 && removedB.items.length === 1, {
      what: 'carol to leave on nodes 1 and 2',
    });
    assert.equal(removedA.items[0].id, 'carol');
    await sleep(300);
    assert.equal(removedA.items.length, 1, 'one member_removed');
    assert.deepEqual(members(roomB), { alice: { name: 'Alice' }, bob: { name: 'Bob' } });
    alice.disconnect();
    bob.disconnect();
  });

  test('the Node SDK reads channel info of the whole cluster from any node', async () => {
    const clients = [];
    for (const [id, user] of [[1, 'ann'], [2, 'bob'], [3, 'ann']]) {
      const client = await cluster.node(id).connectedClient({ user: { id: user, info: {} } });
      await subscribeOk(client, 'presence-lobby');
      await subscribeOk(client, 'lobby-news');
      clients.push(client);
    }
    // The cluster has formed and every node knows the others.
    for (const id of [1, 2, 3]) await cluster.awaitInterest(id, 'lobby-news', [1, 2, 3]);
    for (const id of [1, 2, 3]) {
      const sdk = cluster.node(id).sdk();
      const get = async (path, params) => (await sdk.get({ path, params })).json();
      assert.deepEqual(
        await get('/channels', { filter_by_prefix: 'presence-lobby', info: 'user_count' }),
        { channels: { 'presence-lobby': { user_count: 2 } } },
        `node ${id}`,
      );
      assert.deepEqual(
        await get('/channels/lobby-news', { info: 'subscription_count' }),
        { occupied: true, subscription_count: 3 },
        `node ${id}`,
      );
      const { users } = await get('/channels/presence-lobby/users');
      assert.deepEqual(users.map((u) => u.id).sort(), ['ann', 'bob'], `node ${id}`);
    }
    for (const client of clients) client.disconnect();
  });
});
