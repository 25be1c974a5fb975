// A load of history publishes and pusher-js subscribers, all through the client Service, as an
// app and its browsers use a Chorus release while it is upgraded: the publisher, the real
// `pusher` SDK, publishes 1, 2, 3, ... to one history channel as fast as it is answered; each
// subscriber, the real pusher-js, resumes with `since` when its pod goes away. Counts what each
// step of an upgrade did to them (publishes acknowledged, refused with 503 or failed otherwise,
// resumes recovered or not), then checks that nothing acknowledged was lost or stored twice and
// that every subscriber received exactly what the pods store.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherClient from 'pusher-js';
import PusherSDK from 'pusher';

import { withRecovery } from '../../../broker/tests/e2e/recovery.mjs';
import { eventually } from './wait.mjs';

/** The `pusher` SDK of `app`, talking to `host:port`. */
export function sdk(app, host, port) {
  return new PusherSDK({
    appId: app.id, key: app.key, secret: app.secret, host, port: String(port), useTLS: false, timeout: 10000,
  });
}

/** A pusher-js client of `app` on `host:port`, WebSocket only. */
export function pusherJs(app, host, port) {
  return new PusherClient(app.key, {
    wsHost: host, wsPort: port, forceTLS: false, enabledTransports: ['ws'], disableStats: true, cluster: 'x',
  });
}

/** Every event of a history channel, in offset order, as one pod stores it. */
export async function storedHistory(app, pod, channel) {
  const events = [];
  for (;;) {
    const res = await sdk(app, pod.ip, pod.port('client')).get({
      path: `/channels/${channel}/history`,
      params: { after: String(events.length), limit: '1000' },
    });
    const page = (await res.json()).events;
    events.push(...page);
    if (page.length < 1000) return events;
  }
}

/**
 * A step's counts, each publish and resume counted in the step it ended in: publishes
 * acknowledged, refused (503) or failed otherwise (with the first errors), the slowest
 * acknowledgement; subscriber connections dropped, the `pusher:error` codes they were told, and
 * their resumes, recovered or not.
 */
function newStep() {
  return {
    ok: 0, refused503: 0, failed: 0, slowestAckMs: 0, dropped: 0, told: {}, recovered: 0, notRecovered: 0, errors: [],
  };
}

export class HistoryLoad {
  /** `set` is the StatefulSetRun; everything goes through its client Service. */
  constructor(set, app, channel) {
    this.set = set;
    this.app = app;
    this.channel = channel;
    this.acknowledged = [];
    this.subscribers = []; // { client, from: the channel's offset at subscription, got: [n] }
    this.steps = { start: newStep() };
    this.current = this.steps.start;
    this.publishing = false;
  }

  /** Starts `subscribers` subscribers, then the publisher. */
  async start({ subscribers = 4 } = {}) {
    for (let i = 0; i < subscribers; i++) await this.subscribe();
    this.publishing = true;
    this.publisher = this.#publish();
  }

  /** From now on, what happens is counted under `name`. */
  step(name) {
    this.current = this.steps[name] = newStep();
  }

  /** One more subscriber, through the Service; resolves once it is subscribed. */
  async subscribe() {
    const client = pusherJs(this.app, '127.0.0.1', this.set.service.port);
    withRecovery(client);
    const subscriber = { client, from: null, got: [] };
    this.subscribers.push(subscriber);
    client.connection.bind('state_change', ({ previous }) => {
      if (previous === 'connected') this.current.dropped++;
    });
    client.connection.bind('error', (error) => {
      const code = error?.data?.code ?? error?.type ?? 'error';
      this.current.told[code] = (this.current.told[code] ?? 0) + 1;
    });
    const channel = client.subscribe(this.channel);
    channel.bind('msg', (data) => subscriber.got.push(data.n));
    await new Promise((resolve, reject) => {
      channel.bind('pusher:subscription_succeeded', ({ offset, recovered }) => {
        if (subscriber.from === null) {
          subscriber.from = offset; // the channel's head: what comes next is offset + 1 on
          if (typeof offset === 'number') resolve();
          else reject(new Error(`the subscription to ${this.channel} named no offset`));
        } else {
          this.current[recovered ? 'recovered' : 'notRecovered']++;
        }
      });
    });
    return subscriber;
  }

