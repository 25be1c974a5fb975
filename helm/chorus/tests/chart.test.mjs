// What the rendered chart promises without running it: the alerts and the dashboard use only
// metrics Chorus exports; no secret reaches a ConfigMap or a plain env value; a config change
// rolls the pods and a scale does not (the members file is outside the checksum); the members
// file lists every ordinal under the headless Service; the app's webhooks are rendered as a
// config the binary takes (and one it refuses, naming the key).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { CHART, helmTemplate } from './render.mjs';

const REPO = path.resolve(CHART, '../..');
const BINARY = process.env.CHORUS_BIN && path.resolve(process.env.CHORUS_BIN);
const SECRETS = { app: 'app-secret-for-the-leak-check', cluster: 'cluster-secret-for-the-leak-check' };
const EVERYTHING_ON = {
  replicas: 5,
  app: { id: '7', key: 'k', secret: SECRETS.app },
  clusterSecret: SECRETS.cluster,
  metrics: { serviceMonitor: { enabled: true }, prometheusRule: { enabled: true }, dashboard: { enabled: true } },
  networkPolicy: { enabled: true },
  ingress: { enabled: true },
};
const render = (values, namespace = 'realtime') => helmTemplate({ release: 'chorus', namespace, values });

/** The metric names Chorus registers, read from the sources that register them. */
function exportedMetrics() {
  const names = new Set();
  for (const file of ['broker/src/metrics.rs', 'broker/src/webhooks/metrics.rs', 'cluster/src/metrics.rs']) {
    for (const [, name] of readFileSync(path.join(REPO, file), 'utf8').matchAll(/"(chorus_[a-z_]+)"/g)) {
      names.add(name);
    }
  }
  return names;
}

/** The chorus_* series a PromQL text reads, as their metric names (histogram suffixes off). */
function metricsIn(text) {
  return [...text.matchAll(/\b(chorus_[a-z_]+)/g)].map(([, name]) => name.replace(/_(bucket|sum|count)$/, ''));
}

function unknownMetrics(texts, exported) {
  return [...new Set(texts.flatMap(metricsIn))].filter((name) => !exported.has(name));
}

