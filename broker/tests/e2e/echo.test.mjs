// Laravel Echo 2 (broadcaster "pusher") on top of pusher-js, against chorus.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import Echo from 'laravel-echo';
import {
  startChorus,
  PusherClient,
  waitState,
  withTimeout,
  collectFor,
  eventually,
  WAIT_MS,
} from './harness.mjs';

/** Resolves with the first call's argument of a callback-style API. */
function nextCall(register, what) {
  return withTimeout(new Promise((resolve) => register(resolve)), WAIT_MS, what);
}

describe('Laravel Echo', () => {
  let server;
  let sdk;
  const echos = [];

  /** An Echo instance whose channel auth / user auth is signed by the Node SDK (as a Laravel backend would). */
  async function makeEcho(user) {
    const echo = new Echo({
      broadcaster: 'pusher',
      key: server.app.key,
      cluster: 'x',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      Pusher: PusherClient,
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, cb) => {
          try {
            cb(
              null,
              channelName.startsWith('presence-')
                ? sdk.authorizeChannel(socketId, channelName, { user_id: user.id, user_info: user.info })
                : sdk.authorizeChannel(socketId, channelName),
            );
          } catch (e) {
            cb(e, null);
          }
        },
      },
    });
    echos.push(echo);
    await waitState(echo.connector.pusher, 'connected');
    assert.equal(echo.connectionStatus(), 'connected');
    return echo;
  }

  /** Resolves when Echo's channel is subscribed. */
  function subscribed(channel) {
    if (channel.subscription?.subscribed) return Promise.resolve();
    return nextCall((r) => channel.subscribed(r), 'Echo channel subscribed');
  }

  before(async () => {
    server = await startChorus();
    sdk = server.sdk();
  });
  after(async () => {
    for (const e of echos) {
      try {
        e.disconnect();
      } catch {
        /* ignore */
      }
    }
    await server?.cleanup();
  });

  test('Echo.channel(...).listen(".my-event") receives an SDK trigger', async () => {
    const echo = await makeEcho({ id: 'u1', info: {} });
    const ch = echo.channel('orders');
    await subscribed(ch);
    const got = nextCall((r) => ch.listen('.my-event', r), '.my-event');
    await sdk.trigger('orders', 'my-event', { order: 1 });
    assert.deepEqual(await got, { order: 1 });
    echo.disconnect();
  });

  test('listen("OrderShipped") receives the namespaced App\\Events\\OrderShipped', async () => {
    const echo = await makeEcho({ id: 'u1', info: {} });
    const ch = echo.channel('shipping');
    await subscribed(ch);
    const got = nextCall((r) => ch.listen('OrderShipped', r), 'OrderShipped');
    await sdk.trigger('shipping', 'App\\Events\\OrderShipped', { id: 9 });
    assert.deepEqual(await got, { id: 9 });
    echo.disconnect();
  });

  test('Echo.private(...) subscribes to private-... with auth and receives events', async () => {
    const echo = await makeEcho({ id: 'u1', info: {} });
    const ch = echo.private('App.Models.User.1');
    await subscribed(ch);
    const got = nextCall((r) => ch.listen('.status', r), 'private .status');
    await sdk.trigger('private-App.Models.User.1', 'status', { ok: true });
    assert.deepEqual(await got, { ok: true });
    echo.disconnect();
  });

  test('Echo.private(...).notification() receives a broadcast notification', async () => {
    const echo = await makeEcho({ id: 'u1', info: {} });
    const ch = echo.private('App.Models.User.42');
    await subscribed(ch);
    const got = nextCall((r) => ch.notification(r), 'notification');
    await sdk.trigger('private-App.Models.User.42', 'Illuminate\\Notifications\\Events\\BroadcastNotificationCreated', {
      id: 'n-1',
      type: 'App\\Notifications\\InvoicePaid',
      amount: 10,
    });
    assert.deepEqual(await got, { id: 'n-1', type: 'App\\Notifications\\InvoicePaid', amount: 10 });
    echo.disconnect();
  });

  test('Echo.private(...).error() fires on forged auth', async () => {
    const forger = server.sdk({ ...server.app, secret: 'definitely-wrong-secret' });
    const echo = new Echo({
      broadcaster: 'pusher',
      key: server.app.key,
      cluster: 'x',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      Pusher: PusherClient,
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, cb) => cb(null, forger.authorizeChannel(socketId, channelName)),
      },
    });
    echos.push(echo);
    const err = await nextCall((r) => echo.private('secret').error(r), 'Echo error()');
    assert.equal(err.status, 401);
    assert.equal(err.type, 'AuthError');
    echo.disconnect();
  });

  test('Echo.encryptedPrivate(...) decrypts SDK-encrypted events', async () => {
    const echo = await makeEcho({ id: 'u1', info: {} });
    const ch = echo.encryptedPrivate('vault');
    await subscribed(ch);
    const got = nextCall((r) => ch.listen('.sealed', r), 'encrypted .sealed');
    await sdk.trigger('private-encrypted-vault', 'sealed', { k: 'v' });
    assert.deepEqual(await got, { k: 'v' });
    echo.disconnect();
  });

  test('Echo.join(...).here/joining/leaving', async () => {
    const alice = await makeEcho({ id: 'alice', info: { name: 'Alice' } });
    const hereAlice = nextCall((r) => alice.join('chat.1').here(r), 'here (alice)');
    assert.deepEqual(await hereAlice, [{ name: 'Alice' }]);
    const joining = nextCall((r) => alice.join('chat.1').joining(r), 'joining');
    const leaving = nextCall((r) => alice.join('chat.1').leaving(r), 'leaving');

    const bob = await makeEcho({ id: 'bob', info: { name: 'Bob' } });
    const hereBob = await nextCall((r) => bob.join('chat.1').here(r), 'here (bob)');
    assert.deepEqual(
      hereBob.map((u) => u.name).sort(),
      ['Alice', 'Bob'],
    );
    assert.deepEqual(await joining, { name: 'Bob' });

    bob.leave('chat.1');
    assert.deepEqual(await leaving, { name: 'Bob' });
    alice.disconnect();
    bob.disconnect();
  });

  test('whisper / listenForWhisper on a private channel: the others hear it, the whisperer does not', async () => {
    const a = await makeEcho({ id: 'a', info: {} });
    const b = await makeEcho({ id: 'b', info: {} });
    const chA = a.private('doc.5');
    const chB = b.private('doc.5');
    await subscribed(chA);
    await subscribed(chB);
    const heard = nextCall((r) => chB.listenForWhisper('typing', r), 'whisper at b');
    const selfHeard = [];
    chA.listenForWhisper('typing', (d) => selfHeard.push(d));
    chA.whisper('typing', { name: 'a', typing: true });
    assert.deepEqual(await heard, { name: 'a', typing: true });
    await server.control(a.connector.pusher);
    assert.deepEqual(selfHeard, []);
    a.disconnect();
    b.disconnect();
  });

  test('whisper on a presence channel (Echo.join)', async () => {
    const a = await makeEcho({ id: 'wa', info: { n: 'A' } });
    const b = await makeEcho({ id: 'wb', info: { n: 'B' } });
    await nextCall((r) => a.join('room.7').here(r), 'here a');
    await nextCall((r) => b.join('room.7').here(r), 'here b');
    const heard = nextCall((r) => b.join('room.7').listenForWhisper('wave', r), 'presence whisper');
    a.join('room.7').whisper('wave', { hi: 1 });
    assert.deepEqual(await heard, { hi: 1 });
    a.disconnect();
    b.disconnect();
  });

  test('Echo.socketId() excludes the sender of a broadcast (toOthers)', async () => {
    const a = await makeEcho({ id: 'a', info: {} });
    const b = await makeEcho({ id: 'b', info: {} });
    const chA = a.channel('feed');
    const chB = b.channel('feed');
    await subscribed(chA);
    await subscribed(chB);
    assert.match(a.socketId(), /^\d+\.\d+$/);
    const notA = [];
    chA.listen('.post', (d) => notA.push(d));
    const gotB = nextCall((r) => chB.listen('.post', r), 'post at b');
    await sdk.trigger('feed', 'post', { p: 1 }, { socket_id: a.socketId() });
    assert.deepEqual(await gotB, { p: 1 });
    await server.control(a.connector.pusher);
    assert.deepEqual(notA, []);
    a.disconnect();
    b.disconnect();
  });

  test('leaveChannel stops delivery', async () => {
    const echo = await makeEcho({ id: 'l', info: {} });
    const ch = echo.channel('leave-me');
    await subscribed(ch);
    const seen = [];
    ch.listen('.x', (d) => seen.push(d));
    echo.leaveChannel('leave-me');
    await eventually(
      async () => {
        const r = await (await sdk.get({ path: '/channels/leave-me' })).json();
        return r.occupied === false;
      },
      { what: 'leave-me to be vacated' },
    );
    await sdk.trigger('leave-me', 'x', {});
    await server.control(echo.connector.pusher);
    assert.deepEqual(seen, []);
    echo.disconnect();
  });
});
