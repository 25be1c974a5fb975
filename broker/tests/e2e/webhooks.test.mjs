// Webhooks of one node: what happens on it (client events, cache misses) and what its one-node
// cluster commits (channels occupied and vacated, presence members added and removed). Pusher's
// wire format checked by the real SDKs' validators (Node `pusher.webhook()`, Python
// `validate_webhook`), filters, batching, the vacate delay, retries, refusals, timeouts and a
// restart. The cluster-wide semantics on three nodes are in webhooks_cluster.test.mjs.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import {
  freePort,
  startChorus,
  subscribeOk,
  once,
  eventually,
  metric,
  DEFAULT_APP,
  WAIT_MS,
} from './harness.mjs';
import { startReceiver, startPythonReceiver } from './webhook_receiver.mjs';

/**
 * A receiver checked by the Node SDK, the Python SDK's receiver, and a node whose app sends its
 * webhooks as `webhooks(node, python)` lists them, with `delivery` as its webhook_delivery.
 */
async function startWithReceivers(webhooks, delivery) {
  const node = await startReceiver(DEFAULT_APP);
  const python = await startPythonReceiver(DEFAULT_APP);
  const cleanup = async (server) => {
    await server?.cleanup();
    await node.close();
    await python.close();
  };
  try {
    const server = await startChorus({
      apps: [{ ...DEFAULT_APP, webhooks: webhooks(node, python), webhook_delivery: delivery }],
    });
    return { server, node, python, cleanup: () => cleanup(server) };
  } catch (e) {
    await cleanup(null);
    throw e;
  }
}

const clientEvents = (receiver, name) =>
  receiver.events().filter((e) => e.name === 'client_event' && e.event === name);