describe('the rendered chart', () => {
  const rendered = render(EVERYTHING_ON);

  test('alerts and dashboard read only metrics Chorus exports', () => {
    const exported = exportedMetrics();
    assert.ok(exported.has('chorus_raft_is_leader') && exported.has('chorus_forward_dropped_total'));
    assert.deepEqual(unknownMetrics(['chorus_raft_is_leadr'], exported), ['chorus_raft_is_leadr']);

    const rules = rendered.find('PrometheusRule').spec.groups.flatMap((g) => g.rules);
    assert.deepEqual(
      rules.map((r) => r.alert).sort(),
      ['ChorusForwardDrops', 'ChorusHistoryPublishRefused', 'ChorusNoLeader', 'ChorusNodeDeclaredDead',
        'ChorusRaftApplyLag', 'ChorusSlowReadersCutOff', 'ChorusWebhooksDropped'],
    );
    assert.deepEqual(unknownMetrics(rules.map((r) => r.expr), exported), []);

    const dashboard = JSON.parse(rendered.find('ConfigMap', 'chorus-dashboard').data['chorus.json']);
    const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    assert.ok(exprs.length >= 10, `${exprs.length} queries`);
    assert.deepEqual(unknownMetrics(exprs, exported), []);
  });

  test('secrets reach the pods only from the Secret', () => {
    const container = rendered.find('StatefulSet').spec.template.spec.containers[0];
    const fromSecret = container.env.filter((e) => e.valueFrom?.secretKeyRef).map((e) => e.name);
    assert.deepEqual(fromSecret.sort(), ['CHORUS_APP_SECRET', 'CHORUS_CLUSTER_SECRET']);
    const secret = rendered.find('Secret', 'chorus');
    const decoded = Object.values(secret.data).map((v) => Buffer.from(v, 'base64').toString());
    assert.deepEqual(decoded.sort(), [SECRETS.app, SECRETS.cluster]);
    for (const object of rendered.objects.filter((o) => o.kind !== 'Secret')) {
      const text = JSON.stringify(object);
      for (const value of Object.values(SECRETS)) {
        assert.ok(!text.includes(value), `${object.kind} ${object.metadata.name} holds a secret`);
      }
    }
  });

  test('a config change rolls the pods; a scale changes only the members file', () => {
    const template = (r) => JSON.stringify(r.find('StatefulSet').spec.template);
    const base = render({ ...EVERYTHING_ON });
    const scaled = render({ ...EVERYTHING_ON, replicas: 3 });
    const reconfigured = render({ ...EVERYTHING_ON, config: { dead_after_secs: 9 } });
    assert.equal(template(scaled), template(base), 'a scale keeps the pod template');
    assert.notEqual(template(reconfigured), template(base), 'a config change changes it');
    const annotation = (r) => r.find('StatefulSet').spec.template.metadata.annotations['checksum/config'];
    assert.notEqual(annotation(reconfigured), annotation(base));
    const members = (r) => r.find('ConfigMap', 'chorus-members').data['members.toml'];
    assert.notEqual(members(scaled), members(base));
  });

  test('the members file names every ordinal under the headless Service', () => {
    const members = rendered.find('ConfigMap', 'chorus-members').data['members.toml'];
    const peers = Array.from({ length: 5 }, (_, i) => `${i}@chorus-${i}.chorus-headless.realtime.svc.cluster.local:6002`);
    assert.equal(members, `revision = 1\npeers = "${peers.join(',')}"\n`);
    const env = rendered.find('StatefulSet').spec.template.spec.containers[0].env;
    assert.equal(env.find((e) => e.name === 'CHORUS_MEMBERS_FILE').value, '/etc/chorus/members/members.toml');
    assert.equal(env.find((e) => e.name === 'CHORUS_PEERS'), undefined, 'the members file is the only peer list');
    assert.equal(rendered.find('StatefulSet').spec.template.spec.enableServiceLinks, false);
  });

  test("the app's webhooks are rendered as a config the binary takes", { skip: !BINARY && 'CHORUS_BIN is not set' }, async () => {
    const webhook = {
      url: 'https://app.example.com/pusher/webhook',
      event_types: ['client_event', 'cache_miss'],
      filter: { channel_name_starts_with: 'private-' },
      headers: { 'X-From': 'chorus' },
    };
    const toml = (webhooks) => {
      const app = { ...EVERYTHING_ON.app, webhooks, webhookDelivery: { batching: false, timeout_ms: 2000 } };
      return render({ ...EVERYTHING_ON, app }).find('ConfigMap', 'chorus-config').data['chorus.toml'];
    };
    const taken = toml([webhook]);
    assert.match(taken, /\[\[apps\.webhooks\]\]/);
    assert.match(taken, /filter = \{ "channel_name_starts_with" = "private-" \}/);
    assert.match(taken, /\[apps\.webhook_delivery\]/);
    const served = await runWith(taken);
    assert.equal(served.healthz, 200, served.stderr);
    const refused = await runWith(toml([{ ...webhook, event_types: ['occupied'] }]));
    assert.equal(refused.healthz, null);
    assert.match(refused.stderr, /apps\[0\]\.webhooks\[0\]\.event_types/, refused.stderr);
  });
});

/** Runs the binary alone with `toml` as its config on loopback until it answers /healthz (then
 * stops it) or exits; says which, with its stderr. */
async function runWith(toml) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chorus-chart-config-'));
  writeFileSync(path.join(dir, 'chorus.toml'), toml);
  const port = await freePort();
  const child = spawn(BINARY, ['--config', path.join(dir, 'chorus.toml')], {
    env: {
      PATH: process.env.PATH,
      CHORUS_APP_SECRET: SECRETS.app,
      CHORUS_CLUSTER_SECRET: SECRETS.cluster,
      CHORUS_HOST: '127.0.0.1',
      CHORUS_PORT: String(port),
      CHORUS_METRICS_PORT: String(await freePort()),
      CHORUS_CLUSTER_PORT: String(await freePort()),
      CHORUS_DATA_DIR: path.join(dir, 'data'),
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('exit', resolve));
  let healthz = null;
  const deadline = Date.now() + 15_000;
  while (child.exitCode === null && Date.now() < deadline && healthz === null) {
    healthz = await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.status, () => null);
    if (healthz === null) await new Promise((resolve) => setTimeout(resolve, 50));
  }
  child.kill('SIGKILL');
  await exited;
  rmSync(dir, { recursive: true, force: true });
  return { healthz, stderr };
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}
