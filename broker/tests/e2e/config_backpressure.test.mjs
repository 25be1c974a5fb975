// Configuration plumbing (CHORUS_CONFIG, env overriding the file) and the slow-reader cut-off.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  frameData,
  metric,
  eventually,
  sleep,
} from './harness.mjs';

describe('configuration', () => {
  test('CHORUS_CONFIG names the file; its apps and limits apply; CHORUS_APP_* override the first app', async () => {
    const server = await startChorus({
      configVia: 'env',
      config: { activity_timeout_secs: 33 },
      apps: [
        { id: '11', key: 'cfg-key-1', secret: 'cfg-secret-1-abcdef', limits: { max_connections: 1 } },
        { id: '12', key: 'cfg-key-2', secret: 'cfg-secret-2-abcdef' },
      ],
      // the harness always sets CHORUS_APP_* to the first app; override them with other values
      env: { CHORUS_APP_KEY: 'env-key-1', CHORUS_APP_SECRET: 'env-secret-1-abcdef' },
    });
    try {
      const first = { id: '11', key: 'env-key-1', secret: 'env-secret-1-abcdef' };
      const rc = await server.rawConnected({ app: first });
      assert.equal(rc.established.activity_timeout, 33);
      // the file's key for app 1 is overridden: it is now unknown
      const old = await server.raw({ app: 'cfg-key-1' });
      assert.equal(frameData(await old.next('pusher:error')).code, 4001);
      // the limit from the file still applies to the (renamed) first app
      const second = await server.raw({ app: first });
      assert.equal(frameData(await second.next('pusher:error')).code, 4004);
      // the second app is there, with its own credentials
      const c = await server.connectedClient({ app: { id: '12', key: 'cfg-key-2', secret: 'cfg-secret-2-abcdef' } });
      const ch = await subscribeOk(c, 'private-cfg');
      const got = once(ch, 'e');
      await server.sdk({ id: '12', key: 'cfg-key-2', secret: 'cfg-secret-2-abcdef' }).trigger('private-cfg', 'e', { ok: 1 });
      assert.deepEqual(await got, { ok: 1 });
      // and the HTTP API of app 1 takes the overriding secret
      const res = await server.sdk(first).get({ path: '/channels' });
      assert.equal(res.status, 200);
      c.disconnect();
      rc.close();
    } finally {
      await server.cleanup();
    }
  });
});

describe('slow readers', () => {
  test('a subscriber that stops reading is closed with 4100; the reading one gets every published event', async () => {
    const server = await startChorus({ config: { max_outbound_bytes: 65536 } });
    try {
      const slow = await server.rawConnected();
      await slow.subscribeOk('firehose');
      const fast = await server.rawConnected();
      await fast.subscribeOk('firehose');
      slow.ws._socket.pause(); // stop reading: the kernel buffers fill, then the server's outbound buffer
      const sdk = server.sdk();
      const payload = 'z'.repeat(9000);
      let published = 0;
      let refused = 0;
      const deadline = Date.now() + 15000;
      let cut = false;
      while (!cut && Date.now() < deadline) {
        await Promise.all(
          Array.from({ length: 3 }, async () => {
            try {
              await sdk.trigger('firehose', 'big', payload);
              published++;
            } catch (e) {
              if (e.status !== 429) throw e; // publishers outrunning delivery may be told to slow down
              refused++;
            }
          }),
        );
        if (published % 30 < 3) {
          cut = (metric(await server.metrics(), 'chorus_slow_reader_disconnects_total') ?? 0) > 0;
        }
      }
      assert.ok(cut, `the slow reader was not cut off after ${published} events (${refused} refused with 429)`);
      const text = await server.metrics();
      assert.equal(metric(text, 'chorus_disconnects_total', { code: '4100' }), 1);

      slow.ws._socket.resume();
      const closed = await slow.waitClosed(5000);
      assert.equal(closed.code, 4100);

      await eventually(() => fast.all('big').length === published, {
        what: `the fast reader to get all ${published} events (has ${fast.all('big').length})`,
        timeout: 5000,
      });
      assert.ok(fast.isOpen, 'the fast reader stays connected');
      await fast.ping();
      fast.close();
    } finally {
      await server.cleanup();
    }
  });
});
