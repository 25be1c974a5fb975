// The HTTP API through the Node server SDK (`pusher`), plus hand-signed requests for errors.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  collectFor,
  signedUrl,
  md5Hex,
  expectStatus,
  eventually,
  sleep,
} from './harness.mjs';

describe('HTTP API', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus();
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  const json = async (p) => (await p).json();

  async function raw({ method = 'POST', path, params, body, app = server.app, timestamp, bodyMd5, rawBody }) {
    const text = rawBody ?? (body === undefined ? undefined : JSON.stringify(body));
    const url = signedUrl(server.baseUrl, { method, path, params, body: text, app, timestamp, bodyMd5 });
    const res = await fetch(url, {
      method,
      body: text,
      headers: text !== undefined ? { 'content-type': 'application/json' } : {},
    });
    return { status: res.status, text: await res.text() };
  }

  function assertErrorBody(r) {
    let body;
    assert.doesNotThrow(() => (body = JSON.parse(r.text)), `error body is JSON: ${r.text}`);
    assert.equal(typeof body.error, 'string', r.text);
    assert.ok(body.error.length > 0);
  }

  test('trigger to one channel reaches a pusher-js subscriber; answers 200 {}', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'api-one');
    const got = once(ch, 'evt');
    const res = await sdk.trigger('api-one', 'evt', { n: 1, s: 'é' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    assert.deepEqual(await got, { n: 1, s: 'é' });
    c.disconnect();
  });

  test('trigger with string data is delivered as that string', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'api-str');
    const got = once(ch, 'evt');
    await sdk.trigger('api-str', 'evt', 'plain text, not JSON');
    assert.equal(await got, 'plain text, not JSON');
    c.disconnect();
  });

  test('trigger to several channels reaches each once', async () => {
    const c = await server.connectedClient();
    const a = await subscribeOk(c, 'api-multi-a');
    const b = await subscribeOk(c, 'api-multi-b');
    const gotA = once(a, 'evt');
    const gotB = once(b, 'evt');
    await sdk.trigger(['api-multi-a', 'api-multi-b', 'api-multi-nobody'], 'evt', { multi: true });
    assert.deepEqual(await gotA, { multi: true });
    assert.deepEqual(await gotB, { multi: true });
    c.disconnect();
  });

  test('socket_id excludes that connection only', async () => {
    const c1 = await server.connectedClient();
    const c2 = await server.connectedClient();
    const ch1 = await subscribeOk(c1, 'api-exclude');
    const ch2 = await subscribeOk(c2, 'api-exclude');
    const excluded = collectFor(600, ch1, 'evt');
    const got = once(ch2, 'evt');
    await sdk.trigger('api-exclude', 'evt', { x: 1 }, { socket_id: c1.connection.socket_id });
    assert.deepEqual(await got, { x: 1 });
    await server.control(c1);
    assert.deepEqual(await excluded, []);
    c1.disconnect();
    c2.disconnect();
  });

  test('info on trigger: subscription_count and user_count per channel', async () => {
    const u1 = await server.connectedClient({ user: { id: 'i1', info: {} } });
    const u1b = await server.connectedClient({ user: { id: 'i1', info: {} } });
    const u2 = await server.connectedClient({ user: { id: 'i2', info: {} } });
    for (const c of [u1, u1b, u2]) await subscribeOk(c, 'presence-api-info');
    await subscribeOk(u1, 'api-info-pub');
    const body = await json(
      sdk.trigger(['presence-api-info', 'api-info-pub'], 'evt', {}, { info: 'user_count,subscription_count' }),
    );
    assert.deepEqual(body, {
      channels: {
        'presence-api-info': { user_count: 2, subscription_count: 3 },
        'api-info-pub': { subscription_count: 1 },
      },
    });
    const one = await json(sdk.trigger('api-info-pub', 'evt', {}, { info: 'subscription_count' }));
    assert.deepEqual(one, { channels: { 'api-info-pub': { subscription_count: 1 } } });
    for (const c of [u1, u1b, u2]) c.disconnect();
  });

  test('triggerBatch delivers every event; with info answers {batch:[...]}', async () => {
    const c = await server.connectedClient();
    const a = await subscribeOk(c, 'batch-a');
    const b = await subscribeOk(c, 'batch-b');
    const gotA = once(a, 'e1');
    const gotB = once(b, 'e2');
    const res = await sdk.triggerBatch([
      { channel: 'batch-a', name: 'e1', data: { a: 1 } },
      { channel: 'batch-b', name: 'e2', data: { b: 2 } },
    ]);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    assert.deepEqual(await gotA, { a: 1 });
    assert.deepEqual(await gotB, { b: 2 });

    const info = await json(
      sdk.triggerBatch([
        { channel: 'batch-a', name: 'e3', data: {}, info: 'subscription_count' },
        { channel: 'batch-empty', name: 'e3', data: {}, info: 'subscription_count' },
      ]),
    );
    assert.deepEqual(info, { batch: [{ subscription_count: 1 }, { subscription_count: 0 }] });
    c.disconnect();
  });

  test('triggerBatch socket_id exclusion per event', async () => {
    const c1 = await server.connectedClient();
    const c2 = await server.connectedClient();
    const ch1 = await subscribeOk(c1, 'batch-x');
    const ch2 = await subscribeOk(c2, 'batch-x');
    const excluded = collectFor(600, ch1, 'e');
    const got = once(ch2, 'e');
    await sdk.triggerBatch([{ channel: 'batch-x', name: 'e', data: { k: 1 }, socket_id: c1.connection.socket_id }]);
    assert.deepEqual(await got, { k: 1 });
    await server.control(c1);
    assert.deepEqual(await excluded, []);
    c1.disconnect();
    c2.disconnect();
  });

  test('batch over 10 events: 400 and nothing delivered', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'batch-big');
    const none = collectFor(600, ch, 'e');
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel: 'batch-big', name: 'e', data: { i } }));
    const err = await expectStatus(sdk.triggerBatch(batch), 400);
    assert.equal(typeof JSON.parse(err.body).error, 'string');
    await server.control(c);
    assert.deepEqual(await none, []);
    c.disconnect();
  });

  test('GET /channels lists occupied channels, filter_by_prefix and info', async () => {
    const c = await server.connectedClient({ user: { id: 'lister', info: {} } });
    const c2 = await server.connectedClient({ user: { id: 'lister2', info: {} } });
    await subscribeOk(c, 'list-pub-1');
    await subscribeOk(c2, 'list-pub-1');
    await subscribeOk(c, 'presence-list-1');
    await subscribeOk(c2, 'presence-list-1');
    await subscribeOk(c, 'presence-list-2');

    const all = await json(sdk.get({ path: '/channels' }));
    assert.ok(all.channels['list-pub-1'], JSON.stringify(all));
    assert.ok(all.channels['presence-list-1']);
    assert.deepEqual(all.channels['list-pub-1'], {});

    const pres = await json(
      sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-list', info: 'user_count' } }),
    );
    assert.deepEqual(pres, {
      channels: { 'presence-list-1': { user_count: 2 }, 'presence-list-2': { user_count: 1 } },
    });

    const subs = await json(
      sdk.get({ path: '/channels', params: { filter_by_prefix: 'list-', info: 'subscription_count' } }),
    );
    assert.deepEqual(subs, { channels: { 'list-pub-1': { subscription_count: 2 } } });

    const err = await expectStatus(sdk.get({ path: '/channels', params: { info: 'user_count' } }), 400);
    assert.equal(typeof JSON.parse(err.body).error, 'string');

    c.disconnect();
    c2.disconnect();
    // vacated channels disappear
    await eventually(
      async () => {
        const r = await json(sdk.get({ path: '/channels', params: { filter_by_prefix: 'list-' } }));
        return Object.keys(r.channels).length === 0;
      },
      { what: 'list-* to be vacated' },
    );
  });

  test('GET /channels/{name}: occupied and counts', async () => {
    const empty = await json(sdk.get({ path: '/channels/never-used', params: { info: 'subscription_count' } }));
    assert.equal(empty.occupied, false);
    assert.ok(empty.subscription_count === undefined || empty.subscription_count === 0);

    const c = await server.connectedClient();
    await subscribeOk(c, 'one-chan');
    const plain = await json(sdk.get({ path: '/channels/one-chan' }));
    assert.deepEqual(plain, { occupied: true });
    const info = await json(sdk.get({ path: '/channels/one-chan', params: { info: 'subscription_count' } }));
    assert.deepEqual(info, { occupied: true, subscription_count: 1 });
    const bad = await expectStatus(sdk.get({ path: '/channels/one-chan', params: { info: 'user_count' } }), 400);
    assert.ok(bad.body);
    c.disconnect();
  });

  test('GET /channels/{presence}/users lists user ids; 400 for a non-presence channel', async () => {
    const a = await server.connectedClient({ user: { id: 'ua', info: { x: 1 } } });
    const b = await server.connectedClient({ user: { id: 'ub', info: {} } });
    await subscribeOk(a, 'presence-users');
    await subscribeOk(b, 'presence-users');
    const r = await json(sdk.get({ path: '/channels/presence-users/users' }));
    assert.deepEqual(
      r.users.map((u) => u.id).sort(),
      ['ua', 'ub'],
    );
    for (const u of r.users) assert.deepEqual(Object.keys(u), ['id']);
    await expectStatus(sdk.get({ path: '/channels/public-chan/users' }), 400);
    a.disconnect();
    b.disconnect();
  });

  test('forged signature (wrong secret): 401 with a JSON error, nothing delivered', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'forge-target');
    const none = collectFor(600, ch, 'evil');
    const r = await raw({
      path: `/apps/${server.app.id}/events`,
      body: { name: 'evil', channel: 'forge-target', data: '{}' },
      app: { ...server.app, secret: 'this-is-not-the-secret' },
    });
    assert.equal(r.status, 401, r.text);
    assertErrorBody(r);
    await server.control(c);
    assert.deepEqual(await none, []);
    c.disconnect();
  });

  test('the SDK with a wrong secret gets 401', async () => {
    const bad = server.sdk({ ...server.app, secret: 'this-is-not-the-secret' });
    await expectStatus(bad.trigger('x', 'y', {}), 401);
    await expectStatus(bad.get({ path: '/channels' }), 401);
  });

  test('missing signature params: 401', async () => {
    const r = await fetch(`${server.baseUrl}/apps/${server.app.id}/channels`);
    assert.equal(r.status, 401);
    const r2 = await fetch(
      `${server.baseUrl}/apps/${server.app.id}/channels?auth_key=${server.app.key}&auth_timestamp=${Math.floor(Date.now() / 1000)}&auth_version=1.0`,
    );
    assert.equal(r2.status, 401);
  });

  test('stale timestamp (> 600 s old): 401; a recent one: 200', async () => {
    const old = Math.floor(Date.now() / 1000) - 700;
    const r = await raw({ method: 'GET', path: `/apps/${server.app.id}/channels`, timestamp: old });
    assert.equal(r.status, 401, r.text);
    assertErrorBody(r);
    const future = Math.floor(Date.now() / 1000) + 700;
    assert.equal((await raw({ method: 'GET', path: `/apps/${server.app.id}/channels`, timestamp: future })).status, 401);
    const recent = Math.floor(Date.now() / 1000) - 60;
    assert.equal((await raw({ method: 'GET', path: `/apps/${server.app.id}/channels`, timestamp: recent })).status, 200);
  });

  test('body_md5 not matching the body: 401', async () => {
    const body = JSON.stringify({ name: 'e', channel: 'c', data: '{}' });
    const url = signedUrl(server.baseUrl, {
      method: 'POST',
      path: `/apps/${server.app.id}/events`,
      body: JSON.stringify({ name: 'other', channel: 'c', data: '{}' }),
      app: server.app,
    });
    const r = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 401);
  });

  test('POST with a body but no body_md5 in the signature: 401', async () => {
    const body = JSON.stringify({ name: 'e', channel: 'c', data: '{}' });
    const url = signedUrl(server.baseUrl, { method: 'POST', path: `/apps/${server.app.id}/events`, app: server.app });
    const r = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 401, await r.text());
  });

  test('another app\'s key in auth_key: 401', async () => {
    const r = await raw({
      method: 'GET',
      path: `/apps/${server.app.id}/channels`,
      app: { id: server.app.id, key: 'some-other-key', secret: server.app.secret },
    });
    assert.ok([401].includes(r.status), `${r.status} ${r.text}`);
  });

  test('GET signed with body_md5 of the empty body (as the Python SDK does) is accepted', async () => {
    const r = await raw({ method: 'GET', path: `/apps/${server.app.id}/channels`, bodyMd5: md5Hex('') });
    assert.equal(r.status, 200, r.text);
    assert.ok(JSON.parse(r.text).channels);
  });

  test('data over max_message_bytes (10 KB): 413, nothing delivered', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'big-data');
    const none = collectFor(600, ch, 'big');
    const err = await expectStatus(sdk.trigger('big-data', 'big', 'x'.repeat(11 * 1024)), 413);
    assert.equal(typeof JSON.parse(err.body).error, 'string');
    assert.deepEqual(await none, []);
    // exactly at the limit is fine
    const ok = once(ch, 'big');
    await sdk.trigger('big-data', 'big', 'y'.repeat(10240));
    assert.equal((await ok).length, 10240);
    c.disconnect();
  });

  test('bad body: invalid JSON, missing name, missing channel -> 400 with JSON error', async () => {
    const p = `/apps/${server.app.id}/events`;
    for (const rawBody of [
      '{not json',
      JSON.stringify({ channel: 'c', data: '{}' }),
      JSON.stringify({ name: 'e', data: '{}' }),
      JSON.stringify({ name: 'e', channel: 'bad channel!', data: '{}' }),
      JSON.stringify({ name: 'e', channels: 'not-an-array', data: '{}' }),
      JSON.stringify({ name: 'e'.repeat(201), channel: 'c', data: '{}' }),
      JSON.stringify({ name: 'e', channel: 'c'.repeat(165), data: '{}' }),
    ]) {
      const r = await raw({ path: p, rawBody });
      assert.equal(r.status, 400, `${rawBody} -> ${r.status} ${r.text}`);
      assertErrorBody(r);
    }
  });

  test('batch with a bad item (no channel / bad name) or not an array: 400', async () => {
    const p = `/apps/${server.app.id}/batch_events`;
    for (const body of [
      { batch: [{ name: 'e', data: '{}' }] },
      { batch: [{ name: 'e', channel: 'ok', data: '{}' }, { name: 'e', channel: 'bad channel!', data: '{}' }] },
      { batch: 'nope' },
      {},
    ]) {
      const r = await raw({ path: p, body });
      assert.equal(r.status, 400, `${JSON.stringify(body)} -> ${r.status} ${r.text}`);
      assertErrorBody(r);
    }
  });

  test('more than 100 channels in one trigger: 400', async () => {
    const channels = Array.from({ length: 101 }, (_, i) => `ch-${i}`);
    const r = await raw({ path: `/apps/${server.app.id}/events`, body: { name: 'e', channels, data: '{}' } });
    assert.equal(r.status, 400, r.text);
  });

  test('unknown app id: 404', async () => {
    const other = server.sdk({ ...server.app, id: '999999' });
    const err = await expectStatus(other.trigger('c', 'e', {}), 404);
    assert.equal(typeof JSON.parse(err.body).error, 'string');
    await expectStatus(other.get({ path: '/channels' }), 404);
  });

  test('unknown route under a known app: 404', async () => {
    const r = await raw({ method: 'GET', path: `/apps/${server.app.id}/no-such-route` });
    assert.equal(r.status, 404, r.text);
    assertErrorBody(r);
    const top = await fetch(`${server.baseUrl}/no/such/path`);
    assert.equal(top.status, 404);
    assertErrorBody({ text: await top.text() });
  });

  test('tricky payloads and channel names survive the round trip byte for byte', async () => {
    const name = 'odd-_=@,.;Chan9';
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, name);
    const payloads = [
      'quote " backslash \\ newline \n tab \t',
      '\u2028\u2029 emoji 😀 cjk 漢字 nul-ish \u0001 </script>',
      JSON.stringify({ nested: '{"json":"in a string"}' }),
      '',
    ];
    for (const p of payloads) {
      const got = once(ch, 'tricky');
      await sdk.trigger(name, 'tricky', p);
      // pusher-js JSON-parses data strings that are JSON
      let expected = p;
      try {
        expected = JSON.parse(p);
      } catch {
        /* plain string */
      }
      assert.deepEqual(await got, expected);
    }
    const obj = { a: [1, 2.5, null, true], s: 'ü\n"', deep: { x: { y: 'z' } } };
    const got = once(ch, 'tricky-obj');
    await sdk.trigger(name, 'tricky-obj', obj);
    assert.deepEqual(await got, obj);
    c.disconnect();
  });

  test('fan-out: 60 subscribers each get the event exactly once', async () => {
    const raws = [];
    for (let i = 0; i < 60; i++) {
      const rc = await server.rawConnected();
      await rc.subscribeOk('fanout');
      raws.push(rc);
    }
    const res = await json(sdk.trigger('fanout', 'all', { k: 1 }, { info: 'subscription_count' }));
    assert.deepEqual(res, { channels: { fanout: { subscription_count: 60 } } });
    await Promise.all(raws.map((rc) => rc.next('all')));
    await sleep(200);
    for (const rc of raws) {
      assert.equal(rc.all('all').length, 1);
      rc.close();
    }
  });

  test('events from the API are published in order to a subscriber', async () => {
    const c = await server.connectedClient();
    const ch = await subscribeOk(c, 'ordered');
    const seen = [];
    ch.bind('n', (d) => seen.push(d.i));
    for (let i = 0; i < 20; i++) await sdk.trigger('ordered', 'n', { i });
    await eventually(() => seen.length === 20, { what: '20 events' });
    assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i));
    await sleep(100);
    c.disconnect();
  });
});
