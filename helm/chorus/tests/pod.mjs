// One pod of the rendered StatefulSet, run as Kubernetes would run it, as a real `chorus` process.
//
// The container's filesystem is a folder laid out as the image is (`/chorus`, bound read-only
// from the binary under test, and `/data`) plus what the kubelet adds: `/etc/hosts` (the pod's
// own names), `/etc/resolv.conf` (the cluster DNS server and search path), and each volume at
// its mount path (ConfigMaps and Secrets as the kubelet writes them, through a `..data` link it
// swaps on update; the claim or emptyDir at /data, owned by the fsGroup). The process runs in a
// mount and UTS namespace of its own (`unshare`), with the pod name as hostname, chrooted into
// that folder as the pod's user, with the root filesystem read-only when the container asks for
// it. Its command, arguments and environment are the rendered ones, with the downward-API fields
// filled in: pod name, namespace, and a pod IP of its own on 127.0.0.0/8. Probes are polled at
// their rendered paths, ports and thresholds, as the kubelet does; `exec` is `kubectl exec`.
import { spawn } from 'node:child_process';
import {
  chmodSync, chownSync, mkdirSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** The image's entrypoint (the Dockerfile's ENTRYPOINT) and environment (its ENV). */
export const IMAGE = Object.freeze({
  entrypoint: ['/chorus'],
  env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', CHORUS_DATA_DIR: '/data' },
});

/** Kubernetes' `$(VAR)` references in a value, from the variables defined before it. */
function expand(value, env) {
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (match, name) =>
    match === '$$' ? '$' : name in env ? env[name] : match,
  );
}

/** Writes a ConfigMap's or Secret's files as the kubelet does: `..data` -> a timestamped folder. */
export function writeProjectedVolume(dir, files) {
  mkdirSync(dir, { recursive: true });
  const version = `..${Date.now()}_${Math.random().toString(36).slice(2, 8)}`;
  mkdirSync(path.join(dir, version));
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(path.join(dir, version, name), content, { mode: 0o644 });
  }
  let previous = null;
  try {
    previous = readlinkSync(path.join(dir, '..data'));
  } catch {
    /* first write */
  }
  symlinkSync(version, path.join(dir, '..data_tmp'));
  renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data')); // atomic, as the kubelet
  for (const name of Object.keys(files)) {
    try {
      symlinkSync(path.join('..data', name), path.join(dir, name));
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
  }
  if (previous) rmSync(path.join(dir, previous), { recursive: true, force: true });
}

export class Pod {
  /**
   * `set` is the StatefulSet runner: it gives the rendered objects (`rendered`), the namespace,
   * the chorus binary, the pods' `/etc/hosts` and the folder of each pod's volumes.
   */
  constructor(set, ordinal) {
    this.set = set;
    this.ordinal = ordinal;
    this.name = `${set.name}-${ordinal}`;
    this.ip = set.podIp(ordinal);
    this.dir = path.join(set.dir, this.name);
    this.claim = path.join(set.dir, 'claims', `data-${this.name}`);
    this.process = null;
    this.ready = false;
    this.started = false;
    this.terminating = false;
    this.failures = []; // probe failures Kubernetes would act on (liveness, startup)
  }

  get spec() {
    return this.set.rendered.find('StatefulSet').spec.template.spec;
  }

  get container() {
    return this.spec.containers[0];
  }

  /** The container port by name or number. */
  port(nameOrNumber) {
    if (typeof nameOrNumber === 'number') return nameOrNumber;
    const found = this.container.ports.find((p) => p.name === nameOrNumber);
    if (!found) throw new Error(`no container port named ${nameOrNumber}`);
    return found.containerPort;
  }

  /** The environment the container gets: the image's ENV, then the rendered `env`, in order. */
  environment() {
    const env = { ...IMAGE.env, HOSTNAME: this.name };
    for (const entry of this.container.env ?? []) {
      env[entry.name] = this.#valueOf(entry, env);
    }
    if (this.spec.enableServiceLinks !== false) {
      throw new Error('the pod takes service-link variables (enableServiceLinks is not false)');
    }
    return env;
  }

