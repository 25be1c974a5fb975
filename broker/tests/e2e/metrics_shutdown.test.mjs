// Prometheus metrics and graceful shutdown.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  subscribeOk,
  once,
  record,
  frameData,
  waitState,
  metric,
  eventually,
  sleep,
  presenceAuth,
  privateAuth,
} from './harness.mjs';

describe('metrics', () => {
  let server;
  before(async () => {
    server = await startChorus();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('GET /metrics on the metrics port is Prometheus text with chorus_ series', async () => {
    const res = await fetch(server.metricsUrl);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    for (const name of [
      'chorus_connections',
      'chorus_subscriptions',
      'chorus_channels',
      'chorus_messages_received_total',
      'chorus_messages_sent_total',
      'chorus_deliveries_total',
      'chorus_publish_to_write_seconds_bucket',
      'chorus_publish_to_write_seconds_count',
    ]) {
      assert.ok(text.split('\n').some((l) => l.startsWith(name)), `missing ${name}`);
    }
    assert.match(text, /# TYPE chorus_connections gauge/);
    assert.match(text, /# TYPE chorus_publish_to_write_seconds histogram/);
  });

  test('the metrics port does not serve the HTTP API', async () => {
    const res = await fetch(`http://127.0.0.1:${server.metricsPort}/apps/${server.app.id}/channels`);
    assert.notEqual(res.status, 200);
  });

  test('gauges follow connections, subscriptions and channels; counters count traffic', async () => {
    const id = server.app.id;
    const base = await server.metrics();
    const conn0 = metric(base, 'chorus_connections', { app_id: id }) ?? 0;
    const deliv0 = metric(base, 'chorus_deliveries_total', { app_id: id }) ?? metric(base, 'chorus_deliveries_total') ?? 0;
    const recv0 = metric(base, 'chorus_messages_received_total') ?? 0;

    const a = await server.connectedClient();
    const b = await server.connectedClient();
    const chA = await subscribeOk(a, 'metrics-1');
    await subscribeOk(b, 'metrics-1');
    await subscribeOk(b, 'metrics-2');

    await eventually(
      async () => {
        const t = await server.metrics();
        return (
          metric(t, 'chorus_connections', { app_id: id }) === conn0 + 2 &&
          metric(t, 'chorus_subscriptions', { app_id: id }) >= 3 &&
          metric(t, 'chorus_channels', { app_id: id }) >= 2
        );
      },
      { what: 'connections +2, subscriptions >= 3, channels >= 2' },
    );

    const got = once(chA, 'm');
    await server.sdk().trigger('metrics-1', 'm', {});
    await got;
    await eventually(
      async () => {
        const t = await server.metrics();
        const deliv = metric(t, 'chorus_deliveries_total', { app_id: id }) ?? metric(t, 'chorus_deliveries_total');
        return deliv >= deliv0 + 2 && metric(t, 'chorus_publish_to_write_seconds_count') >= 1;
      },
      { what: 'deliveries +2 and a publish-to-write sample' },
    );
    const t = await server.metrics();
    assert.ok((metric(t, 'chorus_messages_received_total') ?? 0) > recv0, 'subscribes count as received messages');
    assert.ok((metric(t, 'chorus_http_requests_total') ?? 0) >= 1, 'HTTP requests are counted');
    assert.ok((metric(t, 'chorus_messages_sent_total') ?? 0) >= 1);

    a.disconnect();
    b.disconnect();
    await eventually(
      async () => {
        const t2 = await server.metrics();
        return metric(t2, 'chorus_connections', { app_id: id }) === conn0 && metric(t2, 'chorus_channels', { app_id: id }) === 0;
      },
      { what: 'connections and channels back down' },
    );
    const t3 = await server.metrics();
    assert.ok(
      t3.split('\n').some((l) => l.startsWith('chorus_disconnects_total{') && /reason="/.test(l) && /code="/.test(l)),
      `disconnects are counted with reason and code labels:\n${t3.split('\n').filter((l) => l.includes('disconnect')).join('\n')}`,
    );
  });
});

describe('no leaks after churn', () => {
  test('40 clients join presence/public/private channels and vanish abruptly; every gauge returns to zero', async () => {
    const server = await startChorus();
    try {
      const raws = [];
      for (let i = 0; i < 40; i++) {
        const rc = await server.rawConnected();
        await rc.subscribeOk(`churn-pub-${i % 5}`);
        await rc.subscribeOk('private-churn', { auth: privateAuth(server.app, rc.socketId, 'private-churn') });
        const cd = JSON.stringify({ user_id: `u${i % 7}`, user_info: {} });
        await rc.subscribeOk('presence-churn', { auth: presenceAuth(server.app, rc.socketId, 'presence-churn', cd), channel_data: cd });
        raws.push(rc);
      }
      const id = server.app.id;
      let t = await server.metrics();
      assert.equal(metric(t, 'chorus_connections', { app_id: id }), 40);
      assert.equal(metric(t, 'chorus_subscriptions', { app_id: id }), 120);
      assert.equal(metric(t, 'chorus_channels', { app_id: id }), 7);
      for (const [i, rc] of raws.entries()) {
        if (i % 2) rc.ws.terminate();
        else rc.close();
      }
      await eventually(
        async () => {
          t = await server.metrics();
          return (
            metric(t, 'chorus_connections', { app_id: id }) === 0 &&
            metric(t, 'chorus_subscriptions', { app_id: id }) === 0 &&
            metric(t, 'chorus_channels', { app_id: id }) === 0
          );
        },
        { what: 'gauges back to 0', timeout: 6000 },
      );
      const list = await (await server.sdk().get({ path: '/channels' })).json();
      assert.deepEqual(list, { channels: {} });
      const users = await (await server.sdk().get({ path: '/channels/presence-churn/users' })).json();
      assert.deepEqual(users, { users: [] });
    } finally {
      await server.cleanup();
    }
  });
});

describe('graceful shutdown', () => {
  test('SIGTERM: every client gets pusher:error 4200 and close 4200; the process exits 0', async () => {
    const server = await startChorus({ config: { shutdown_timeout_secs: 5 } });
    try {
      const raws = [];
      for (let i = 0; i < 3; i++) {
        const rc = await server.rawConnected();
        await rc.subscribeOk(`shut-${i}`);
        raws.push(rc);
      }
      const js = await server.connectedClient();
      await subscribeOk(js, 'shut-js');
      const jsErrors = record(js.connection, 'error');

      const exit = server.stop({ keepClients: true });
      for (const rc of raws) {
        const err = await rc.next('pusher:error', { timeout: 6000 });
        assert.equal(frameData(err).code, 4200);
        const closed = await rc.waitClosed(6000);
        assert.equal(closed.code, 4200);
      }
      await eventually(
        () => jsErrors.items.some((e) => (e?.data?.code ?? e?.error?.data?.code) === 4200),
        { what: 'pusher-js to see 4200', timeout: 6000 },
      );
      js.disconnect(); // 4200 means "reconnect at once"; stop it from retrying a dead server
      const { code, signal } = await exit;
      assert.equal(signal, null);
      assert.equal(code, 0, `exit code; stderr tail:\n${server.stderr().slice(-2000)}`);
    } finally {
      await server.cleanup();
    }
  });

  test('after a restart on the same port, pusher-js reconnects by itself and resubscribes', async () => {
    let server = await startChorus();
    const { port } = server;
    let js;
    try {
      js = server.client({ user: { id: 'back', info: {} } });
      server.clients.delete(js); // it outlives this server process; disconnected in finally
      const pub = await subscribeOk(js, 'restart-pub');
      const pres = await subscribeOk(js, 'presence-restart');
      const firstSocket = js.connection.socket_id;
      const errors = record(js.connection, 'error');
      const { code } = await server.stop({ keepClients: true });
      assert.equal(code, 0);
      await eventually(
        () => errors.items.some((e) => (e?.data?.code ?? e?.error?.data?.code) === 4200),
        { what: 'pusher-js to see 4200' },
      );
      await server.cleanup();
      server = await startChorus({ port });
      await waitState(js, 'connected', 30000); // pusher-js backs off while the port is closed
      assert.notEqual(js.connection.socket_id, firstSocket);
      await eventually(() => pub.subscribed && pres.subscribed, { what: 'resubscription', timeout: 5000 });
      const got = once(pub, 'again');
      await server.sdk().trigger('restart-pub', 'again', { n: 2 });
      assert.deepEqual(await got, { n: 2 });
      const users = await (await server.sdk().get({ path: '/channels/presence-restart/users' })).json();
      assert.deepEqual(users, { users: [{ id: 'back' }] });
    } finally {
      js?.disconnect();
      await server.cleanup();
    }
  });

  test('SIGTERM with no clients exits 0 quickly', async () => {
    const server = await startChorus();
    try {
      const t0 = Date.now();
      const { code } = await server.stop();
      assert.equal(code, 0);
      assert.ok(Date.now() - t0 < 5000, 'exits within 5 s');
    } finally {
      await server.cleanup();
    }
  });

  test('SIGINT also exits 0', async () => {
    const server = await startChorus();
    try {
      const rc = await server.rawConnected();
      server.proc.kill('SIGINT');
      assert.equal((await rc.waitClosed(6000)).code, 4200);
      const { code } = await server.exited;
      assert.equal(code, 0);
    } finally {
      await server.cleanup();
    }
  });

  test('a bad config exits non-zero naming the key', async () => {
    await assert.rejects(
      startChorus({ apps: [{ id: '1', key: 'k', secret: 'short' }] }),
      (e) => /exited early \(\{"code":[1-9]/.test(e.message) && /secret/.test(e.message),
    );
    await assert.rejects(
      startChorus({ config: { activity_timeout_secs: 'soon' } }),
      (e) => /exited early \(\{"code":[1-9]/.test(e.message) && /activity_timeout_secs/.test(e.message),
    );
  });
});
