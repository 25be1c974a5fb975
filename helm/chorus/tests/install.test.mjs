// The chart's StatefulSet run as real chorus processes (see statefulset.mjs and pod.mjs), one
// release through every step, each under a load of history publishes and pusher-js subscribers
// going through the client Service (load.mjs):
// - `helm install` with 3 replicas forms one cluster with no other step;
// - a `helm upgrade` of the image rolls every pod: the leader hands over on SIGTERM, so the
//   cluster is hardly without a leader;
// - `helm upgrade` to 5 replicas and back to 3, played in the StatefulSet controller's order,
//   ends with exactly the listed voters; then `kill -9` of one more pod leaves a quorum that
//   commits, and the restarted pod catches up.
// No step loses or duplicates an acknowledged publish, and every subscriber that moves recovers
// exactly. Prints the figures of each step: its duration, the longest time without a leader, the
// publishes refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import { HistoryLoad, pusherJs, sdk } from './load.mjs';
import { LeaderWatch, StatefulSetRun } from './statefulset.mjs';
import { eventually } from './wait.mjs';

const BINARY = process.env.CHORUS_BIN && path.resolve(process.env.CHORUS_BIN);
const APP = { id: '1001', key: 'chart-app-key', secret: 'chart-app-secret-0123' };
const VALUES = {
  replicas: 3,
  app: { ...APP, history: [{ channels: 'chat-*', max_events: 100000 }] },
  clusterSecret: 'chart-cluster-secret-0123',
  logLevel: 'warn,openraft=off',
};
const range = (n) => Array.from({ length: n }, (_, i) => i);

/** Every pod's view: one leader that every pod follows, and exactly `ids` as voters, no learner. */
async function oneClusterOf(set, ids) {
  const views = await Promise.all(set.pods.map((p) => set.clusterStatus(p)));
  const leaders = views.filter((v) => v.state === 'leader');
  const want = JSON.stringify(ids);
  return leaders.length === 1 && views.every((v) => v.leader_id === leaders[0].node_id) &&
    views.every((v) => JSON.stringify(v.members.map((m) => m.id).sort((a, b) => a - b)) === want &&
      v.members.every((m) => m.voter));
}