  #valueOf(entry, env) {
    if ('value' in entry) return expand(String(entry.value), env);
    const from = entry.valueFrom ?? {};
    if (from.fieldRef) {
      const fields = {
        'metadata.name': this.name,
        'metadata.namespace': this.set.namespace,
        'status.podIP': this.ip,
        'status.podIPs': this.ip,
        'spec.nodeName': 'node-0',
      };
      const field = from.fieldRef.fieldPath;
      if (!(field in fields)) throw new Error(`fieldRef ${field} is not filled in by this harness`);
      return fields[field];
    }
    if (from.secretKeyRef) return this.set.secretValue(from.secretKeyRef.name, from.secretKeyRef.key);
    if (from.configMapKeyRef) {
      return this.set.configMapFiles(from.configMapKeyRef.name)[from.configMapKeyRef.key];
    }
    throw new Error(`env ${entry.name}: no value this harness can fill in`);
  }

  /** Lays out the container's root folder and its volumes. The claim outlives the pod. */
  #prepareRoot() {
    const root = path.join(this.dir, 'root');
    rmSync(this.dir, { recursive: true, force: true });
    for (const dir of ['etc', 'data', 'proc', 'dev']) mkdirSync(path.join(root, dir), { recursive: true });
    writeFileSync(path.join(root, 'chorus'), ''); // the binary under test is bound here, read-only
    this.#writeHosts(root);
    writeFileSync(
      path.join(root, 'etc/resolv.conf'),
      `search ${this.set.searchPath()}\nnameserver ${this.set.dnsIp()}\noptions ndots:5\n`,
    );
    const { fsGroup } = this.spec.securityContext ?? {};
    const mounts = [];
    for (const mount of this.container.volumeMounts ?? []) {
      const volume = this.spec.volumes?.find((v) => v.name === mount.name);
      const target = path.join(root, mount.mountPath);
      if (volume?.configMap || volume?.secret) {
        const files = volume.configMap
          ? this.set.configMapFiles(volume.configMap.name)
          : this.set.secretFiles(volume.secret.secretName);
        const source = path.join(this.dir, 'volumes', mount.name);
        writeProjectedVolume(source, files);
        mkdirSync(target, { recursive: true });
        mounts.push({ source, target, readOnly: true, name: mount.name });
      } else {
        // A claim from volumeClaimTemplates keeps its data across restarts; an emptyDir does not.
        const claimed = this.set.rendered
          .find('StatefulSet')
          .spec.volumeClaimTemplates?.some((t) => t.metadata.name === mount.name);
        if (!claimed && !volume?.emptyDir) throw new Error(`volume ${mount.name}: unknown kind`);
        const source = claimed ? this.claim : path.join(this.dir, 'volumes', mount.name);
        mkdirSync(source, { recursive: true });
        if (fsGroup !== undefined) {
          chownSync(source, 0, fsGroup); // the kubelet's fsGroup: group-owned, group-writable
          chmodSync(source, 0o2775);
        }
        mkdirSync(target, { recursive: true });
        mounts.push({ source, target, readOnly: Boolean(mount.readOnly), name: mount.name });
      }
    }
    this.root = root;
    this.mounts = mounts;
  }

  /** The kubelet's sync: the mounted ConfigMaps and Secrets get their current contents. */
  refreshVolumes() {
    for (const mount of this.mounts ?? []) {
      const volume = this.spec.volumes?.find((v) => v.name === mount.name);
      if (volume?.configMap) writeProjectedVolume(mount.source, this.set.configMapFiles(volume.configMap.name));
      if (volume?.secret) writeProjectedVolume(mount.source, this.set.secretFiles(volume.secret.secretName));
    }
  }

  /** The kubelet's /etc/hosts of a StatefulSet pod: localhost and the pod's own names only. */
  #writeHosts(root) {
    writeFileSync(
      path.join(root, 'etc/hosts'),
      '# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' +
        `${this.ip}\t${this.name}.${this.set.domain()}\t${this.name}\n`,
    );
  }

  /** The container's user, group and supplementary group, as `chroot --userspec --groups`. */
  #identity() {
    const { runAsUser, runAsGroup, fsGroup } = this.spec.securityContext ?? {};
    const user = this.container.securityContext?.runAsUser ?? runAsUser;
    const group = this.container.securityContext?.runAsGroup ?? runAsGroup;
    if (user === undefined || user === 0) throw new Error('the pod would run as root');
    return [`--userspec=${user}:${group ?? user}`, `--groups=${fsGroup ?? group ?? user}`];
  }

  /** Starts the container: namespaces, mounts, chroot, the pod's user, the rendered command. */
  start() {
    this.#prepareRoot();
    const identity = this.#identity();
    const readOnlyRoot = Boolean(this.container.securityContext?.readOnlyRootFilesystem);
    const env = this.environment();
    const argv = [...(this.container.command ?? IMAGE.entrypoint), ...(this.container.args ?? [])].map(
      (arg) => expand(arg, env),
    );
    const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
    const lines = [
      'set -e',
      `/usr/bin/hostname ${q(this.name)}`,
      `/usr/bin/mount --bind ${q(this.root)} ${q(this.root)}`,
      `/usr/bin/mount --bind -o ro ${q(this.set.binary)} ${q(`${this.root}/chorus`)}`,
      `/usr/bin/mount --rbind /proc ${q(`${this.root}/proc`)}`,
      `/usr/bin/mount --rbind /dev ${q(`${this.root}/dev`)}`,
      ...this.mounts.map(
        (m) => `/usr/bin/mount --bind ${q(m.source)} ${q(m.target)}` +
          (m.readOnly ? ` && /usr/bin/mount -o remount,bind,ro ${q(m.target)}` : ''),
      ),
      ...(readOnlyRoot ? [`/usr/bin/mount -o remount,bind,ro ${q(this.root)}`] : []),
      `exec /usr/sbin/chroot ${identity.join(' ')} ${q(this.root)} ${argv.map(q).join(' ')}`,
    ];
    this.process = spawn(
      '/usr/bin/unshare',
      ['--mount', '--uts', '--propagation', 'private', '/bin/sh', '-c', lines.join('\n')],
      { env, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.log = [];
    this.process.stderr.on('data', (chunk) => {
      this.log.push(chunk.toString());
      if (this.log.length > 200) this.log.shift();
      if (process.env.CHORUS_TEST_LOG) process.stderr.write(`[${this.name}] ${chunk}`);
    });
    // The container's lifetime: its probing ends with it, so a restarted container is probed anew.
    const lifetime = new AbortController();
    this.exited = new Promise((resolve) => this.process.once('exit', (code, signal) => {
      this.ready = false;
      this.running = false;
      this.exitedAt = Date.now();
      lifetime.abort();
      resolve({ code, signal });
    }));
    this.running = true;
    this.started = false;
    this.ready = false;
    this.terminating = false;
    this.probing = this.#probe(lifetime.signal);
    return this;
  }

  /**
   * `kubectl exec POD -- ...args`: runs a command of the image in the running container, in its
   * namespaces and root filesystem, as its user, with its environment. Resolves with the
   * command's exit code, its output and its errors.
   */
  exec(args) {
    const command = [
      '--target', String(this.process.pid), '--mount', '--uts', '--',
      '/usr/sbin/chroot', ...this.#identity(), this.root, ...args,
    ];
    const child = spawn('/usr/bin/nsenter', command, { env: this.environment(), stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    child.stdout.on('data', (chunk) => out.push(chunk));
    child.stderr.on('data', (chunk) => err.push(chunk));
    return new Promise((resolve) => child.once('close', (code) => resolve({
      code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(),
    })));
  }

  /** GET on a probe's rendered path and port; true for a status 200-399. */
  async #check(probe) {
    const url = `http://${this.ip}:${this.port(probe.httpGet.port)}${probe.httpGet.path}`;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout((probe.timeoutSeconds ?? 1) * 1000) });
      await res.arrayBuffer();
      return res.status >= 200 && res.status < 400;
    } catch {
      return false;
    }
  }

  /**
   * The kubelet's probing of one container, until it ends (`ended` aborts): startup until it
   * passes, then liveness and readiness.
   */
  async #probe(ended) {
    const { startupProbe, livenessProbe, readinessProbe } = this.container;
    const pause = (probe) => sleep((probe.periodSeconds ?? 10) * 1000, undefined, { signal: ended }).catch(() => {});
    let failed = 0;
    while (!ended.aborted && !this.started) {
      if (await this.#check(startupProbe)) this.started = true;
      else if (++failed >= (startupProbe.failureThreshold ?? 3)) {
        this.failures.push(`startup probe failed ${failed} times`);
        return;
      } else await pause(startupProbe);
    }
    const liveness = (async () => {
      let misses = 0;
      while (!ended.aborted) {
        misses = (await this.#check(livenessProbe)) ? 0 : misses + 1;
        if (!ended.aborted && misses >= (livenessProbe.failureThreshold ?? 3)) {
          this.failures.push(`liveness probe failed ${misses} times`);
          misses = 0;
        }
        await pause(livenessProbe);
      }
    })();
    const readiness = (async () => {
      let passes = 0;
      let misses = 0;
      while (!ended.aborted) {
        if (await this.#check(readinessProbe)) {
          misses = 0;
          if (++passes >= (readinessProbe.successThreshold ?? 1)) this.ready = !ended.aborted;
        } else {
          passes = 0;
          if (++misses >= (readinessProbe.failureThreshold ?? 3)) this.ready = false;
        }
        await pause(readinessProbe);
      }
    })();
    await Promise.all([liveness, readiness]);
  }

  /**
   * Deletes the pod as the kubelet does: it leaves the Service's endpoints at once, runs the
   * preStop hook, sends SIGTERM, and kills it when the grace period (counted from the start of
   * preStop) runs out. Resolves with how it ended and whether it was killed.
   */
  async terminate() {
    this.terminating = true;
    const started = Date.now();
    const grace = (this.spec.terminationGracePeriodSeconds ?? 30) * 1000;
    const preStop = this.container.lifecycle?.preStop;
    if (preStop?.sleep) await sleep(preStop.sleep.seconds * 1000);
    else if (preStop) throw new Error('only a preStop sleep is emulated');
    this.process.kill('SIGTERM');
    const left = Math.max(0, grace - (Date.now() - started));
    const graceTimer = new AbortController();
    const timer = sleep(left, 'timeout', { signal: graceTimer.signal }).catch(() => null);
    const ended = await Promise.race([this.exited, timer]);
    graceTimer.abort();
    const killed = ended === 'timeout';
    if (killed) this.process.kill('SIGKILL');
    const how = await this.exited;
    await this.probing;
    return { ...how, killed, seconds: (this.exitedAt - started) / 1000 };
  }

  /** Kills the process at once (test clean-up). */
  async kill() {
    if (this.running) this.process.kill('SIGKILL');
    await this.exited;
    await this.probing;
  }
}