describe('webhooks of what happens on a node', () => {
  let started;
  let server;
  let node;
  let python;
  before(async () => {
    started = await startWithReceivers(
      (node, python) => [
        { url: node.url, event_types: ['client_event', 'cache_miss'], headers: { 'X-From': 'chorus' } },
        { url: python.url, event_types: ['client_event'], filter: { channel_name_starts_with: 'private-' } },
      ],
      { batch_window_ms: 200 },
    );
    ({ server, node, python } = started);
  });
  after(async () => {
    await started?.cleanup();
  });

  test('a client event reaches both receivers, valid for the Node and the Python SDK', async () => {
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    const chA = await subscribeOk(a, 'private-notes');
    const chB = await subscribeOk(b, 'private-notes');
    const delivered = once(chB, 'client-note');
    assert.equal(chA.trigger('client-note', { text: 'hi' }), true);
    await delivered;
    const [event] = await eventually(() => clientEvents(node, 'client-note').length && clientEvents(node, 'client-note'), {
      what: 'the client_event webhook',
    });
    assert.equal(event.channel, 'private-notes');
    assert.equal(event.data, JSON.stringify({ text: 'hi' }));
    assert.equal(event.socket_id, a.connection.socket_id);
    assert.equal(event.user_id, undefined, 'user_id only on presence channels');
    assert.match(event.id, /^[0-9a-f]{16}$/);
    assert.ok(node.requests.every((r) => r.valid), 'every request valid for pusher.webhook()');
    assert.ok(node.requests.every((r) => r.headers['x-from'] === 'chorus'));
    assert.ok(node.requests.every((r) => Math.abs(JSON.parse(r.body).time_ms - r.at) < 60_000));
    const [fromPython] = await eventually(() => clientEvents(python, 'client-note').length && clientEvents(python, 'client-note'), {
      what: 'the client_event at the Python receiver',
    });
    assert.ok(python.requests.every((r) => r.valid), 'every request valid for validate_webhook');
    assert.equal(fromPython.id, event.id, 'the same event has the same id at every webhook');
  });

  test('a presence client event carries user_id; the filter keeps it from the private-only webhook', async () => {
    const alice = await server.connectedClient({ user: { id: 'alice', info: {} } });
    const bob = await server.connectedClient({ user: { id: 'bob', info: {} } });
    const chA = await subscribeOk(alice, 'presence-room');
    const chB = await subscribeOk(bob, 'presence-room');
    const got = once(chB, 'client-wave');
    chA.trigger('client-wave', 'hello');
    await got;
    const [event] = await eventually(() => clientEvents(node, 'client-wave').length && clientEvents(node, 'client-wave'), {
      what: 'the presence client_event webhook',
    });
    assert.equal(event.user_id, 'alice');
    assert.equal(event.data, 'hello', 'a string sent as data arrives as that string');
    // Control: a private client event sent afterwards reaches the Python receiver.
    const pA = await subscribeOk(alice, 'private-after');
    await subscribeOk(bob, 'private-after');
    pA.trigger('client-after', {});
    await eventually(() => clientEvents(python, 'client-after').length, { what: 'the control event at Python' });
    assert.deepEqual(clientEvents(python, 'client-wave'), []);
  });

  test('a subscription that finds nothing cached is told as cache_miss; one that finds an event is not', async () => {
    const c = await server.connectedClient();
    await subscribeOk(c, 'cache-scores');
    const misses = () => node.events().filter((e) => e.name === 'cache_miss' && e.channel === 'cache-scores');
    await eventually(() => misses().length === 1, { what: 'one cache_miss webhook' });
    await server.sdk().trigger('cache-scores', 'score', { n: 1 });
    const d = await server.connectedClient();
    const ch = d.subscribe('cache-scores');
    await once(ch, 'score');
    // Control: a client event sent after the second subscription arrives; no second miss.
    const x = await server.connectedClient();
    const y = await server.connectedClient();
    const chX = await subscribeOk(x, 'private-control');
    await subscribeOk(y, 'private-control');
    chX.trigger('client-control', {});
    await eventually(() => clientEvents(node, 'client-control').length, { what: 'the control event' });
    assert.equal(misses().length, 1);
  });

  test('events close together go in one request', async () => {
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    const chA = await subscribeOk(a, 'private-burst');
    await subscribeOk(b, 'private-burst');
    for (let i = 0; i < 4; i++) chA.trigger('client-burst', { i });
    await eventually(() => clientEvents(node, 'client-burst').length === 4, { what: 'four burst events' });
    const carrying = node.requests.filter((r) => r.events.some((e) => e.event === 'client-burst'));
    assert.ok(carrying.length < 4, `4 events in ${carrying.length} requests`);
    assert.deepEqual(clientEvents(node, 'client-burst').map((e) => JSON.parse(e.data).i), [0, 1, 2, 3]);
  });
});

const named = (receiver, name, channel) =>
  receiver.events().filter((e) => e.name === name && e.channel === channel);