/** The pods' client connections, from their own `chorus_connections` gauge. */
async function connectionsOf(pod) {
  const res = await fetch(`http://${pod.ip}:${pod.port('metrics')}/metrics`, { signal: AbortSignal.timeout(2000) });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith(`chorus_connections{app_id="${APP.id}"}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/**
 * `kubectl exec POD -- /chorus cluster status --addr POD:6002`, as the chart's README gives it:
 * the pod's own name from its /etc/hosts, the cluster secret from its environment. Resolves with
 * the desired revision and members it prints, and its voters and learners.
 */
async function statusCommand(pod) {
  const { code, stdout, stderr } = await pod.exec(['/chorus', 'cluster', 'status', '--addr', `${pod.name}:${pod.port('cluster')}`]);
  assert.equal(code, 0, `chorus cluster status in ${pod.name}: ${stderr}`);
  const desired = stdout.match(/^desired \(revision (\d+)\): (.*)$/m);
  assert.ok(desired, stdout);
  const members = (kind) => [...stdout.matchAll(new RegExp(`^ +(\\d+) +${kind} `, 'gm'))].map((m) => Number(m[1]));
  return { revision: Number(desired[1]), desired: desired[2], voters: members('voter'), learners: members('learner') };
}

describe('the chart run as processes', { skip: !BINARY && 'CHORUS_BIN is not set' }, () => {
  let set;
  let installMs;
  const loads = []; // closed at the end whatever failed, so that a failure never hangs the run
  const newLoad = (channel) => {
    const load = new HistoryLoad(set, APP, channel);
    loads.push(load);
    return load;
  };
  before(async () => {
    const started = Date.now();
    set = await StatefulSetRun.install({ binary: BINARY, release: 'chorus', namespace: 'chorus', values: VALUES });
    await set.awaitReady();
    installMs = Date.now() - started;
  });
  after(async () => {
    for (const load of loads) await load.close();
    await set?.uninstall();
  });

  test('helm install with 3 replicas forms one cluster: every pod ready, one leader, 3 voters', async (t) => {
    t.diagnostic(`install to all pods ready: ${installMs} ms`);
    await eventually(() => oneClusterOf(set, [0, 1, 2]), {
      what: 'one leader that every pod follows, and voters 0, 1 and 2 everywhere',
    });
    assert.deepEqual(set.pods.map((p) => p.failures), [[], [], []]);
    // A member proposes the members file it reads (every 2 s) once it is in the cluster.
    const want = JSON.stringify({ revision: 1, desired: '0, 1, 2', voters: [0, 1, 2], learners: [] });
    let shown;
    await eventually(async () => JSON.stringify(shown = await statusCommand(set.pod(2))) === want, {
      what: () => `chorus cluster status to show ${want} (it showed ${JSON.stringify(shown)})`,
    });
  });

  test('a pusher-js subscriber on one pod receives a publish made through another', async () => {
    const client = pusherJs(APP, set.pod(1).ip, set.pod(1).port('client'));
    try {
      const channel = client.subscribe('scores');
      await new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
      const got = [];
      channel.bind('goal', (data) => got.push(data));
      const publisher = sdk(APP, set.pod(2).ip, set.pod(2).port('client'));
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

  test('an upgrade that rolls every pod loses no acknowledged publish; subscribers recover exactly', async (t) => {
    const load = newLoad('chat-roll');
    await load.start({ subscribers: 4 });
    await load.awaitPublishes(20, { what: 'publishes before the roll' });
    load.step('roll');
    const watch = new LeaderWatch(set);
    let rolled;
    try {
      ({ rolled } = await set.upgrade({ ...VALUES, image: { tag: 'next' } }));
    } finally {
      await watch.stop();
    }
    load.step('after');
    await load.awaitPublishes(20, { what: 'publishes after the roll' });
    await load.stopPublishing();

    t.diagnostic(`pods ended: ${JSON.stringify(rolled)}`);
    t.diagnostic(`longest time with no leader during the roll: ${watch.longestGapMs} ms (leaders: ${watch.leaders})`);
    t.diagnostic(`during the roll: ${load.summary('roll')}`);
    assert.equal(rolled.length, 3, 'every pod rolled');
    for (const end of rolled) assert.equal(end.killed, false, `${end.pod} exited within its grace period`);
    assert.deepEqual(set.pods.map((p) => p.failures), [[], [], []], 'no probe failure');
    assert.ok(load.steps.roll.recovered > 0, 'subscribers moved and resumed');
    await load.verify(set.pods);
    await load.close();
  });

  test('helm upgrade to 5 replicas and back to 3 under load ends with voters 0, 1, 2; a pod killed then leaves a quorum', async (t) => {
    const load = newLoad('chat-scale');
    await load.start({ subscribers: 4 });
    await load.awaitPublishes(20, { what: 'publishes before the scale' });

    // 3 -> 5: the new pods first, the old pods' mounts at the kubelet's sync.
    load.step('3 -> 5');
    const before = load.acknowledged.length;
    let started = Date.now();
    const [scaledUp, upAt] = await Promise.all([
      set.upgrade({ ...set.values, replicas: 5 }),
      set.awaitVoters(range(5)).then(() => Date.now()),
    ]);
    t.diagnostic(`3 -> 5: voters 0-4 ${upAt - started} ms after the upgrade, ${upAt - scaledUp.firstSync} ms after ` +
      `the first mount sync; ${load.summary('3 -> 5')}`);
    assert.deepEqual(scaledUp.rolled, [], 'a scale rolls no pod');
    assert.equal(load.steps['3 -> 5'].dropped, 0, 'no subscriber moved by the scale-up');
    assert.deepEqual(
      await statusCommand(set.pod(4)),
      { revision: set.revision, desired: '0, 1, 2, 3, 4', voters: [0, 1, 2, 3, 4], learners: [] },
    );
    await load.awaitPublishes(20, { what: 'publishes with five voters' });
    // The new pods hold the history from the start (an acknowledged publish is on a majority).
    const atFive = await load.historiesAgree(set.pods);
    assert.deepEqual(load.acknowledged.slice(0, before).filter((n) => !atFive.includes(n)), []);
    // Subscribers on the two pods that will go away, so that the scale-down moves them.
    await eventually(async () => {
      const on = await Promise.all([3, 4].map((i) => connectionsOf(set.pod(i))));
      if (on.every((n) => n > 0)) return true;
      if (load.subscribers.length >= 14) throw new Error(`connections on pods 3 and 4: ${on}`);
      await load.subscribe();
      return false;
    }, { interval: 0, what: 'a subscriber on each of pods 3 and 4' });

    // 5 -> 3: the controller deletes pods 4 and 3 at once; the kubelet syncs the others' mounts
    // later (about a minute in a real cluster: after those pods have stopped).
    load.step('5 -> 3');
    started = Date.now();
    const [{ deleted, rolled, firstSync }, downAt] = await Promise.all([
      set.upgrade({ ...set.values, replicas: 3 }, { mountsAfterMs: 12000 }),
      set.awaitVoters(range(3)).then(() => Date.now()),
    ]);
    t.diagnostic(`5 -> 3: voters 0-2 ${downAt - started} ms after the upgrade, ${downAt - firstSync} ms after ` +
      `the first mount sync; ${load.summary('5 -> 3')}; pods ended: ${JSON.stringify(deleted)}`);
    assert.deepEqual(rolled, [], 'a scale rolls no pod');
    assert.deepEqual(deleted.map((end) => end.pod), ['chorus-4', 'chorus-3']);
    for (const end of deleted) assert.equal(end.killed, false, `${end.pod} exited within its grace period`);
    assert.ok(load.steps['5 -> 3'].recovered >= 2, 'the subscribers of pods 3 and 4 moved and resumed');
    await eventually(() => oneClusterOf(set, [0, 1, 2]), { what: 'every pod: voters 0, 1, 2 and no learner' });

    // One more pod lost (kill -9, the leader): the two left elect and commit.
    load.step('kill -9');
    const views = await Promise.all(set.pods.map((p) => set.clusterStatus(p)));
    const victim = set.pod(views.find((v) => v.state === 'leader').node_id);
    await victim.kill();
    await load.awaitPublishes(20, { what: `publishes committed by 2 of 3 after ${victim.name} was killed` });
    const survivors = set.pods.filter((p) => p !== victim);
    await eventually(async () => {
      const left = await Promise.all(survivors.map((p) => set.clusterStatus(p)));
      return left.some((v) => v.state === 'leader' && v.members.filter((m) => m.voter).length === 3);
    }, { what: 'a leader among the two left, of three voters' });
    t.diagnostic(`kill -9 of ${victim.name}: ${load.summary('kill -9')}`);

    // The kubelet restarts the container: it catches up and serves again.
    load.step('restarted');
    victim.start();
    await set.awaitReady();
    await load.awaitPublishes(20, { what: 'publishes with the killed pod back' });
    await load.stopPublishing();
    await eventually(() => oneClusterOf(set, [0, 1, 2]), { what: 'the restarted pod following the leader' });
    await load.verify(set.pods);
    await load.close();
    assert.deepEqual(set.pods.map((p) => p.failures), [[], [], []], 'no probe failure');
    assert.deepEqual(
      await statusCommand(set.pod(0)),
      { revision: set.revision, desired: '0, 1, 2', voters: [0, 1, 2], learners: [] },
    );
  });
});
