// User sign-in, sendToUser, terminateUserConnections.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  waitState,
  waitMessage,
  once,
  record,
  frameData,
  userAuth,
  sleep,
  collectFor,
} from './harness.mjs';

/** A pusher-js client signed in as `id`, with its #server-to-user channel subscribed. */
async function signedIn(server, id, info = {}) {
  const c = server.client({ user: { id, info } });
  const ok = waitMessage(c, (m) => m.event === 'pusher:signin_success', { what: `signin_success for ${id}` });
  const sub = waitMessage(
    c,
    (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${id}`,
    { what: `#server-to-user-${id} subscription` },
  );
  c.signin();
  await waitState(c, 'connected');
  const m = await ok;
  await sub;
  return { c, signin: m };
}

describe('users', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus();
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('pusher-js signin(): signin_success echoes user_data', async () => {
    const { c, signin } = await signedIn(server, 'user-1', { name: 'One' });
    const ud = JSON.parse(signin.data.user_data);
    assert.deepEqual(ud, { id: 'user-1', name: 'One' });
    assert.equal(c.user.user_data.id, 'user-1');
    c.disconnect();
  });

  test('sendToUser reaches every connection of that user via pusher.user.bind, and nobody else', async () => {
    const { c: a1 } = await signedIn(server, 'alice');
    const { c: a2 } = await signedIn(server, 'alice');
    const { c: b } = await signedIn(server, 'bob');
    const got1 = once(a1.user, 'notice');
    const got2 = once(a2.user, 'notice');
    const notBob = collectFor(600, b.user, 'notice');
    await sdk.sendToUser('alice', 'notice', { text: 'hi alice' });
    assert.deepEqual(await got1, { text: 'hi alice' });
    assert.deepEqual(await got2, { text: 'hi alice' });
    await server.control(b);
    assert.deepEqual(await notBob, []);
    for (const x of [a1, a2, b]) x.disconnect();
  });

  test('an unsigned socket cannot subscribe to #server-to-user-{id}', async () => {
    const rc = await server.rawConnected();
    const m = await rc.subscribe('#server-to-user-alice');
    assert.equal(m.event, 'pusher:subscription_error', JSON.stringify(m));
    rc.close();
  });

  test('a user signed in as bob cannot subscribe to alice\'s #server-to-user channel', async () => {
    const rc = await server.rawConnected();
    const ud = JSON.stringify({ id: 'bob' });
    rc.send({ event: 'pusher:signin', data: { auth: userAuth(server.app, rc.socketId, ud), user_data: ud } });
    await rc.next('pusher:signin_success');
    const m = await rc.subscribe('#server-to-user-alice');
    assert.equal(m.event, 'pusher:subscription_error', JSON.stringify(m));
    await rc.subscribeOk('#server-to-user-bob');
    rc.close();
  });

  test('raw signin with a forged signature: pusher:error 4009', async () => {
    const rc = await server.rawConnected();
    const ud = JSON.stringify({ id: 'eve' });
    const forged = userAuth({ ...server.app, secret: 'wrong-secret-123' }, rc.socketId, ud);
    rc.send({ event: 'pusher:signin', data: { auth: forged, user_data: ud } });
    const err = await rc.next('pusher:error');
    assert.equal(frameData(err).code, 4009);
    assert.deepEqual(rc.all('pusher:signin_success'), []);
    rc.close();
  });

  test('raw signin: signin_success data has user_data as given', async () => {
    const rc = await server.rawConnected();
    const ud = JSON.stringify({ id: 'raw-user', watchlist: [] });
    rc.send({ event: 'pusher:signin', data: { auth: userAuth(server.app, rc.socketId, ud), user_data: ud } });
    const m = await rc.next('pusher:signin_success');
    assert.equal(frameData(m).user_data, ud);
    rc.close();
  });

  test('terminateUserConnections closes every connection of the user with 4009; others stay', async () => {
    const { c: t1 } = await signedIn(server, 'doomed');
    const { c: t2 } = await signedIn(server, 'doomed');
    const { c: other } = await signedIn(server, 'survivor');

    const rc = await server.rawConnected();
    const ud = JSON.stringify({ id: 'doomed' });
    rc.send({ event: 'pusher:signin', data: { auth: userAuth(server.app, rc.socketId, ud), user_data: ud } });
    await rc.next('pusher:signin_success');

    const errs1 = record(t1.connection, 'error');
    const errs2 = record(t2.connection, 'error');
    const otherStates = record(other.connection, 'state_change');
    await sdk.terminateUserConnections('doomed');

    const err = await rc.next('pusher:error');
    assert.equal(frameData(err).code, 4009);
    assert.equal((await rc.waitClosed()).code, 4009);

    // pusher-js: 4009 is "refused": it ends up disconnected and does not reconnect
    await waitState(t1, 'disconnected');
    await waitState(t2, 'disconnected');
    const codes = (items) => items.map((e) => e?.data?.code ?? e?.error?.data?.code);
    assert.ok(codes(errs1.items).includes(4009), JSON.stringify(errs1.items));
    assert.ok(codes(errs2.items).includes(4009), JSON.stringify(errs2.items));
    await sleep(1500);
    assert.equal(t1.connection.state, 'disconnected');
    assert.equal(t2.connection.state, 'disconnected');

    assert.equal(other.connection.state, 'connected');
    assert.deepEqual(otherStates.items, []);
    const still = once(other.user, 'ping-survivor');
    await sdk.sendToUser('survivor', 'ping-survivor', { ok: true });
    assert.deepEqual(await still, { ok: true });
    for (const x of [t1, t2, other]) x.disconnect();
  });

  test('a terminated user may connect and sign in again (terminate is not a ban)', async () => {
    const { c: first } = await signedIn(server, 'returner');
    await server.sdk().terminateUserConnections('returner');
    await waitState(first, 'disconnected');
    const { c: again } = await signedIn(server, 'returner');
    const got = once(again.user, 'welcome-back');
    await sdk.sendToUser('returner', 'welcome-back', { ok: 1 });
    assert.deepEqual(await got, { ok: 1 });
    first.disconnect();
    again.disconnect();
  });

  test('terminateUserConnections for a user with no connections answers 200', async () => {
    const res = await sdk.terminateUserConnections('nobody-here');
    assert.equal(res.status, 200);
  });
});
