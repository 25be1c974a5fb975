// The rendered chart run as Kubernetes would run it, with the StatefulSet controller's order:
// `install` starts every pod at once (podManagementPolicy: Parallel), `rollingRestart` replaces
// them one at a time from the highest ordinal, each waiting for the one before to be ready,
// `upgrade` rewrites the mounted ConfigMaps, adds or deletes pods and rolls them as the
// controller and the kubelet do. The client Service is a TCP balancer over the ready pods;
// cluster DNS is a real DNS server holding a record for every pod that exists (the headless
// Service publishes not-ready addresses).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { ClusterDns } from './dns.mjs';
import { helmTemplate } from './render.mjs';
import { Pod } from './pod.mjs';
import { Service } from './service.mjs';
import { eventually } from './wait.mjs';

// Every pod process and DNS server this test run started, killed if the run ends early, so
// that none is left.
const LIVE = new Set();
const SERVERS = new Set();
process.on('exit', () => {
  for (const pod of LIVE) if (pod.running) pod.process.kill('SIGKILL');
  for (const dns of SERVERS) dns.process?.kill('SIGKILL');
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
    set.dns = new ClusterDns(set.dnsIp(), set.dir, set.clusterDomain());
    SERVERS.add(set.dns);
    await set.dns.start();
    set.service = await new Service(() => set.endpoints('client')).listen();
    const replicas = set.statefulSet.spec.replicas;
    if (set.statefulSet.spec.podManagementPolicy !== 'Parallel') {
      throw new Error('this harness plays the Parallel pod management policy only');
    }
    set.pods = Array.from({ length: replicas }, (_, i) => new Pod(set, i));
    set.dns.update(set.dnsRecords());
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

  /** The cluster DNS server's address. */
  dnsIp() {
    return `127.${SUBNET}.255.53`;
  }

  clusterDomain() {
    return this.values.clusterDomain ?? 'cluster.local';
  }

  /** The headless Service's domain: names are POD.<this>. */
  domain() {
    return `${this.statefulSet.spec.serviceName}.${this.namespace}.svc.${this.clusterDomain()}`;
  }

  searchPath() {
    const domain = this.clusterDomain();
    return `${this.namespace}.svc.${domain} svc.${domain} ${domain}`;
  }

  /** What cluster DNS answers for the pods that exist: each by name, all under the Service's. */
  dnsRecords() {
    return this.pods.flatMap((p) => [{ name: `${p.name}.${this.domain()}`, ip: p.ip }, { name: this.domain(), ip: p.ip }]);
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
   * `helm upgrade` with new values, played as Kubernetes plays it. Helm writes the ConfigMaps
   * and the StatefulSet at once. The StatefulSet controller at once creates the missing
   * ordinals (Parallel: all together; their mounts show the new ConfigMaps from the start) or
   * deletes those past the new count (together, each with its preStop and grace period; their
   * claims stay, as `whenScaled: Retain` keeps them). The kubelet rewrites the mounted
   * ConfigMaps of the pods that stay in place, not at once but at its next sync of each pod:
   * here `mountsAfterMs` after the upgrade, then one pod every `mountsSpreadMs`, by ordinal.
   * Once every pod is ready, if the pod template changed, the controller rolls the pods.
   * Resolves with how the deleted pods and the rolled ones ended, and when the first pod that
   * stayed saw its mounts rewritten.
   */
  async upgrade(values, { readyTimeout = 60000, mountsAfterMs = 3000, mountsSpreadMs = 1000 } = {}) {
    const template = JSON.stringify(this.statefulSet.spec.template);
    this.values = values;
    this.revision += 1;
    this.rendered = helmTemplate({ release: this.release, namespace: this.namespace, values, revision: this.revision });
    const replicas = this.statefulSet.spec.replicas;
    const staying = this.pods.slice(0, replicas);
    let firstSync = null;
    const kubeletSync = Promise.all(staying.map(async (pod, i) => {
      await sleep(mountsAfterMs + i * mountsSpreadMs);
      if (pod.running) pod.refreshVolumes();
      firstSync ??= Date.now();
    }));
    let deleted = [];
    let rolled = [];
    if (replicas > this.pods.length) {
      const added = [];
      for (let i = this.pods.length; i < replicas; i++) added.push(new Pod(this, i));
      this.pods.push(...added);
      this.dns.update(this.dnsRecords());
      for (const pod of added) LIVE.add(pod.start());
    } else if (replicas < this.pods.length) {
      const removed = this.pods.slice(replicas).reverse();
      deleted = await Promise.all(removed.map(async (pod) => ({ pod: pod.name, ...(await pod.terminate()) })));
      for (const pod of removed) LIVE.delete(pod);
      this.pods = staying;
      this.dns.update(this.dnsRecords());
    }
    await kubeletSync;
    await this.awaitReady({ timeout: readyTimeout });
    if (JSON.stringify(this.statefulSet.spec.template) !== template) {
      rolled = await this.rollingRestart({ readyTimeout });
    }
    return { deleted, rolled, firstSync };
  }

  /**
   * Waits until the leader's membership is exactly `ids`, all voters (no learner), following
   * the members file of this release revision.
   */
  async awaitVoters(ids, { timeout = 60000 } = {}) {
    const want = JSON.stringify([...ids].sort((a, b) => a - b));
    let last;
    await eventually(async () => {
      const views = await Promise.all(
        this.pods.filter((p) => p.running).map((p) => this.clusterStatus(p).catch(() => null)),
      );
      const leader = views.find((v) => v?.state === 'leader');
      if (!leader) return false;
      last = leader;
      const members = leader.members.map((m) => m.id).sort((a, b) => a - b);
      return JSON.stringify(members) === want && leader.members.every((m) => m.voter) &&
        leader.desired?.revision === this.revision;
    }, {
      timeout,
      what: () => `the voters ${want} at revision ${this.revision} (last leader view: ${JSON.stringify(last && {
        node: last.node_id, members: last.members, desired: last.desired,
      })})`,
    });
    return last;
  }

  /** `helm uninstall` and the claims deleted: every process killed, every file removed. */
  async uninstall() {
    await Promise.all(this.pods.map((p) => p.kill()));
    for (const pod of this.pods) LIVE.delete(pod);
    await this.service?.close();
    await this.dns?.stop();
    SERVERS.delete(this.dns);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Watches who leads: every running pod's `/cluster` is polled on its own, so that a slow answer
 * from one pod holds up no other. `longestGapMs` is the longest time between two answers that
 * named a leader (a pod saying it leads), while it watched; `leaders` the leaders in the order
 * they were seen.
 */
export class LeaderWatch {
  constructor(set, intervalMs = 25) {
    this.set = set;
    this.intervalMs = intervalMs;
    this.longestGapMs = 0;
    this.lastSeen = Date.now();
    this.leaders = [];
    this.stopped = false;
    this.polling = new Map(); // pod -> its polling loop
    this.done = this.#run();
  }

  async #run() {
    while (!this.stopped) {
      for (const pod of this.set.pods) {
        if (pod.running && !this.polling.has(pod)) this.polling.set(pod, this.#poll(pod));
      }
      await sleep(this.intervalMs);
    }
    await Promise.all(this.polling.values());
  }

  async #poll(pod) {
    try {
      while (!this.stopped && pod.running) {
        const view = await this.set.clusterStatus(pod).catch(() => null);
        if (view?.state === 'leader') this.#sawLeader(view.node_id);
        await sleep(this.intervalMs);
      }
    } finally {
      this.polling.delete(pod);
    }
  }

  #sawLeader(id) {
    const now = Date.now();
    this.longestGapMs = Math.max(this.longestGapMs, now - this.lastSeen);
    this.lastSeen = now;
    if (this.leaders.at(-1) !== id) this.leaders.push(id);
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
