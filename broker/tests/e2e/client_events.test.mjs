// Client events (client-*): delivery, no echo, presence user_id, rejections, rate limit.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  record,
  frameData,
  privateAuth,
  presenceAuth,
  sleep,
  eventually,
  withTimeout,
  WAIT_MS,
} from './harness.mjs';

describe('client events', () => {
  let server;
  before(async () => {
    server = await startChorus({ limits: { client_events_per_sec: 3 } });
  });
  after(async () => {
    await server?.cleanup();
  });

  test('private channel: delivered to the other subscribers, not echoed to the sender (pusher-js)', async () => {
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    const c = await server.connectedClient();
    const chA = await subscribeOk(a, 'private-chat');
    const chB = await subscribeOk(b, 'private-chat');
    const chC = await subscribeOk(c, 'private-chat');
    const echo = record(chA, 'client-typing');
    const gotB = once(chB, 'client-typing');
    const gotC = once(chC, 'client-typing');
    assert.equal(chA.trigger('client-typing', { who: 'a' }), true);
    assert.deepEqual(await gotB, { who: 'a' });
    assert.deepEqual(await gotC, { who: 'a' });
    await server.control(a);
    assert.deepEqual(echo.items, [], 'the sender must not get its own client event');
    for (const x of [a, b, c]) x.disconnect();
  });

  test('client event frame on the wire: event, channel, data; no user_id on private', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    await a.subscribeOk('private-wire', { auth: privateAuth(server.app, a.socketId, 'private-wire') });
    await b.subscribeOk('private-wire', { auth: privateAuth(server.app, b.socketId, 'private-wire') });
    a.send({ event: 'client-move', channel: 'private-wire', data: { x: 1, y: 2 } });
    const m = await b.next('client-move');
    assert.equal(m.channel, 'private-wire');
    assert.deepEqual(frameData(m), { x: 1, y: 2 });
    assert.equal(m.user_id, undefined);
    a.close();
    b.close();
  });

  test('presence channel: the server adds user_id (pusher-js metadata and raw frame)', async () => {
    const alice = await server.connectedClient({ user: { id: 'alice', info: {} } });
    const bob = await server.connectedClient({ user: { id: 'bob', info: {} } });
    const chA = await subscribeOk(alice, 'presence-chat');
    const chB = await subscribeOk(bob, 'presence-chat');
    const got = new Promise((resolve) => chB.bind('client-hi', (data, meta) => resolve({ data, meta })));
    const echo = record(chA, 'client-hi');
    chA.trigger('client-hi', { text: 'hello' });
    const { data, meta } = await withTimeout(got, WAIT_MS, 'client-hi at bob');
    assert.deepEqual(data, { text: 'hello' });
    assert.equal(meta?.user_id, 'alice');
    await server.control(alice);
    assert.deepEqual(echo.items, []);

    // raw: the frame has top-level user_id
    const raw = await server.rawConnected();
    const cd = JSON.stringify({ user_id: 'rawuser', user_info: {} });
    await raw.subscribeOk('presence-chat', { auth: presenceAuth(server.app, raw.socketId, 'presence-chat', cd), channel_data: cd });
    chB.trigger('client-hi', { text: 'from bob' });
    const m = await raw.next('client-hi');
    assert.equal(m.user_id, 'bob');
    assert.equal(m.channel, 'presence-chat');
    assert.deepEqual(frameData(m), { text: 'from bob' });
    alice.disconnect();
    bob.disconnect();
    raw.close();
  });

  test('a client cannot spoof user_id on a presence channel', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    const cda = JSON.stringify({ user_id: 'honest', user_info: {} });
    const cdb = JSON.stringify({ user_id: 'bystander', user_info: {} });
    await a.subscribeOk('presence-spoof', { auth: presenceAuth(server.app, a.socketId, 'presence-spoof', cda), channel_data: cda });
    await b.subscribeOk('presence-spoof', { auth: presenceAuth(server.app, b.socketId, 'presence-spoof', cdb), channel_data: cdb });
    a.send({ event: 'client-x', channel: 'presence-spoof', data: {}, user_id: 'admin' });
    const m = await b.next('client-x');
    assert.equal(m.user_id, 'honest');
    a.close();
    b.close();
  });

  test('public channel: rejected with pusher:error 4009 and not delivered', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    await a.subscribeOk('public-room');
    await b.subscribeOk('public-room');
    a.send({ event: 'client-nope', channel: 'public-room', data: {} });
    const err = await a.next('pusher:error');
    assert.equal(frameData(err).code, 4009);
    assert.equal(typeof frameData(err).message, 'string');
    await server.control(b);
    assert.deepEqual(b.all('client-nope'), []);
    await a.ping(); // still connected
    a.close();
    b.close();
  });

  test('pusher-js trigger on a public channel gets a 4009 error from the server', async () => {
    const a = await server.connectedClient();
    const ch = await subscribeOk(a, 'public-js');
    const err = once(a.connection, 'error', { filter: (e) => (e?.data?.code ?? e?.error?.data?.code) === 4009 });
    ch.trigger('client-nope', {});
    await err;
    a.disconnect();
  });

  test('private-encrypted channel: client events rejected with 4009', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    const ch = 'private-encrypted-ce';
    await a.subscribeOk(ch, { auth: privateAuth(server.app, a.socketId, ch) });
    await b.subscribeOk(ch, { auth: privateAuth(server.app, b.socketId, ch) });
    a.send({ event: 'client-secret', channel: ch, data: { nonce: 'x', ciphertext: 'y' } });
    const err = await a.next('pusher:error');
    assert.equal(frameData(err).code, 4009);
    await server.control(b);
    assert.deepEqual(b.all('client-secret'), []);
    a.close();
    b.close();
  });

  test('private channel the socket has not joined: rejected with 4009', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    await b.subscribeOk('private-notjoined', { auth: privateAuth(server.app, b.socketId, 'private-notjoined') });
    a.send({ event: 'client-sneak', channel: 'private-notjoined', data: {} });
    const err = await a.next('pusher:error');
    assert.equal(frameData(err).code, 4009);
    await server.control(b);
    assert.deepEqual(b.all('client-sneak'), []);
    a.close();
    b.close();
  });

  test('over client_events_per_sec: pusher:error 4301 and the extra events are dropped', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    await a.subscribeOk('private-burst', { auth: privateAuth(server.app, a.socketId, 'private-burst') });
    await b.subscribeOk('private-burst', { auth: privateAuth(server.app, b.socketId, 'private-burst') });
    const N = 10;
    for (let i = 0; i < N; i++) a.send({ event: 'client-burst', channel: 'private-burst', data: { i } });
    await a.next((m) => m.event === 'pusher:error' && frameData(m).code === 4301);
    await sleep(700);
    const delivered = b.all('client-burst').length;
    const limited = a.all((m) => m.event === 'pusher:error' && frameData(m).code === 4301).length;
    assert.ok(delivered >= 1, 'the first events within the limit are delivered');
    assert.ok(delivered <= 6, `at most two windows' worth delivered, got ${delivered}`);
    assert.ok(delivered + limited <= N, `delivered ${delivered} + limited ${limited} <= ${N}`);
    await a.ping(); // connection stays open
    // after the window passes, events flow again
    await sleep(1100);
    a.send({ event: 'client-later', channel: 'private-burst', data: {} });
    await b.next('client-later');
    a.close();
    b.close();
  });

  test('client event name must start with client-: a non-client event from a client is not delivered', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    await a.subscribeOk('private-names', { auth: privateAuth(server.app, a.socketId, 'private-names') });
    await b.subscribeOk('private-names', { auth: privateAuth(server.app, b.socketId, 'private-names') });
    a.send({ event: 'server-like', channel: 'private-names', data: {} });
    await a.next('pusher:error');
    await server.control(b);
    assert.deepEqual(b.all('server-like'), []);
    a.close();
    b.close();
  });
});
