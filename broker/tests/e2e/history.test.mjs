// History channels with real clients: pusher-js recovering with the `since` extension (the
// README's snippet, in recovery.mjs), the `eventsource` package and a real browser's EventSource
// resuming with Last-Event-ID across a `kill -9` and restart of the node.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { existsSync } from 'node:fs';

import { EventSource } from 'eventsource';
import { chromium } from 'playwright-core';

import { startChorus, subscribeOk, waitState, eventually, freePort, DEFAULT_APP } from './harness.mjs';
import { withRecovery } from './recovery.mjs';

const APP = { ...DEFAULT_APP, history: [{ channels: 'chat-*', max_events: 100000 }] };

/** Publishes `count` events named `msg` with data `${prefix} ${i}`, ten per request. */
async function publish(sdk, channel, prefix, count) {
  for (let i = 0; i < count; i += 10) {
    const batch = [];
    for (let j = i; j < Math.min(i + 10, count); j++) batch.push({ channel, name: 'msg', data: `${prefix} ${j}` });
    const res = await sdk.triggerBatch(batch);
    assert.equal(res.status, 200);
  }
}

const labels = (prefix, count) => Array.from({ length: count }, (_, i) => `${prefix} ${i}`);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('history channels with real clients', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus({ apps: [APP] });
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('pusher-js with the since extension sees every missed offset once, in order', async () => {
    const client = server.client();
    withRecovery(client);
    // Offsets as they arrive on the wire, to check the order pusher-js delivers them in.
    const offsets = [];
    client.connection.bind('connected', () => {
      client.connection.connection.transport.bind('message', (e) => {
        const frame = JSON.parse(e.data);
        if (frame.event === 'msg') offsets.push(frame.offset);
      });
    });
    await waitState(client, 'connected');
    const channel = await subscribeOk(client, 'chat-room');
    const got = [];
    channel.bind('msg', (data) => got.push(data));
    const confirmations = [];
    channel.bind('pusher:subscription_succeeded', (data) => confirmations.push(data));

    await publish(sdk, 'chat-room', 'before', 10);
    await eventually(() => got.length === 10, { what: '10 events' });

    client.disconnect();
    await waitState(client, 'disconnected');
    await publish(sdk, 'chat-room', 'away', 500);
    // pusher-js resubscribes on its own when it reconnects; 200 more go out meanwhile.
    client.connect();
    await publish(sdk, 'chat-room', 'during', 200);
    await eventually(() => got.length >= 710, { timeout: 15000, what: '710 events' });
    await eventually(() => offsets.length >= 710, { what: '710 offsets' });

    assert.deepEqual(got, [...labels('before', 10), ...labels('away', 500), ...labels('during', 200)]);
    assert.deepEqual(offsets, range(1, 710));
    assert.equal(confirmations.length, 1);
    assert.equal(confirmations[0].recovered, true);
    client.disconnect();
  });

  test('a pusher-js client with a stale epoch is told recovered: false', async () => {
    await publish(sdk, 'chat-stale', 'x', 3);
    const client = server.client();
    const positions = withRecovery(client);
    positions['chat-stale'] = { epoch: 'not-the-epoch', offset: 1 };
    await waitState(client, 'connected');
    const channel = client.subscribe('chat-stale');
    const data = await new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
    assert.equal(data.recovered, false);
    assert.equal(data.offset, 3);
    // The client starts again from the head.
    await eventually(() => positions['chat-stale'].offset === 3 && positions['chat-stale'].epoch === data.epoch);
    client.disconnect();
  });

  test('the eventsource package resumes with Last-Event-ID across kill -9 and a restart', async () => {
    const es = new EventSource(`${server.baseUrl}/app/${APP.key}/sse?channels=chat-sse`);
    const got = [];
    let opens = 0;
    es.addEventListener('msg', (e) => got.push(JSON.parse(e.data)));
    es.addEventListener('open', () => opens++);
    try {
      await eventually(() => opens === 1, { what: 'the stream to open' });
      await publish(sdk, 'chat-sse', 'first', 100);
      // Acknowledged, maybe not yet delivered: the node dies with no chance to send the rest.
      await server.restart({ signal: 'SIGKILL' });
      sdk = server.sdk();
      await publish(sdk, 'chat-sse', 'second', 100);
      await eventually(() => got.length >= 200, { timeout: 15000, what: '200 events' });
      assert.ok(opens >= 2, 'the stream reconnected');
      assert.deepEqual(
        got.map((e) => e.offset),
        range(1, 200),
      );
      assert.deepEqual(
        got.map((e) => e.data),
        [...labels('first', 100), ...labels('second', 100)],
      );
      assert.ok(got.every((e) => e.channel === 'chat-sse' && typeof e.epoch === 'string'));
    } finally {
      es.close();
    }
  });

  test('a real browser (headless Chromium) keeps every event across a restart of the node', async (t) => {
    const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
    assert.ok(existsSync(executablePath), `Chromium not found at ${executablePath}; run.sh installs it`);
    const sseUrl = `${server.baseUrl}/app/${APP.key}/sse?channels=chat-browser`;
    // The page comes from another origin, so the stream also needs Chorus's CORS headers.
    const page = `<!doctype html><title>chorus sse</title><script>
      window.received = []; window.opens = 0;
      const source = new EventSource(${JSON.stringify(sseUrl)});
      source.onopen = () => window.opens++;
      source.addEventListener('msg', (e) => window.received.push(JSON.parse(e.data)));
    </script>`;
    const pageServer = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(page);
    });
    const pagePort = await freePort();
    await new Promise((resolve) => pageServer.listen(pagePort, '127.0.0.1', resolve));
    const browser = await chromium.launch({
      executablePath,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    t.after(async () => {
      await browser.close();
      pageServer.close();
    });
    const tab = await browser.newPage();
    await tab.goto(`http://127.0.0.1:${pagePort}/`);
    await tab.waitForFunction(() => window.opens === 1, null, { timeout: 10000 });

    await publish(sdk, 'chat-browser', 'before', 50);
    await server.restart({ signal: 'SIGKILL' });
    sdk = server.sdk();
    await publish(sdk, 'chat-browser', 'after', 50);
    await tab.waitForFunction(() => window.received.length >= 100, null, { timeout: 15000 });

    const received = await tab.evaluate(() => window.received);
    assert.deepEqual(
      received.map((e) => e.offset),
      range(1, 100),
    );
    assert.deepEqual(
      received.map((e) => e.data),
      [...labels('before', 50), ...labels('after', 50)],
    );
    assert.ok((await tab.evaluate(() => window.opens)) >= 2, 'the browser reconnected');
  });
});
