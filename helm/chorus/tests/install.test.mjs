// The chart's StatefulSet run as real chorus processes (see statefulset.mjs and pod.mjs):
// `helm install` with 3 replicas forms one cluster with no other step, and a rolling restart of
// every pod under a load of history publishes and pusher-js subscribers loses no acknowledged
// publish while the subscribers recover exactly. Prints the install-to-ready time, the longest
// time without a leader during the restart and the publishes refused meanwhile.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherClient from 'pusher-js';
import PusherSDK from 'pusher';

import { withRecovery } from '../../../broker/tests/e2e/recovery.mjs';
import { LeaderWatch, StatefulSetRun, eventually } from './statefulset.mjs';

const BINARY = process.env.CHORUS_BIN && path.resolve(process.env.CHORUS_BIN);
const APP = { id: '1001', key: 'chart-app-key', secret: 'chart-app-secret-0123' };
const VALUES = {
  replicas: 3,
  app: { ...APP, history: [{ channels: 'chat-*', max_events: 100000 }] },
  clusterSecret: 'chart-cluster-secret-0123',
  logLevel: 'warn,openraft=off',
};

function sdk(host, port) {
  return new PusherSDK({
    appId: APP.id, key: APP.key, secret: APP.secret, host, port: String(port), useTLS: false, timeout: 10000,
  });
}

function newSubscriber(host, port) {
  return new PusherClient(APP.key, {
    wsHost: host, wsPort: port, forceTLS: false, enabledTransports: ['ws'], disableStats: true, cluster: 'x',
  });
}

/** Every event of a history channel, in offset order, as a pod stores it. */
async function history(pod, channel) {
  const events = [];
  for (;;) {
    const res = await sdk(pod.ip, pod.port('client')).get({
      path: `/channels/${channel}/history`,
      params: { after: String(events.length), limit: '1000' },
    });
    const page = (await res.json()).events;
    events.push(...page);
    if (page.length < 1000) return events;
  }
}

