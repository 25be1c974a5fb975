// TLS on the public port with the real clients: pusher-js with `forceTLS` and the Node `pusher`
// SDK with `useTLS`, in a Node process told to trust the test's certificate authority through
// NODE_EXTRA_CA_CERTS (read by Node at start, hence a process of their own); the same SDK in a
// process that is not told is refused; a plain-text client of the TLS port gets no answer. The
// certificates are made with openssl.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { CHORUS_BIN, DEFAULT_APP, freePort } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** A certificate authority and a certificate it issued for 127.0.0.1, in `dir`. */
function makeCertificates(dir) {
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-days', '2', '-subj', '/CN=chorus e2e CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  openssl('req', ...ec, '-subj', '/CN=chorus e2e', '-keyout', 'node.key', '-out', 'node.csr');
  const extensions = path.join(dir, 'node.ext');
  execFileSync('sh', ['-c', `printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > "${extensions}"`]);
  openssl('x509', '-req', '-in', 'node.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', extensions, '-out', 'node.pem');
  return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'node.pem'), key: path.join(dir, 'node.key') };
}

/** GET `url` over https trusting `ca`: the status, or the error's code. */
function httpsStatus(url, ca) {
  return new Promise((resolve) => {
    const req = https.get(url, { ca, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', (e) => resolve(e.code ?? e.message));
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

/** Runs `script` (an ES module) in a Node process of its own, from this folder: its exit code and output. */
function runNode(script, env) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: HERE,
      env: { ...process.env, NODE_TEST_CONTEXT: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** A subscriber (pusher-js, forceTLS) and a publisher (the SDK, useTLS) of the node on `port`. */
function clientScript(port) {
  const app = JSON.stringify(DEFAULT_APP);
  return `
    import PusherClient from 'pusher-js';
    import PusherSDK from 'pusher';
    const app = ${app};
    const fail = (why) => { console.log('FAILED ' + why); process.exit(1); };
    setTimeout(() => fail('timeout'), 10000).unref();
    const client = new PusherClient(app.key, {
      wsHost: '127.0.0.1', wssPort: ${port}, forceTLS: true, enabledTransports: ['ws'],
      cluster: 'chorus', disableStats: true,
    });
    const sdk = new PusherSDK({ appId: app.id, key: app.key, secret: app.secret,
      host: '127.0.0.1', port: '${port}', useTLS: true });
    const channel = client.subscribe('tls-news');
    channel.bind('pusher:subscription_error', (e) => fail(JSON.stringify(e)));
    let done = 0;
    const finished = () => {
      if (++done < 2) return;
      client.disconnect();
      process.exit(0);
    };
    channel.bind('headline', (data) => {
      console.log('RECEIVED ' + JSON.stringify({ socketId: client.connection.socket_id, data }));
      finished();
    });
    channel.bind('pusher:subscription_succeeded', async () => {
      try {
        const res = await sdk.trigger('tls-news', 'headline', { title: 'over tls' });
        console.log('TRIGGERED ' + res.status);
        finished();
      } catch (e) { fail('trigger: ' + e.message); }
    });
  `;
}

/** The SDK alone, publishing once: what became of it. */
function publishScript(port) {
  const app = JSON.stringify(DEFAULT_APP);
  return `
    import PusherSDK from 'pusher';
    const app = ${app};
    const sdk = new PusherSDK({ appId: app.id, key: app.key, secret: app.secret,
      host: '127.0.0.1', port: '${port}', useTLS: true });
    try {
      const res = await sdk.trigger('tls-news', 'headline', { title: 'untrusted' });
      console.log('PUBLISHED ' + res.status);
    } catch (e) {
      const cause = e.error?.cause ?? e.error ?? e;
      console.log('REFUSED ' + (cause.code ?? '') + ' ' + (cause.message ?? cause));
    }
  `;
}

test('pusher-js with forceTLS and the SDK with useTLS over a certificate the process is told to trust', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chorus-e2e-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const files = makeCertificates(dir);
  const ca = readFileSync(files.ca);
  const [port, metricsPort, clusterPort] = [await freePort(), await freePort(), await freePort()];
  const env = {
    ...process.env,
    CHORUS_HOST: '127.0.0.1',
    CHORUS_PORT: String(port),
    CHORUS_METRICS_PORT: String(metricsPort),
    CHORUS_CLUSTER_PORT: String(clusterPort),
    CHORUS_DATA_DIR: path.join(dir, 'data'),
    CHORUS_APP_ID: DEFAULT_APP.id,
    CHORUS_APP_KEY: DEFAULT_APP.key,
    CHORUS_APP_SECRET: DEFAULT_APP.secret,
    CHORUS_TLS_CERT_FILE: files.cert,
    CHORUS_TLS_KEY_FILE: files.key,
    CHORUS_LOG: 'warn',
  };
  delete env.CHORUS_CONFIG;
  const node = spawn(CHORUS_BIN, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  node.stderr.on('data', (d) => (stderr += d));
  t.after(() => node.kill('SIGKILL'));

  // Ready over TLS, trusting the authority.
  const deadline = Date.now() + 10000;
  while ((await httpsStatus(`https://127.0.0.1:${port}/readyz`, ca)) !== 200) {
    assert.ok(Date.now() < deadline, `chorus not ready over TLS\n${stderr}`);
    await sleep(50);
  }

  // A plain-text client of the TLS port gets no HTTP answer.
  await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(5000) }));

  // Told to trust the authority: subscribed over wss, published over https, delivered.
  const trusted = await runNode(clientScript(port), { NODE_EXTRA_CA_CERTS: files.ca });
  assert.equal(trusted.code, 0, trusted.out);
  assert.match(trusted.out, /TRIGGERED 200/);
  const received = JSON.parse(trusted.out.split('RECEIVED ')[1].split('\n')[0]);
  assert.deepEqual(received.data, { title: 'over tls' });
  assert.match(received.socketId, /^\d+\.\d+$/);

  // Not told: the SDK refuses the certificate.
  const untrusted = await runNode(publishScript(port), { NODE_EXTRA_CA_CERTS: '' });
  assert.match(untrusted.out, /REFUSED .*(certificate|self.signed)/i, untrusted.out);
});
