// Subscriptions to every channel kind, auth failures, cache channels.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  frameData,
  privateAuth,
  presenceAuth,
  collectFor,
  WAIT_MS,
} from './harness.mjs';

describe('channel subscriptions', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus({ limits: { max_subscriptions_per_connection: 5 } });
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('public channel: subscription_succeeded with data "{}" and events arrive (pusher-js)', async () => {
    const c = await server.connectedClient();
    const raw = await server.rawConnected();
    const m = await raw.subscribeOk('public-one');
    assert.deepEqual(frameData(m), {});
    const ch = await subscribeOk(c, 'public-one');
    const got = once(ch, 'greeting');
    await sdk.trigger('public-one', 'greeting', { hello: 'world' });
    assert.deepEqual(await got, { hello: 'world' });
    const rawGot = await raw.next('greeting');
    assert.equal(rawGot.channel, 'public-one');
    assert.equal(typeof rawGot.data, 'string');
    assert.deepEqual(JSON.parse(rawGot.data), { hello: 'world' });
    c.disconnect();
    raw.close();
  });

  test('private channel with SDK-signed auth (pusher-js)', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'private-orders');
    const got = once(ch, 'created');
    await sdk.trigger('private-orders', 'created', { id: 7 });
    assert.deepEqual(await got, { id: 7 });
    c.disconnect();
  });

  test('private channel with forged auth (wrong secret): subscription_error AuthError 401', async () => {
    const forger = server.sdk({ ...server.app, secret: 'not-the-real-secret' });
    const c = await server.connectedClient({ signer: forger });
    const ch = c.subscribe('private-forged');
    const err = await once(ch, 'pusher:subscription_error');
    assert.equal(err.type, 'AuthError');
    assert.equal(err.status, 401);
    assert.equal(typeof err.error, 'string');
    assert.equal(ch.subscribed, false);
    // nothing published afterwards reaches it
    const items = collectFor(500, ch, 'leak');
    await sdk.trigger('private-forged', 'leak', {});
    await server.control(c);
    assert.deepEqual(await items, []);
    c.disconnect();
  });

  test('private channel with auth signed for another socket: AuthError 401 (raw)', async () => {
    const rc = await server.rawConnected();
    const m = await rc.subscribe('private-x', { auth: privateAuth(server.app, '1.1', 'private-x') });
    assert.equal(m.event, 'pusher:subscription_error');
    assert.deepEqual(
      { type: frameData(m).type, status: frameData(m).status },
      { type: 'AuthError', status: 401 },
    );
    rc.close();
  });

  test('private channel with a different key in auth: AuthError 401 (raw)', async () => {
    const rc = await server.rawConnected();
    const good = privateAuth(server.app, rc.socketId, 'private-y');
    const m = await rc.subscribe('private-y', { auth: 'other-key:' + good.split(':')[1] });
    assert.equal(m.event, 'pusher:subscription_error');
    assert.equal(frameData(m).status, 401);
    rc.close();
  });

  test('private channel with missing auth: subscription_error AuthError 401 (raw)', async () => {
    const rc = await server.rawConnected();
    const m = await rc.subscribe('private-noauth');
    assert.equal(m.event, 'pusher:subscription_error');
    assert.equal(m.channel, 'private-noauth');
    const d = frameData(m);
    assert.equal(d.type, 'AuthError');
    assert.equal(d.status, 401);
    assert.equal(typeof d.error, 'string');
    await rc.ping(); // still alive
    rc.close();
  });

  test('presence channel with missing channel_data/auth: AuthError 401 (raw)', async () => {
    const rc = await server.rawConnected();
    const m = await rc.subscribe('presence-noauth');
    assert.equal(m.event, 'pusher:subscription_error');
    assert.equal(frameData(m).status, 401);
    rc.close();
  });

  test('presence channel with forged auth: AuthError 401 (pusher-js)', async () => {
    const forger = server.sdk({ ...server.app, secret: 'not-the-real-secret' });
    const c = await server.connectedClient({ signer: forger, user: { id: 'mallory', info: {} } });
    const err = await once(c.subscribe('presence-forged'), 'pusher:subscription_error');
    assert.equal(err.type, 'AuthError');
    assert.equal(err.status, 401);
    c.disconnect();
  });

  test('presence channel_data tampered after signing: AuthError 401 (raw)', async () => {
    const rc = await server.rawConnected();
    const signed = JSON.stringify({ user_id: 'alice', user_info: {} });
    const auth = presenceAuth(server.app, rc.socketId, 'presence-tamper', signed);
    const m = await rc.subscribe('presence-tamper', {
      auth,
      channel_data: JSON.stringify({ user_id: 'admin', user_info: {} }),
    });
    assert.equal(m.event, 'pusher:subscription_error');
    assert.equal(frameData(m).status, 401);
    rc.close();
  });

  test('private-encrypted channel: pusher-js decrypts what the SDK encrypted', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'private-encrypted-vault');
    const got = once(ch, 'secret');
    await sdk.trigger('private-encrypted-vault', 'secret', { code: 1234 });
    assert.deepEqual(await got, { code: 1234 });
    c.disconnect();
  });

  test('private-encrypted channel: the server relays the ciphertext unchanged (raw)', async () => {
    const rc = await server.rawConnected();
    await rc.subscribeOk('private-encrypted-raw', {
      auth: privateAuth(server.app, rc.socketId, 'private-encrypted-raw'),
    });
    await sdk.trigger('private-encrypted-raw', 'secret', { code: 99 });
    const m = await rc.next('secret');
    const d = frameData(m);
    assert.equal(typeof d.nonce, 'string');
    assert.equal(typeof d.ciphertext, 'string');
    assert.ok(!('code' in d), 'the plaintext must not appear');
    rc.close();
  });

  test('private-encrypted without auth: AuthError 401 (raw)', async () => {
    const rc = await server.rawConnected();
    const m = await rc.subscribe('private-encrypted-noauth');
    assert.equal(m.event, 'pusher:subscription_error');
    assert.equal(frameData(m).status, 401);
    rc.close();
  });

  test('invalid channel name: InvalidChannel 400', async () => {
    const rc = await server.rawConnected();
    for (const bad of ['bad channel!', 'x'.repeat(200), '']) {
      const m = await rc.subscribe(bad);
      assert.equal(m.event, 'pusher:subscription_error', `for ${JSON.stringify(bad)}: ${JSON.stringify(m)}`);
      const d = frameData(m);
      assert.equal(d.type, 'InvalidChannel', JSON.stringify(d));
      assert.equal(d.status, 400);
    }
    await rc.ping();
    rc.close();
  });

  test('channel name of exactly 164 allowed chars is accepted', async () => {
    const rc = await server.rawConnected();
    const name = 'a-_=@,.;'.repeat(20) + 'Zz09';
    assert.equal(name.length, 164);
    await rc.subscribeOk(name);
    rc.close();
  });

  test('unsubscribe twice, or from a channel never joined, is harmless; events stop', async () => {
    const rc = await server.rawConnected();
    await rc.subscribeOk('public-unsub');
    rc.send({ event: 'pusher:unsubscribe', data: { channel: 'public-unsub' } });
    rc.send({ event: 'pusher:unsubscribe', data: { channel: 'public-unsub' } });
    rc.send({ event: 'pusher:unsubscribe', data: { channel: 'never-joined' } });
    await rc.ping();
    await sdk.trigger('public-unsub', 'after', {});
    await server.control(rc);
    assert.deepEqual(rc.all('after'), []);
    assert.deepEqual(rc.all('pusher:error'), []);
    assert.ok(rc.isOpen);
    rc.close();
  });

  test('subscribing to the same channel twice does not duplicate deliveries', async () => {
    const rc = await server.rawConnected();
    await rc.subscribeOk('public-twice');
    rc.send({ event: 'pusher:subscribe', data: { channel: 'public-twice' } });
    await rc.ping();
    await sdk.trigger('public-twice', 'once', { n: 1 });
    await sdk.trigger('public-twice', 'after', { n: 2 });
    // The same channel keeps its order: a second copy of the first would come before this.
    await rc.next('after');
    assert.equal(rc.all('once').length, 1);
    assert.equal(rc.all('after').length, 1);
    rc.close();
  });

  test('too many subscriptions on one socket: LimitReached 429', async () => {
    const rc = await server.rawConnected();
    for (let i = 0; i < 5; i++) await rc.subscribeOk(`public-many-${i}`);
    const m = await rc.subscribe('public-many-5');
    assert.equal(m.event, 'pusher:subscription_error');
    const d = frameData(m);
    assert.equal(d.type, 'LimitReached');
    assert.equal(d.status, 429);
    // after leaving one, there is room again
    rc.send({ event: 'pusher:unsubscribe', data: { channel: 'public-many-0' } });
    await rc.subscribeOk('public-many-6');
    rc.close();
  });
});