describe("webhooks of the cluster's changes, on one node", () => {
  let started;
  let server;
  let node;
  let python;
  const VACATE_DELAY_MS = 1000;
  before(async () => {
    started = await startWithReceivers(
      (node, python) => [
        {
          url: node.url,
          event_types: ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'subscription_count'],
        },
        {
          url: python.url,
          event_types: ['member_added', 'member_removed'],
          filter: { channel_name_starts_with: 'presence-' },
        },
      ],
      { batch_window_ms: 100, vacate_delay_ms: VACATE_DELAY_MS },
    );
    ({ server, node, python } = started);
  });
  after(async () => {
    await started?.cleanup();
  });

  test('the first subscriber occupies a channel, the last vacates it after the delay; once each', async () => {
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    await subscribeOk(a, 'news-once');
    await subscribeOk(b, 'news-once');
    await eventually(() => named(node, 'channel_occupied', 'news-once').length === 1, {
      what: 'channel_occupied',
    });
    a.unsubscribe('news-once');
    b.unsubscribe('news-once');
    const left = Date.now();
    await eventually(() => named(node, 'channel_vacated', 'news-once').length === 1, {
      timeout: WAIT_MS + VACATE_DELAY_MS,
      what: 'channel_vacated',
    });
    const vacated = node.requests.find((r) => r.events.some((e) => e.name === 'channel_vacated' && e.channel === 'news-once'));
    assert.ok(vacated.at - left >= VACATE_DELAY_MS - 100, `vacated ${vacated.at - left} ms after the last left`);
    assert.equal(named(node, 'channel_occupied', 'news-once').length, 1, 'one channel_occupied');
    const [occupied] = named(node, 'channel_occupied', 'news-once');
    assert.deepEqual(Object.keys(occupied).sort(), ['channel', 'id', 'name']);
    assert.notEqual(occupied.id, named(node, 'channel_vacated', 'news-once')[0].id);
    assert.ok(node.requests.every((r) => r.valid), 'every request valid for the Node SDK');
    a.disconnect();
    b.disconnect();
  });

  test('two tabs of a user: one member_added, and member_removed only when the last leaves; both SDKs', async () => {
    const channel = 'presence-tabs';
    const tab1 = await server.connectedClient({ user: { id: 'alice', info: { name: 'Alice' } } });
    const tab2 = await server.connectedClient({ user: { id: 'alice', info: { name: 'Alice' } } });
    const bob = await server.connectedClient({ user: { id: 'bob' } });
    for (const c of [tab1, tab2, bob]) await subscribeOk(c, channel);
    const users = (receiver, name) => named(receiver, name, channel).map((e) => e.user_id);
    await eventually(() => users(node, 'member_added').length === 2 && users(python, 'member_added').length === 2, {
      what: 'alice and bob added, at both receivers',
    });
    assert.deepEqual(users(node, 'member_added'), ['alice', 'bob']);

    tab1.disconnect();
    bob.disconnect();
    // Bob's member_removed was committed after alice's first tab left: once it is here, a
    // member_removed of alice would be here too.
    await eventually(() => users(node, 'member_removed').includes('bob'), { what: 'bob removed' });
    assert.deepEqual(users(node, 'member_removed'), ['bob'], 'alice still has a tab');

    tab2.disconnect();
    await eventually(() => users(node, 'member_removed').includes('alice'), { what: 'alice removed' });
    await eventually(() => users(python, 'member_removed').length === 2, { what: 'the Python SDK saw both leave' });
    assert.deepEqual(users(python, 'member_added'), ['alice', 'bob']);
    assert.deepEqual(users(python, 'member_removed'), ['bob', 'alice']);
    assert.ok(python.requests.every((r) => r.valid), 'valid for the Python SDK');
    const ids = named(node, 'member_added', channel).concat(named(node, 'member_removed', channel)).map((e) => e.id);
    assert.equal(new Set(ids).size, 4, 'each change its own id');
    assert.equal(named(python, 'channel_occupied', channel).length, 0, 'not a type the Python webhook wants');
  });

  test('subscription_count follows a channel up and down, once per settled change; none for presence', async () => {
    const counts = () => named(node, 'subscription_count', 'counted').map((e) => e.subscription_count);
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    await subscribeOk(a, 'counted');
    await subscribeOk(b, 'counted');
    await eventually(() => counts().at(-1) === 2, { what: 'a count of 2' });
    a.unsubscribe('counted');
    await eventually(() => counts().at(-1) === 1, { what: 'a count of 1' });
    b.unsubscribe('counted');
    await eventually(() => counts().at(-1) === 0, { what: 'a count of 0' });
    assert.deepEqual(counts().slice(-3), [2, 1, 0]);
    assert.ok(counts().length <= 4, `one event per settled change: ${counts()}`);
    const [event] = named(node, 'subscription_count', 'counted');
    assert.deepEqual(Object.keys(event).sort(), ['channel', 'id', 'name', 'subscription_count']);
    // The presence channels of the other tests joined and left: members, never counts.
    assert.ok(node.events().some((e) => e.channel === 'presence-tabs'));
    assert.equal(node.events().filter((e) => e.name === 'subscription_count' && e.channel.startsWith('presence-')).length, 0);
    a.disconnect();
    b.disconnect();
  });

  test('a subscriber back within the vacate delay sends neither channel_vacated nor a second channel_occupied', async () => {
    const a = await server.connectedClient();
    await subscribeOk(a, 'reload');
    await eventually(() => named(node, 'channel_occupied', 'reload').length === 1, { what: 'reload occupied' });
    a.unsubscribe('reload');
    // The vacate is committed and waits out its delay in the queue: then the subscriber returns.
    const waiting = async () =>
      metric(await server.metrics(), 'chorus_webhooks_queued', { webhook: 0, stream: 'cluster' });
    await eventually(async () => (await waiting()) === 1, { what: "reload's vacate to be queued" });
    await subscribeOk(a, 'reload');

    // The control's vacate is due after reload's would have been, and goes in the same queue.
    await subscribeOk(a, 'reload-control');
    await eventually(() => named(node, 'channel_occupied', 'reload-control').length === 1, {
      what: 'the control channel occupied',
    });
    a.unsubscribe('reload-control');
    await eventually(() => named(node, 'channel_vacated', 'reload-control').length === 1, {
      timeout: WAIT_MS + VACATE_DELAY_MS,
      what: 'the control channel vacated',
    });
    assert.equal(named(node, 'channel_vacated', 'reload').length, 0, 'no channel_vacated');
    assert.equal(named(node, 'channel_occupied', 'reload').length, 1, 'no second channel_occupied');
    assert.equal(await waiting(), 0, 'the vacate and the occupation dropped from the queue');

    a.disconnect();
    await eventually(() => named(node, 'channel_vacated', 'reload').length === 1, {
      timeout: WAIT_MS + VACATE_DELAY_MS,
      what: 'reload vacated once its subscriber is gone for good',
    });
  });
});

