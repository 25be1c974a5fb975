// Several apps from one config: isolation, allowed_origins, max_connections.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  collectFor,
  frameData,
  signedUrl,
  waitState,
  record,
  sleep,
  eventually,
} from './harness.mjs';

const APP_A = { id: '101', key: 'key-app-a', secret: 'secret-app-a-123456' };
const APP_B = { id: '202', key: 'key-app-b', secret: 'secret-app-b-123456' };
const APP_ORIGINS = {
  id: '303',
  key: 'key-app-origins',
  secret: 'secret-app-origins-1',
  allowed_origins: ['https://example.com', 'https://*.example.org'],
};
const APP_SMALL = { id: '404', key: 'key-app-small', secret: 'secret-app-small-12', limits: { max_connections: 2 } };

describe('multiple apps', () => {
  let server;
  before(async () => {
    server = await startChorus({ apps: [APP_A, APP_B, APP_ORIGINS, APP_SMALL] });
  });
  after(async () => {
    await server?.cleanup();
  });

  test('a publish on app A never reaches app B\'s subscriber on the same channel name', async () => {
    const a = await server.connectedClient({ app: APP_A });
    const b = await server.connectedClient({ app: APP_B });
    const chA = await subscribeOk(a, 'shared-name');
    const chB = await subscribeOk(b, 'shared-name');
    const notB = collectFor(700, chB, 'evt');
    const gotA = once(chA, 'evt');
    await server.sdk(APP_A).trigger('shared-name', 'evt', { from: 'A' });
    assert.deepEqual(await gotA, { from: 'A' });
    assert.deepEqual(await notB, []);

    const notA = collectFor(700, chA, 'evt');
    const gotB = once(chB, 'evt');
    await server.sdk(APP_B).trigger('shared-name', 'evt', { from: 'B' });
    assert.deepEqual(await gotB, { from: 'B' });
    assert.deepEqual(await notA, []);
    a.disconnect();
    b.disconnect();
  });

  test('presence members and client events are per app', async () => {
    const a = await server.connectedClient({ app: APP_A, user: { id: 'ua', info: {} } });
    const b = await server.connectedClient({ app: APP_B, user: { id: 'ub', info: {} } });
    const a2 = await server.connectedClient({ app: APP_A, user: { id: 'ua2', info: {} } });
    const chA = await subscribeOk(a, 'presence-same');
    const chB = await subscribeOk(b, 'presence-same');
    const chA2 = await subscribeOk(a2, 'presence-same');
    assert.equal(chB.members.count, 1);
    assert.equal(chA2.members.count, 2);
    const users = await (await server.sdk(APP_B).get({ path: '/channels/presence-same/users' })).json();
    assert.deepEqual(users, { users: [{ id: 'ub' }] });

    const notB = collectFor(600, chB, 'client-x');
    const gotA = once(chA, 'client-x');
    chA2.trigger('client-x', { n: 1 });
    assert.deepEqual(await gotA, { n: 1 });
    assert.deepEqual(await notB, []);
    for (const c of [a, b, a2]) c.disconnect();
  });

  test('channel listing is per app', async () => {
    const a = await server.connectedClient({ app: APP_A });
    await subscribeOk(a, 'only-in-a');
    const la = await (await server.sdk(APP_A).get({ path: '/channels' })).json();
    const lb = await (await server.sdk(APP_B).get({ path: '/channels' })).json();
    assert.ok(la.channels['only-in-a']);
    assert.equal(lb.channels['only-in-a'], undefined);
    a.disconnect();
  });

  test('app A\'s credentials against app B\'s id: 401', async () => {
    const url = signedUrl(server.baseUrl, { method: 'GET', path: `/apps/${APP_B.id}/channels`, app: APP_A });
    assert.equal((await fetch(url)).status, 401);
    const crossed = server.sdk({ ...APP_A, id: APP_B.id });
    await assert.rejects(crossed.trigger('c', 'e', {}), (e) => e.status === 401);
  });

  test('auth signed with app A\'s secret does not open a private channel on app B', async () => {
    const c = await server.connectedClient({ app: APP_B, signer: server.sdk(APP_A) });
    const err = await once(c.subscribe('private-x'), 'pusher:subscription_error');
    assert.equal(err.status, 401);
    c.disconnect();
  });

  test('allowed_origins: an Origin not in the list is closed with 4009', async () => {
    const rc = await server.raw({ app: APP_ORIGINS, origin: 'https://evil.example.net' });
    const err = await rc.next('pusher:error');
    assert.equal(frameData(err).code, 4009);
    assert.equal((await rc.waitClosed()).code, 4009);
  });

  test('allowed_origins: an exact match and a wildcard subdomain are accepted', async () => {
    for (const origin of ['https://example.com', 'https://app.example.org', 'https://a.b.example.org']) {
      const rc = await server.raw({ app: APP_ORIGINS, origin });
      const m = await rc.next((x) => x.event === 'pusher:connection_established' || x.event === 'pusher:error');
      assert.equal(m.event, 'pusher:connection_established', `${origin}: ${JSON.stringify(m)}`);
      rc.close();
    }
  });

  test('allowed_origins: lookalikes are refused (scheme, suffix, look-alike domains)', async () => {
    for (const origin of ['http://example.com', 'https://example.com.evil.net', 'https://notexample.org', 'https://evilexample.org']) {
      const rc = await server.raw({ app: APP_ORIGINS, origin });
      const closed = await rc.waitClosed();
      assert.equal(closed.code, 4009, origin);
    }
  });

  test('an app with empty allowed_origins accepts any Origin', async () => {
    const rc = await server.raw({ app: APP_A, origin: 'https://anything.example' });
    await rc.next('pusher:connection_established');
    rc.close();
  });

  test('over max_connections: pusher:error 4004 then close 4004; room again after one leaves', async () => {
    const c1 = await server.rawConnected({ app: APP_SMALL });
    const c2 = await server.rawConnected({ app: APP_SMALL });
    const c3 = await server.raw({ app: APP_SMALL });
    const err = await c3.next('pusher:error');
    assert.equal(frameData(err).code, 4004);
    assert.equal((await c3.waitClosed()).code, 4004);
    // other apps are not affected
    const other = await server.rawConnected({ app: APP_A });
    other.close();

    c1.close();
    await eventually(
      async () => {
        const rc = await server.raw({ app: APP_SMALL });
        const m = await rc.next((x) => x.event === 'pusher:connection_established' || x.event === 'pusher:error');
        rc.close();
        return m.event === 'pusher:connection_established';
      },
      { what: 'a free connection slot', timeout: 3000, interval: 100 },
    );
    c2.close();
  });

  test('over max_connections: pusher-js treats 4004 as refused (no reconnect)', async () => {
    const c1 = await server.rawConnected({ app: APP_SMALL });
    const c2 = await server.rawConnected({ app: APP_SMALL });
    const p = server.client({ app: APP_SMALL });
    const errs = record(p.connection, 'error');
    await waitState(p, 'disconnected', 5000);
    const codes = errs.items.map((e) => e?.error?.data?.code ?? e?.data?.code);
    assert.ok(codes.includes(4004), JSON.stringify(errs.items));
    await sleep(1500);
    assert.equal(p.connection.state, 'disconnected');
    p.disconnect();
    c1.close();
    c2.close();
  });
});
