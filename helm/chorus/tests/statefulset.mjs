// The rendered chart run as Kubernetes would run it, with the StatefulSet controller's order:
// `install` starts every pod at once (podManagementPolicy: Parallel), `rollingRestart` replaces
// them one at a time from the highest ordinal, each waiting for the one before to be ready.
// The client Service is a TCP balancer over the ready pods; cluster DNS is each pod's
// /etc/hosts, listing every pod of the headless Service (it publishes not-ready addresses).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { helmTemplate } from './render.mjs';
import { Pod } from './pod.mjs';
import { Service } from './service.mjs';

/** Waits until `condition()` is true, polling; throws naming `what` after `timeout` ms. */
export async function eventually(condition, { timeout = 20000, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await condition()) return;
    } catch (e) {
      last = e;
    }
    await sleep(interval);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

// Every pod process this test run started, killed if the run ends early, so that none is left.
const LIVE = new Set();
process.on('exit', () => {
  for (const pod of LIVE) if (pod.running) pod.process.kill('SIGKILL');
});

/** A second octet for this run's pod IPs, so parallel runs on one machine do not meet. */
const SUBNET = 100 + (process.pid % 100);

export class StatefulSetRun {
  constructor({ binary, release, namespace, values, existingSecrets = {} }) {
    this.binary = binary;
    this.release = release;
    this.namespace = namespace;
    this.values = values;
    this.existingSecrets = existingSecrets; // Secrets made outside the chart: name -> {key: value}
    this.revision = 1;
    this.rendered = helmTemplate({ release, namespace, values });
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'chorus-statefulset-'));
    this.pods = [];
  }

  /** `helm install`: renders, starts every pod at once, and serves the client Service. */
  static async install(options) {
    const set = new StatefulSetRun(options);
    set.service = await new Service(() => set.endpoints('client')).listen();
    const replicas = set.statefulSet.spec.replicas;
    if (set.statefulSet.spec.podManagementPolicy !== 'Parallel') {
      throw new Error('this harness plays the Parallel pod management policy only');
    }
    set.pods = Array.from({ length: replicas }, (_, i) => new Pod(set, i));
    for (const pod of set.pods) LIVE.add(pod);
    for (const pod of set.pods) pod.start();
    return set;
  }

  get statefulSet() {
    return this.rendered.find('StatefulSet');
  }

  get name() {
    return this.statefulSet.metadata.name;
  }

  podIp(ordinal) {
    return `127.${SUBNET}.${Math.floor(ordinal / 200)}.${10 + (ordinal % 200)}`;
  }

  /** The headless Service's domain: names are POD.<this>. */
  domain() {
    const domain = this.rendered.find('StatefulSet').spec.serviceName;
    return `${domain}.${this.namespace}.svc.${this.values.clusterDomain ?? 'cluster.local'}`;
  }

  searchPath() {
    return `${this.namespace}.svc.cluster.local svc.cluster.local cluster.local`;
  }

  /** /etc/hosts lines of every pod that exists, as cluster DNS answers for them. */
  hostsEntries() {
    const headless = this.statefulSet.spec.serviceName;
    return this.pods
      .map((p) => `${p.ip}\t${p.name}.${this.domain()} ${p.name}.${headless}.${this.namespace}.svc ${p.name}.${headless}\n`)
      .join('');
  }

  configMapFiles(name) {
    return this.rendered.find('ConfigMap', name).data;
  }

  secretFiles(name) {
    if (this.existingSecrets[name]) return this.existingSecrets[name];
    const secret = this.rendered.find('Secret', name);
    return Object.fromEntries(
      Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]),
    );
  }

  secretValue(name, key) {
    const value = this.secretFiles(name)[key];
    if (value === undefined) throw new Error(`Secret ${name} has no key ${key}`);
    return value;
  }

  /** The ready, not terminating pods' addresses on a named port: a Service's endpoints. */
  endpoints(portName) {
    return this.pods
      .filter((p) => p.ready && !p.terminating)
      .map((p) => ({ host: p.ip, port: p.port(portName) }));
  }

  pod(ordinal) {
    return this.pods[ordinal];
  }

  async awaitReady({ timeout = 60000 } = {}) {
    await eventually(
      () => {
        const failed = this.pods.find((p) => p.failures.length || !p.running);
        if (failed) {
          throw new Error(`${failed.name}: ${failed.failures.join('; ') || 'exited'}\n${failed.log.join('')}`);
        }
        return this.pods.every((p) => p.ready);
      },
      { timeout, what: 'every pod ready' },
    );
  }

  /** A pod's view of the cluster (`GET /cluster` on its cluster port, with the secret). */
  async clusterStatus(pod) {
    const secretRef = pod.container.env.find((e) => e.name === 'CHORUS_CLUSTER_SECRET').valueFrom.secretKeyRef;
    const res = await fetch(`http://${pod.ip}:${pod.port('cluster')}/cluster`, {
      headers: { 'x-chorus-cluster-secret': this.secretValue(secretRef.name, secretRef.key) },
      signal: AbortSignal.timeout(1000),
    });
    if (res.status !== 200) throw new Error(`${pod.name} /cluster answered ${res.status}`);
    return res.json();
  }

  /**
   * A rolling update of every pod (a template change, or `kubectl rollout restart`): highest
   * ordinal first; each pod is deleted (preStop, SIGTERM, grace period), created again on its
   * claim, and must be ready before the next. Returns how each pod ended.
   */
  async rollingRestart({ readyTimeout = 60000 } = {}) {
    const ends = [];
    for (const pod of [...this.pods].reverse()) {
      const end = await pod.terminate();
      ends.push({ pod: pod.name, ...end });
      pod.start();
      await eventually(() => {
        if (pod.failures.length || !pod.running) throw new Error(`${pod.name}: ${pod.failures.join('; ')}\n${pod.log.join('')}`);
        return pod.ready;
      }, { timeout: readyTimeout, what: `${pod.name} ready again` });
    }
    return ends;
  }

  /**
   * `helm upgrade` with new values, played as Kubernetes plays it: the kubelet rewrites every
   * running pod's mounted ConfigMaps in place; the StatefulSet controller creates the missing
   * ordinals at once (Parallel) or deletes those past the new count together (their claims stay,
   * as `whenScaled: Retain` keeps them); then, if the pod template changed, it rolls the pods.
   */
  async upgrade(values, { readyTimeout = 60000 } = {}) {
    const template = JSON.stringify(this.statefulSet.spec.template);
    this.values = values;
    this.revision += 1;
    this.rendered = helmTemplate({ release: this.release, namespace: this.namespace, values, revision: this.revision });
    const replicas = this.statefulSet.spec.replicas;
    for (const pod of this.pods) pod.refreshVolumes();
    if (replicas > this.pods.length) {
      const added = [];
      for (let i = this.pods.length; i < replicas; i++) added.push(new Pod(this, i));
      this.pods.push(...added);
      for (const pod of this.pods) if (pod.root) pod.writeHosts();
      for (const pod of added) LIVE.add(pod.start());
    } else if (replicas < this.pods.length) {
      const removed = this.pods.slice(replicas).reverse();
      await Promise.all(removed.map((pod) => pod.terminate()));
      for (const pod of removed) LIVE.delete(pod);
      this.pods = this.pods.slice(0, replicas);
      for (const pod of this.pods) pod.writeHosts();
    }
    await this.awaitReady({ timeout: readyTimeout });
    if (JSON.stringify(this.statefulSet.spec.template) !== template) await this.rollingRestart({ readyTimeout });
  }

  /** `helm uninstall` and the claims deleted: every process killed, every file removed. */
  async uninstall() {
    await Promise.all(this.pods.map((p) => p.kill()));
    for (const pod of this.pods) LIVE.delete(pod);
    await this.service?.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Watches who leads, polling every running pod's `/cluster`: `longestGapMs` is the longest time
 * between two polls that found a leader, while it watched.
 */
export class LeaderWatch {
  constructor(set, intervalMs = 50) {
    this.set = set;
    this.intervalMs = intervalMs;
    this.longestGapMs = 0;
    this.lastSeen = Date.now();
    this.stopped = false;
    this.done = this.#run();
  }

  async #run() {
    while (!this.stopped) {
      const pods = this.set.pods.filter((p) => p.running);
      const views = await Promise.all(pods.map((p) => this.set.clusterStatus(p).catch(() => null)));
      const now = Date.now();
      if (views.some((v) => v?.state === 'leader')) {
        this.longestGapMs = Math.max(this.longestGapMs, now - this.lastSeen);
        this.lastSeen = now;
      }
      await sleep(this.intervalMs);
    }
  }

  async stop() {
    if (!this.stopped) {
      this.stopped = true;
      await this.done;
      this.longestGapMs = Math.max(this.longestGapMs, Date.now() - this.lastSeen);
    }
    return this.longestGapMs;
  }
}