describe('webhooks whose receiver fails', () => {
  let server;
  let receiver;
  // What the receiver answers, per event name: a list of statuses used up one request at a
  // time (null: never answer), then 200.
  const plan = new Map();
  before(async () => {
    receiver = await startReceiver(DEFAULT_APP, {
      answer: (request) => {
        const name = request.events[0]?.event;
        const statuses = plan.get(name);
        return statuses?.length ? statuses.shift() : 200;
      },
    });
    server = await startChorus({
      apps: [
        {
          ...DEFAULT_APP,
          webhooks: [{ url: receiver.url, event_types: ['client_event'] }],
          webhook_delivery: { batching: false, timeout_ms: 500 },
        },
      ],
    });
  });
  after(async () => {
    await server?.cleanup();
    await receiver?.close();
  });

  async function clientEvent(name) {
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    const chA = await subscribeOk(a, `private-${name}`);
    const chB = await subscribeOk(b, `private-${name}`);
    const got = once(chB, name);
    chA.trigger(name, { name });
    await got;
    a.disconnect();
    b.disconnect();
  }

  const requestsFor = (name) => receiver.requests.filter((r) => r.events.some((e) => e.event === name));

  test('answers 500, 503 and a timeout are retried with the same event id until a 200', async () => {
    plan.set('client-flaky', [500, 503, null]);
    await clientEvent('client-flaky');
    const requests = await eventually(() => requestsFor('client-flaky').length === 4 && requestsFor('client-flaky'), {
      timeout: WAIT_MS * 3,
      what: 'four attempts',
    });
    const ids = new Set(requests.map((r) => r.events[0].id));
    assert.equal(ids.size, 1, 'one id across retries');
    assert.ok(requests.every((r) => r.valid));
    const text = await server.metrics();
    assert.ok(metric(text, 'chorus_webhook_retries_total', { app_id: DEFAULT_APP.id }) >= 3);
    assert.equal(metric(text, 'chorus_webhook_requests_failed_total', { app_id: DEFAULT_APP.id, reason: 'timeout' }), 1);
    assert.ok(metric(text, 'chorus_webhooks_sent_total', { app_id: DEFAULT_APP.id, type: 'client_event' }) >= 1);
  });

  test('a 404 or a redirect is not retried; the events after it still go', async () => {
    plan.set('client-gone', [404]);
    plan.set('client-moved', [302]);
    await clientEvent('client-gone');
    await clientEvent('client-moved');
    await clientEvent('client-later');
    await eventually(() => requestsFor('client-later').length === 1, { what: 'the event after the refusals' });
    assert.equal(requestsFor('client-gone').length, 1);
    assert.equal(requestsFor('client-moved').length, 1);
    const text = await server.metrics();
    assert.equal(
      metric(text, 'chorus_webhooks_dropped_total', { app_id: DEFAULT_APP.id, type: 'client_event', reason: 'refused' }),
      2,
    );
  });

  test('webhooks waiting for a receiver that is down are sent after the node restarts', async () => {
    plan.set('client-durable', Array(8).fill(503));
    await clientEvent('client-durable');
    await eventually(() => requestsFor('client-durable').length >= 1, { what: 'a first failed attempt' });
    await server.restart({ signal: 'SIGTERM' });
    const restarted = Date.now();
    plan.set('client-durable', []);
    await eventually(() => requestsFor('client-durable').some((r) => r.status === 200), {
      timeout: WAIT_MS * 3,
      what: 'the queued event accepted after the restart',
    });
    const requests = requestsFor('client-durable');
    assert.ok(requests.find((r) => r.status === 200).at >= restarted);
    assert.equal(new Set(requests.map((r) => r.events[0].id)).size, 1, 'one id before and after');
  });
});