describe('cache channels', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus();
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('cache-: cache_miss when nothing was published', async () => {
    const rc = await server.rawConnected();
    await rc.subscribeOk('cache-empty');
    const miss = await rc.next('pusher:cache_miss');
    assert.equal(miss.channel, 'cache-empty');
    rc.close();
  });

  test('cache-: pusher-js gets pusher:cache_miss on the channel', async () => {
    const c = await server.connectedClient();
    const ch = c.subscribe('cache-empty-js');
    await once(ch, 'pusher:cache_miss');
    c.disconnect();
  });

  test('cache-: a new subscriber gets the last event right after subscription_succeeded', async () => {
    await sdk.trigger('cache-prices', 'tick', { v: 1 });
    await sdk.trigger('cache-prices', 'tick', { v: 2 });
    const rc = await server.rawConnected();
    await rc.subscribeOk('cache-prices');
    const m = await rc.next((x) => x.channel === 'cache-prices' && x.event !== 'pusher_internal:subscription_succeeded');
    assert.equal(m.event, 'tick');
    assert.deepEqual(frameData(m), { v: 2 });
    await server.control(rc);
    assert.deepEqual(rc.all('pusher:cache_miss'), []);
    assert.equal(rc.all('tick').length, 1);
    rc.close();
  });

  test('cache-: pusher-js receives the cached event through bind()', async () => {
    await sdk.trigger('cache-js', 'state', { s: 'on' });
    const c = await server.connectedClient();
    const ch = c.subscribe('cache-js');
    assert.deepEqual(await once(ch, 'state'), { s: 'on' });
    c.disconnect();
  });

  test('private-cache-: last event after auth; cache_miss when empty', async () => {
    const rc = await server.rawConnected();
    await rc.subscribeOk('private-cache-empty', { auth: privateAuth(server.app, rc.socketId, 'private-cache-empty') });
    await rc.next('pusher:cache_miss');
    await sdk.trigger('private-cache-full', 'e', { x: 1 });
    await rc.subscribeOk('private-cache-full', { auth: privateAuth(server.app, rc.socketId, 'private-cache-full') });
    const m = await rc.next('e');
    assert.deepEqual(frameData(m), { x: 1 });
    rc.close();
  });

  test('presence-cache-: last event after the presence subscription', async () => {
    await sdk.trigger('presence-cache-room', 'topic', { t: 'hi' });
    const c = await server.connectedClient({ user: { id: 'u1', info: { name: 'U' } } });
    const ch = c.subscribe('presence-cache-room');
    assert.deepEqual(await once(ch, 'topic'), { t: 'hi' });
    c.disconnect();
  });

  test('private-encrypted-cache-: the cached ciphertext is decrypted by pusher-js', async () => {
    await sdk.trigger('private-encrypted-cache-box', 'sealed', { k: 'v' });
    const c = await server.connectedClient();
    const ch = c.subscribe('private-encrypted-cache-box');
    assert.deepEqual(await once(ch, 'sealed'), { k: 'v' });
    c.disconnect();
  });

  test('a non-cache channel never sends cache_miss or replays', async () => {
    await sdk.trigger('plain-chan', 'e', {});
    const rc = await server.rawConnected();
    await rc.subscribeOk('plain-chan');
    await server.control(rc);
    assert.deepEqual(rc.all('pusher:cache_miss'), []);
    assert.deepEqual(rc.all('e'), []);
    rc.close();
  });

  test('the cache is per channel: a publish elsewhere does not fill it', async () => {
    await sdk.trigger('cache-a', 'e', { a: 1 });
    const rc = await server.rawConnected();
    await rc.subscribeOk('cache-b');
    await rc.next('pusher:cache_miss', { timeout: WAIT_MS });
    rc.close();
  });
});
