// The container image: built with podman from the repository's Dockerfile around the chorus
// binary under test (the final stage only: base images cannot be pulled here), then run from
// the image's own root filesystem as the image says (entrypoint, user, environment, working
// folder), with that filesystem read-only but for /data, up to a 200 on /readyz and a clean
// exit on SIGTERM.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { eventually } from './wait.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../../..');
const BINARY = process.env.CHORUS_BIN && path.resolve(process.env.CHORUS_BIN);
const TAG = 'localhost/chorus:under-test';

/** The program interpreter (dynamic loader) an ELF executable names, or null when it is static. */
function interpreterOf(file) {
  const elf = readFileSync(file);
  assert.equal(elf.toString('latin1', 1, 4), 'ELF');
  const [phoff, phentsize, phnum] = [Number(elf.readBigUInt64LE(32)), elf.readUInt16LE(54), elf.readUInt16LE(56)];
  for (let i = 0; i < phnum; i++) {
    const header = phoff + i * phentsize;
    if (elf.readUInt32LE(header) === 3) { // PT_INTERP
      const [offset, size] = [Number(elf.readBigUInt64LE(header + 8)), Number(elf.readBigUInt64LE(header + 32))];
      return elf.toString('latin1', offset, offset + size - 1);
    }
  }
  return null;
}

describe('the container image', { skip: !BINARY && 'CHORUS_BIN is not set' }, () => {
  let work;
  let podman;
  let config;
  let rootfs;
  before(() => {
    work = mkdtempSync(path.join(os.tmpdir(), 'chorus-image-'));
    // A storage of its own: nothing of the machine's podman is touched, all is removed after.
    const storage = ['--root', path.join(work, 'storage'), '--runroot', path.join(work, 'run')];
    podman = (...args) => execFileSync('podman', [...storage, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const context = path.join(work, 'context');
    mkdirSync(path.join(context, 'data'), { recursive: true });
    try {
      linkSync(BINARY, path.join(context, 'chorus')); // no copy of a large binary where it can be
    } catch {
      copyFileSync(BINARY, path.join(context, 'chorus'));
    }
    podman('build', '--quiet', '--build-arg', 'BINARY_FROM=context', '-f', path.join(REPO, 'Dockerfile'), '-t', TAG, context);
    config = JSON.parse(podman('image', 'inspect', TAG))[0].Config;
    rootfs = podman('image', 'mount', TAG).trim();
  });
  after(() => {
    if (rootfs) podman('image', 'unmount', TAG);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('holds the static chorus, /data owned by its non-root user, and nothing else', () => {
    assert.deepEqual(config.Entrypoint, ['/chorus']);
    assert.equal(config.User, '65532:65532');
    assert.ok(config.Env.includes('CHORUS_DATA_DIR=/data'), config.Env.join(' '));
    assert.deepEqual(Object.keys(config.ExposedPorts).sort(), ['6001/tcp', '6002/tcp', '9601/tcp']);
    assert.deepEqual(readdirSync(rootfs).sort(), ['chorus', 'data']);
    const data = statSync(path.join(rootfs, 'data'));
    assert.deepEqual([data.uid, data.gid, data.isDirectory()], [65532, 65532, true]);
    assert.equal(interpreterOf(path.join(rootfs, 'chorus')), null, 'a static binary names no loader');
    assert.match(interpreterOf(process.execPath), /ld-linux/, 'a dynamic one does');
  });

  test('its entrypoint runs from the image as its user, up to a 200 on /readyz', async () => {
    const [user, group] = config.User.split(':');
    const env = Object.fromEntries(config.Env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    const ip = `127.${100 + (process.pid % 100)}.250.1`; // a pod IP of its own
    Object.assign(env, { CHORUS_HOST: ip, CHORUS_LOG: 'warn' });
    // What a container runtime gives: a writable layer over the image (an overlay whose upper
    // folder holds what the node writes), /proc and /dev, and a hostname (here a pod's).
    const layer = Object.fromEntries(['upper', 'work', 'merged'].map((d) => [d, path.join(work, d)]));
    for (const dir of Object.values(layer)) mkdirSync(dir);
    const q = (s) => `'${s}'`;
    const script = [
      'set -e',
      `/usr/bin/mount -t overlay overlay -o ${q(`lowerdir=${rootfs},upperdir=${layer.upper},workdir=${layer.work}`)} ${q(layer.merged)}`,
      ...['proc', 'dev'].map((d) => `/usr/bin/mkdir ${q(`${layer.merged}/${d}`)} && /usr/bin/mount --rbind /${d} ${q(`${layer.merged}/${d}`)}`),
      '/usr/bin/hostname chorus-0',
      `exec /usr/bin/unshare --root=${q(layer.merged)} --wd=${q(config.WorkingDir)} --setuid=${user} --setgid=${group} ` +
        config.Entrypoint.map(q).join(' '),
    ];
    const child = spawn('/usr/bin/unshare', ['--mount', '--uts', '--propagation', 'private', '/bin/sh', '-c', script.join('\n')], {
      env, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    child.stderr.on('data', (chunk) => (log += chunk));
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      await eventually(async () => {
        if (child.exitCode !== null) throw new Error(`chorus exited: ${log}`);
        const res = await fetch(`http://${ip}:6001/readyz`, { signal: AbortSignal.timeout(1000) });
        return res.status === 200;
      }, { what: `/readyz from the image's chorus (${log})` });
      assert.ok(readdirSync(path.join(layer.upper, 'data')).length > 0, 'the node wrote its data in /data');
      child.kill('SIGTERM');
      assert.deepEqual(await exited, { code: 0, signal: null }, log);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