describe('the chart run as processes', { skip: !BINARY && 'CHORUS_BIN is not set' }, () => {
  let set;
  let installMs;
  const clients = []; // every pusher-js client, disconnected at the end whatever failed
  const subscriber = (host, port) => {
    const client = newSubscriber(host, port);
    clients.push(client);
    return client;
  };
  before(async () => {
    const started = Date.now();
    set = await StatefulSetRun.install({ binary: BINARY, release: 'chorus', namespace: 'chorus', values: VALUES });
    await set.awaitReady();
    installMs = Date.now() - started;
  });
  after(async () => {
    for (const client of clients) client.disconnect();
    await set?.uninstall();
  });

  test('helm install with 3 replicas forms one cluster: every pod ready, one leader, 3 voters', async (t) => {
    t.diagnostic(`install to all pods ready: ${installMs} ms`);
    await eventually(async () => {
      const views = await Promise.all(set.pods.map((p) => set.clusterStatus(p)));
      const leaders = views.filter((v) => v.state === 'leader');
      const voters = views.map((v) => JSON.stringify(v.members.filter((m) => m.voter).map((m) => m.id)));
      return leaders.length === 1 && views.every((v) => v.leader_id === leaders[0].node_id) &&
        voters.every((v) => v === '[0,1,2]');
    }, { what: 'one leader that every pod follows, and voters 0, 1 and 2 everywhere' });
    assert.deepEqual(set.pods.map((p) => p.failures), [[], [], []]);
  });

  test('a pusher-js subscriber on one pod receives a publish made through another', async () => {
    const client = subscriber(set.pod(1).ip, set.pod(1).port('client'));
    try {
      const channel = client.subscribe('scores');
      await new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
      const got = [];
      channel.bind('goal', (data) => got.push(data));
      const publisher = sdk(set.pod(2).ip, set.pod(2).port('client'));
      // Pod 2 forwards once it has applied pod 1's interest in the channel: publish until then.
      await eventually(async () => {
        await publisher.trigger('scores', 'goal', { n: 1 });
        return got.length > 0;
      }, { interval: 200, what: 'the event published through pod 2 on pod 1' });
      assert.deepEqual(got[0], { n: 1 });
    } finally {
      client.disconnect();
    }
  });

  test('a rolling restart under load loses no acknowledged publish; subscribers recover exactly', async (t) => {
    const channel = 'chat-roll';
    const received = [];
    const resumes = { recovered: 0, notRecovered: 0 };
    for (let i = 0; i < 4; i++) {
      const client = subscriber('127.0.0.1', set.service.port); // through the client Service
      withRecovery(client);
      const got = [];
      const sub = client.subscribe(channel);
      sub.bind('msg', (data) => got.push(data.n));
      await new Promise((resolve) => sub.bind('pusher:subscription_succeeded', resolve));
      sub.bind('pusher:subscription_succeeded', ({ recovered }) => {
        resumes[recovered ? 'recovered' : 'notRecovered']++;
      });
      received.push(got);
    }
    const publisher = sdk('127.0.0.1', set.service.port);
    const acknowledged = [];
    const outcomes = { ok: 0, refused503: 0, failed: 0 };
    let publishing = true;
    const load = (async () => {
      for (let n = 1; publishing; n++) {
        try {
          await publisher.trigger(channel, 'msg', { n });
          acknowledged.push(n);
          outcomes.ok++;
        } catch (e) {
          if (e.status === 503) outcomes.refused503++;
          else outcomes.failed++;
          await sleep(20); // a publisher backs off a little before it retries
        }
      }
    })();
    let ends;
    let noLeaderMs;
    const watch = new LeaderWatch(set);
    try {
      await eventually(() => acknowledged.length >= 20, { what: 'publishes before the restart' });
      ends = await set.rollingRestart();
      noLeaderMs = await watch.stop();
      const lastBefore = acknowledged.length;
      await eventually(() => acknowledged.length >= lastBefore + 20, { what: 'publishes after the restart' });
    } finally {
      publishing = false; // whatever failed, the load and the watch stop
      await Promise.all([load, watch.stop()]);
    }

    t.diagnostic(`pods ended: ${JSON.stringify(ends)}`);
    t.diagnostic(`longest time with no leader during the restart: ${noLeaderMs} ms`);
    t.diagnostic(`history publishes: ${JSON.stringify(outcomes)}`);
    t.diagnostic(`resumes of the subscribers: ${JSON.stringify(resumes)}`);
    for (const end of ends) assert.equal(end.killed, false, `${end.pod} exited within its grace period`);
    assert.deepEqual(set.pods.map((p) => p.failures), [[], [], []], 'no probe failure');

    // Every pod stores the same history (once each has applied the last entries), holding every
    // acknowledged publish.
    let stored;
    await eventually(async () => {
      stored = await Promise.all(set.pods.map((p) => history(p, channel)));
      return stored.every((s) => JSON.stringify(s) === JSON.stringify(stored[0]));
    }, { what: 'the same history on every pod' });
    const sequence = stored[0].map((e) => JSON.parse(e.data).n);
    assert.deepEqual(stored[0].map((e) => e.offset), sequence.map((_, i) => i + 1), 'offsets 1, 2, 3, ...');
    const kept = new Set(sequence);
    assert.deepEqual(acknowledged.filter((n) => !kept.has(n)), [], 'acknowledged publishes lost');
    // Every subscriber got exactly that history, in order, whatever pod it ended on.
    await eventually(() => received.every((got) => got.length >= sequence.length), {
      what: 'every subscriber to catch up',
    });
    received.forEach((got, i) => {
      const at = got.findIndex((n, j) => n !== sequence[j]);
      const around = (list) => JSON.stringify(list.slice(Math.max(0, at - 3), at + 4));
      assert.ok(at === -1 && got.length === sequence.length,
        `subscriber ${i}: ${got.length} events for ${sequence.length} stored; first difference at ` +
        `${at}: got ${around(got)}, stored ${around(sequence)}`);
    });
  });
});