  async #publish() {
    const publisher = sdk(this.app, '127.0.0.1', this.set.service.port);
    for (let n = 1; this.publishing; n++) {
      const step = this.current;
      const started = Date.now();
      try {
        await publisher.trigger(this.channel, 'msg', { n });
        this.acknowledged.push(n);
        step.ok++;
        step.slowestAckMs = Math.max(step.slowestAckMs, Date.now() - started);
      } catch (e) {
        if (e.status === 503) step.refused503++;
        else {
          step.failed++;
          if (step.errors.length < 5) step.errors.push(e.status ? `${e.status} ${e.body}` : String(e.message ?? e));
        }
        await sleep(20); // a publisher backs off a little before it retries
      }
    }
  }

  /** Waits for `count` more acknowledged publishes. */
  async awaitPublishes(count, { what = 'publishes', timeout = 20000 } = {}) {
    const target = this.acknowledged.length + count;
    await eventually(() => this.acknowledged.length >= target, { what: `${count} ${what}`, timeout });
  }

  /** Stops the publisher (waiting for its last publish to be answered). */
  async stopPublishing() {
    this.publishing = false;
    await this.publisher;
  }

  /** Disconnects every subscriber and stops the publisher, whatever failed. */
  async close() {
    await this.stopPublishing();
    for (const { client } of this.subscribers) client.disconnect();
  }

  /**
   * The pods' histories agree: each is the start of the longest one (a pod may be a few entries
   * behind under load). Resolves with the longest.
   */
  async historiesAgree(pods) {
    const stored = await Promise.all(pods.map((p) => storedHistory(this.app, p, this.channel)));
    const longest = stored.reduce((a, b) => (b.length > a.length ? b : a));
    stored.forEach((events, i) => {
      assert.deepEqual(events, longest.slice(0, events.length), `${pods[i].name}'s history is not a prefix of the others'`);
    });
    return longest.map((e) => JSON.parse(e.data).n);
  }

  /**
   * Once the publisher stopped: every pod stores the same history, once each has applied the
   * last entries, at offsets 1, 2, 3, ..., with every acknowledged publish once; every
   * subscriber received exactly that history from its subscription on, in order, whatever pods
   * it moved between; no resume was answered `recovered: false`.
   */
  async verify(pods) {
    let stored;
    await eventually(async () => {
      stored = await Promise.all(pods.map((p) => storedHistory(this.app, p, this.channel)));
      return stored.every((s) => JSON.stringify(s) === JSON.stringify(stored[0]));
    }, { what: `the same history on ${pods.map((p) => p.name).join(', ')}` });
    const sequence = stored[0].map((e) => JSON.parse(e.data).n);
    assert.deepEqual(stored[0].map((e) => e.offset), sequence.map((_, i) => i + 1), 'offsets 1, 2, 3, ...');
    assert.equal(new Set(sequence).size, sequence.length, 'a publish stored twice');
    const kept = new Set(sequence);
    assert.deepEqual(this.acknowledged.filter((n) => !kept.has(n)), [], 'acknowledged publishes lost');

    const expected = (s) => sequence.slice(s.from);
    await eventually(() => this.subscribers.every((s) => s.got.length >= expected(s).length), {
      what: 'every subscriber to catch up',
    });
    this.subscribers.forEach((s, i) => {
      const want = expected(s);
      const at = s.got.findIndex((n, j) => n !== want[j]);
      const around = (list) => JSON.stringify(list.slice(Math.max(0, at - 3), at + 4));
      assert.ok(at === -1 && s.got.length === want.length,
        `subscriber ${i} (from offset ${s.from}): ${s.got.length} events for ${want.length} stored; ` +
        `first difference at ${at}: got ${around(s.got)}, stored ${around(want)}`);
    });
    const notRecovered = Object.entries(this.steps).filter(([, step]) => step.notRecovered > 0);
    assert.deepEqual(notRecovered.map(([name, step]) => `${name}: ${step.notRecovered}`), [], 'resumes not recovered');
    return sequence;
  }

  /** The counts of a step, for a diagnostic line. */
  summary(name) {
    const { errors, ...counts } = this.steps[name];
    return `${JSON.stringify(counts)}${errors.length ? ` errors: ${errors.join('; ')}` : ''}`;
  }
}