describe('hostile webhook receivers', () => {
  let server;
  let good;
  let huge;
  let clusterPort;
  const hugeBytes = 100 * 1024 * 1024;
  let hugeSent = 0;
  before(async () => {
    good = await startReceiver(DEFAULT_APP);
    // Answers 200 with a 100 MB body, written as fast as the peer reads it.
    huge = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-length': String(hugeBytes) });
        const chunk = Buffer.alloc(1024 * 1024, 120);
        const pump = () => {
          while (hugeSent < hugeBytes && res.write(chunk)) hugeSent += chunk.length;
          if (hugeSent >= hugeBytes) res.end();
        };
        res.on('drain', pump);
        res.on('error', () => {});
        pump();
      });
    });
    await new Promise((resolve) => huge.listen(0, '127.0.0.1', resolve));
    clusterPort = await freePort();
    server = await startChorus({
      config: { cluster_port: clusterPort },
      apps: [
        {
          ...DEFAULT_APP,
          webhooks: [
            { url: `http://127.0.0.1:${huge.address().port}/`, event_types: ['client_event'] },
            { url: `http://127.0.0.1:${clusterPort}/cluster`, event_types: ['client_event'] },
            { url: good.url, event_types: ['client_event'] },
          ],
          webhook_delivery: { batching: false },
        },
      ],
    });
  });
  after(async () => {
    await server?.cleanup();
    huge?.closeAllConnections?.();
    await new Promise((resolve) => huge?.close(resolve) ?? resolve());
    await good?.close();
  });

  const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.proc.pid}/status`, 'utf8'))[1]);

  test("a 100 MB answer is not read, the node's own cluster port refuses, and neither blocks the others", async () => {
    const before = rssKiB();
    const a = await server.connectedClient();
    const b = await server.connectedClient();
    const chA = await subscribeOk(a, 'private-hostile');
    await subscribeOk(b, 'private-hostile');
    for (let i = 0; i < 5; i++) chA.trigger('client-hostile', { i });
    // The control: every event reaches the well-behaved receiver, in order.
    await eventually(() => clientEvents(good, 'client-hostile').length === 5, { what: 'five events at the good receiver' });
    assert.deepEqual(clientEvents(good, 'client-hostile').map((e) => JSON.parse(e.data).i), [0, 1, 2, 3, 4]);
    const text = await eventually(async () => {
      const t = await server.metrics();
      const sent = metric(t, 'chorus_webhooks_sent_total', { app_id: DEFAULT_APP.id, type: 'client_event' });
      const refused = metric(t, 'chorus_webhooks_dropped_total', { app_id: DEFAULT_APP.id, reason: 'refused' });
      return sent >= 10 && refused === 5 && t;
    }, { timeout: WAIT_MS * 2, what: '5 sent to the 100 MB receiver and 5 refused by the cluster port' });
    assert.equal(metric(text, 'chorus_webhook_retries_total', { app_id: DEFAULT_APP.id }), null);
    assert.ok(hugeSent < hugeBytes, `the 100 MB body was not read to its end (${hugeSent} bytes written)`);
    const grown = rssKiB() - before;
    assert.ok(grown < 32 * 1024, `RSS grew ${grown} KiB`);
  });
});
