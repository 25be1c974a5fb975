// End-to-end harness for the chorus broker.
//
// Starts the real `chorus` binary as a child process on free loopback ports with a fresh
// data dir, and hands out the real clients: pusher-js (WebSocket client), the Node `pusher`
// server SDK (HTTP API), and a raw `ws` client for error paths. Every wait is bounded.
import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherClient from 'pusher-js';
import PusherSDK from 'pusher';
import WebSocket from 'ws';

export { PusherClient, PusherSDK, WebSocket, sleep };

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const CHORUS_BIN = process.env.CHORUS_BIN
  ? path.resolve(process.env.CHORUS_BIN)
  : path.resolve(HERE, '../../../target/debug/chorus');

/** Default wait for anything that should happen "at once". */
export const WAIT_MS = 4000;

export const DEFAULT_APP = Object.freeze({
  id: '4242',
  key: 'e2e-app-key',
  secret: 'e2e-app-secret-0123456789',
});

/** A 32-byte master key (base64) for private-encrypted channels. */
export const ENCRYPTION_MASTER_KEY_BASE64 = Buffer.alloc(32, 7).toString('base64');

// Every process we start, so that a crashing test never leaves one behind.
const LIVE = new Set();
function killAll() {
  for (const child of LIVE) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// TOML (only what the chorus config needs: scalars, arrays, inline tables, [[apps]] and its tables)

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (v && typeof v === 'object') {
    const pairs = Object.entries(v).map(([k, x]) => `${JSON.stringify(k)} = ${tomlValue(x)}`);
    return `{ ${pairs.join(', ')} }`;
  }
  throw new Error(`cannot write ${typeof v} as TOML`);
}

export function toToml(top, apps) {
  const lines = [];
  for (const [k, v] of Object.entries(top)) lines.push(`${k} = ${tomlValue(v)}`);
  for (const app of apps) {
    lines.push('', '[[apps]]');
    const { limits, history, webhooks, webhook_delivery: delivery, ...rest } = app;
    for (const [k, v] of Object.entries(rest)) lines.push(`${k} = ${tomlValue(v)}`);
    if (limits && Object.keys(limits).length) {
      lines.push('[apps.limits]');
      for (const [k, v] of Object.entries(limits)) lines.push(`${k} = ${tomlValue(v)}`);
    }
    for (const rule of history ?? []) {
      lines.push('[[apps.history]]');
      for (const [k, v] of Object.entries(rule)) lines.push(`${k} = ${tomlValue(v)}`);
    }
    for (const webhook of webhooks ?? []) {
      lines.push('[[apps.webhooks]]');
      for (const [k, v] of Object.entries(webhook)) lines.push(`${k} = ${tomlValue(v)}`);
    }
    if (delivery) {
      lines.push('[apps.webhook_delivery]');
      for (const [k, v] of Object.entries(delivery)) lines.push(`${k} = ${tomlValue(v)}`);
    }
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Signing (by hand, for the raw client and for forged/stale HTTP requests)

export function hmacHex(secret, text) {
  return createHmac('sha256', secret).update(text).digest('hex');
}

export function privateAuth(app, socketId, channel) {
  return `${app.key}:${hmacHex(app.secret, `${socketId}:${channel}`)}`;
}

export function presenceAuth(app, socketId, channel, channelData) {
  return `${app.key}:${hmacHex(app.secret, `${socketId}:${channel}:${channelData}`)}`;
}

export function userAuth(app, socketId, userData) {
  return `${app.key}:${hmacHex(app.secret, `${socketId}::user::${userData}`)}`;
}

export function md5Hex(text) {
  return createHash('md5').update(text).digest('hex');
}

/**
 * Builds a signed Pusher REST URL by hand (auth_version 1.0).
 * `params` are extra query params; `body` (a string) adds body_md5; `timestamp` overrides now;
 * `bodyMd5` forces a body_md5 even without a body (as the Python SDK does on GET).
 */
export function signedUrl(base, { method, path: p, params = {}, body, app, timestamp, bodyMd5 }) {
  const q = {
    auth_key: app.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...params,
  };
  if (body !== undefined && body !== '') q.body_md5 = md5Hex(body);
  if (bodyMd5 !== undefined) q.body_md5 = bodyMd5;
  const query = Object.keys(q)
    .sort()
    .map((k) => `${k}=${q[k]}`)
    .join('&');
  const sig = hmacHex(app.secret, `${method.toUpperCase()}\n${p}\n${query}`);
  return `${base}${p}?${query}&auth_signature=${sig}`;
}

// ---------------------------------------------------------------------------------------------
// Waiting helpers

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** Waits for one event on a pusher-js bindable (channel, connection, user), then unbinds. */
export function once(bindable, event, { timeout = WAIT_MS, filter = () => true, what } = {}) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (data, meta) => {
      if (filter(data, meta)) resolve(data);
    };
    bindable.bind(event, handler);
  });
  return withTimeout(p, timeout, what ?? `event ${event}`).finally(() => bindable.unbind(event, handler));
}

/** Records every `event` on a bindable; `.items` grows; `.stop()` unbinds. */
export function record(bindable, event) {
  const items = [];
  const handler = (data) => items.push(data);
  bindable.bind(event, handler);
  return { items, stop: () => bindable.unbind(event, handler) };
}

/** Waits until the pusher-js connection reaches `state`. */
export function waitState(client, state, timeout = WAIT_MS) {
  if (client.connection.state === state) return Promise.resolve();
  return once(client.connection, 'state_change', {
    timeout,
    filter: (s) => s.current === state,
    what: `connection state ${state} (now ${client.connection.state})`,
  });
}

/** Waits for a raw protocol frame on a pusher-js connection (`connection.bind('message')`). */
export function waitMessage(client, pred, { timeout = WAIT_MS, what = 'a message' } = {}) {
  return once(client.connection, 'message', { timeout, filter: (m) => pred(m), what });
}

/** Subscribes with pusher-js and waits for pusher:subscription_succeeded. */
export async function subscribeOk(client, name, timeout = WAIT_MS) {
  const ch = client.subscribe(name);
  if (ch.subscribed) return ch;
  let cleanup;
  const p = new Promise((resolve, reject) => {
    const ok = () => resolve();
    const bad = (e) => reject(new Error(`subscription_error on ${name}: ${JSON.stringify(e)}`));
    cleanup = () => {
      ch.unbind('pusher:subscription_succeeded', ok);
      ch.unbind('pusher:subscription_error', bad);
    };
    ch.bind('pusher:subscription_succeeded', ok);
    ch.bind('pusher:subscription_error', bad);
  });
  try {
    await withTimeout(p, timeout, `subscription to ${name}`);
  } finally {
    cleanup();
  }
  return ch;
}

/** Polls `fn` until it returns truthy (or the timeout passes). */
export async function eventually(fn, { timeout = WAIT_MS, interval = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last})`);
    await sleep(interval);
  }
}

/** Parses the `data` field of a server frame (a JSON string; an object is returned as is). */
export function frameData(msg) {
  if (typeof msg.data !== 'string') return msg.data;
  try {
    return JSON.parse(msg.data);
  } catch {
    return msg.data;
  }
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client

export class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.messages = []; // every parsed frame, in order
    this.consumed = new Set();
    this.waiters = [];
    this.rawErrors = [];
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.closeInfo = null;
    this.closed.then((c) => (this.closeInfo = c));
    this.unexpectedResponse = null;
    ws.on('error', (e) => this.rawErrors.push(e));
    ws.on('message', (buf) => {
      let msg;
      try {
        msg = JSON.parse(buf.toString());
      } catch {
        msg = { unparsable: buf.toString() };
      }
      this.messages.push(msg);
      this._wake();
    });
  }

  _wake() {
    for (const w of [...this.waiters]) {
      const i = this._find(w.pred);
      if (i >= 0) {
        this.consumed.add(i);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(this.messages[i]);
      }
    }
  }

  _find(pred) {
    return this.messages.findIndex((m, i) => !this.consumed.has(i) && pred(m));
  }

  /** The first not-yet-returned frame matching `pred` (an event name or a function). */
  next(pred, { timeout = WAIT_MS } = {}) {
    const f = typeof pred === 'string' ? (m) => m.event === pred : pred;
    const i = this._find(f);
    if (i >= 0) {
      this.consumed.add(i);
      return Promise.resolve(this.messages[i]);
    }
    let w;
    const p = new Promise((resolve) => {
      w = { pred: f, resolve };
      this.waiters.push(w);
    });
    const label = typeof pred === 'string' ? pred : 'a matching frame';
    return withTimeout(p, timeout, `${label}; frames so far: ${JSON.stringify(this.messages).slice(0, 1500)}`).finally(
      () => {
        const k = this.waiters.indexOf(w);
        if (k >= 0) this.waiters.splice(k, 1);
      },
    );
  }

  /** Every frame received (consumed or not) that matches. */
  all(pred) {
    const f = typeof pred === 'string' ? (m) => m.event === pred : pred;
    return this.messages.filter(f);
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  async ping() {
    this.send({ event: 'pusher:ping', data: {} });
    return this.next('pusher:pong');
  }

  /** Sends pusher:subscribe and returns the first success or error frame for that channel. */
  async subscribe(channel, extra = {}) {
    this.send({ event: 'pusher:subscribe', data: { channel, ...extra } });
    return this.next(
      (m) =>
        m.channel === channel &&
        ['pusher_internal:subscription_succeeded', 'pusher:subscription_error'].includes(m.event),
    );
  }

  async subscribeOk(channel, extra = {}) {
    const m = await this.subscribe(channel, extra);
    if (m.event !== 'pusher_internal:subscription_succeeded') {
      throw new Error(`subscribe ${channel} failed: ${JSON.stringify(m)}`);
    }
    return m;
  }

  waitClosed(timeout = WAIT_MS) {
    return withTimeout(this.closed, timeout, 'the socket to close');
  }

  /** Closes politely (close frame 1000); forces the socket shut if that takes over a second. */
  close() {
    try {
      if (this.ws.readyState === WebSocket.OPEN) {
        this.ws.close(1000);
        setTimeout(() => this.ws.terminate(), 1000).unref();
      } else if (this.ws.readyState === WebSocket.CONNECTING) {
        this.ws.terminate();
      }
    } catch {
      /* ignore */
    }
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }
}

// ---------------------------------------------------------------------------------------------
// The server

class Chorus {
  constructor(opts) {
    Object.assign(this, opts);
    this.clients = new Set();
    this.raws = new Set();
    this.stderrText = '';
    this.stdoutText = '';
    this.exitInfo = null;
  }

  get app() {
    return this.apps[0];
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get metricsUrl() {
    return `http://127.0.0.1:${this.metricsPort}/metrics`;
  }

  wsUrl(app = this.app, query = 'protocol=7&client=js&version=8.4.0') {
    const key = typeof app === 'string' ? app : app.key;
    return `ws://127.0.0.1:${this.port}/app/${key}${query === null ? '' : `?${query}`}`;
  }

  stderr() {
    return this.stderrText;
  }

  /** The Node server SDK for `app`. */
  sdk(app = this.app, extra = {}) {
    return new PusherSDK({
      appId: app.id,
      key: app.key,
      secret: app.secret,
      host: '127.0.0.1',
      port: String(this.port),
      useTLS: false,
      timeout: 5000,
      encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
      ...extra,
    });
  }

  /**
   * A pusher-js client. `user` ({id, info}) is used for presence channel_data and sign-in.
   * `signer` is the SDK that signs channel auth (default: the app's own; pass one with a wrong
   * secret to forge). `channelAuth` replaces the whole customHandler.
   */
  client({ app = this.app, user, signer, channelAuth, userAuthData, options = {} } = {}) {
    const sdk = signer ?? this.sdk(app);
    const client = new PusherClient(app.key, {
      wsHost: '127.0.0.1',
      wsPort: this.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      cluster: 'x',
      channelAuthorization: {
        customHandler:
          channelAuth ??
          (({ socketId, channelName }, cb) => {
            try {
              if (channelName.startsWith('presence-')) {
                if (!user) throw new Error('presence channel needs a user');
                cb(null, sdk.authorizeChannel(socketId, channelName, { user_id: user.id, user_info: user.info }));
              } else {
                cb(null, sdk.authorizeChannel(socketId, channelName));
              }
            } catch (e) {
              cb(e, null);
            }
          }),
      },
      userAuthentication: {
        customHandler: ({ socketId }, cb) => {
          try {
            if (!user) throw new Error('sign-in needs a user');
            cb(null, sdk.authenticateUser(socketId, userAuthData ?? { id: user.id, ...(user.info ?? {}) }));
          } catch (e) {
            cb(e, null);
          }
        },
      },
      ...options,
    });
    this.clients.add(client);
    return client;
  }

  /** A pusher-js client that is connected. */
  async connectedClient(opts = {}) {
    const c = this.client(opts);
    await waitState(c, 'connected');
    return c;
  }

  /**
   * A raw `ws` client. Resolves once the socket is open (not waiting for connection_established,
   * which is available via `next('pusher:connection_established')`), or once it is closed/refused.
   */
  async raw({ app = this.app, query, url, headers = {}, origin } = {}) {
    const ws = new WebSocket(url ?? this.wsUrl(app, query), { headers, origin, handshakeTimeout: WAIT_MS });
    const rc = new RawClient(ws);
    this.raws.add(rc);
    await withTimeout(
      new Promise((resolve) => {
        ws.once('open', resolve);
        ws.once('close', resolve);
        ws.once('error', resolve);
        ws.once('unexpected-response', (req, res) => {
          rc.unexpectedResponse = { status: res.statusCode };
          resolve();
        });
      }),
      WAIT_MS,
      'the WebSocket to open',
    );
    return rc;
  }

  /** A raw client past connection_established; `socketId` is set. */
  async rawConnected(opts = {}) {
    const rc = await this.raw(opts);
    const m = await rc.next('pusher:connection_established');
    rc.established = frameData(m);
    rc.socketId = rc.established.socket_id;
    return rc;
  }

  async metrics() {
    const res = await fetch(this.metricsUrl);
    if (res.status !== 200) throw new Error(`metrics answered ${res.status}`);
    return res.text();
  }

  /** The value of one metric sample, e.g. metric(text, 'chorus_connections', {app_id: '1'}). */
  static metric(text, name, labels = {}) {
    let total = null;
    for (const line of text.split('\n')) {
      if (line.startsWith('#') || !line.startsWith(name)) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)/.exec(line);
      if (!m || m[1] !== name) continue;
      const ls = {};
      for (const part of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) ls[part[1]] = part[2];
      if (Object.entries(labels).every(([k, v]) => ls[k] === String(v))) total = (total ?? 0) + Number(m[4]);
    }
    return total;
  }

  disconnectClients() {
    for (const c of this.clients) {
      try {
        c.disconnect();
      } catch {
        /* ignore */
      }
    }
    this.clients.clear();
    for (const r of this.raws) r.close();
    this.raws.clear();
  }

  /** Sends SIGTERM and waits for the exit (SIGKILL after `timeout`). Resolves {code, signal}. */
  async stop({ timeout = 12000, keepClients = false } = {}) {
    if (!keepClients) this.disconnectClients();
    if (this.exitInfo) return this.exitInfo;
    this.proc.kill('SIGTERM');
    try {
      return await withTimeout(this.exited, timeout, 'chorus to exit after SIGTERM');
    } catch (e) {
      this.proc.kill('SIGKILL');
      await this.exited;
      throw new Error(`${e.message}\n--- chorus stderr ---\n${this.stderrText.slice(-4000)}`);
    } finally {
      if (!keepClients) this.disconnectClients();
    }
  }

  /** For after() hooks: never throws, always leaves nothing running. */
  async cleanup() {
    try {
      await this.stop();
    } catch {
      /* reported elsewhere */
    }
    this.disconnectClients();
    try {
      rmSync(this.tmpDir, { recursive: true, force: true });
    } catch {
      /* ignore */
    }
  }
}

/**
 * Starts chorus.
 * - `apps`: [{id, key, secret, allowed_origins?, limits?}] (default: one app, DEFAULT_APP)
 * - `limits`: limits for the first app (shortcut)
 * - `config`: top-level config keys (activity_timeout_secs, ...)
 * A TOML file is written (and passed via --config) when any of these need one.
 * `env`: extra environment. CHORUS_APP_ID/KEY/SECRET always name the first app.
 * `configVia`: 'flag' (--config FILE, default) or 'env' (CHORUS_CONFIG=FILE).
 * `port`/`metricsPort`: fixed ports (for restarts); free ones otherwise.
 */
export async function startChorus({
  apps,
  limits,
  config = {},
  env = {},
  readyTimeout = 10000,
  configVia = 'flag',
  port: fixedPort,
  metricsPort: fixedMetricsPort,
} = {}) {
  if (!existsSync(CHORUS_BIN)) {
    throw new Error(`chorus binary not found at ${CHORUS_BIN} (build it or set CHORUS_BIN)`);
  }
  apps = (apps ?? [DEFAULT_APP]).map((a) => ({ ...a }));
  if (limits) apps[0].limits = { ...(apps[0].limits ?? {}), ...limits };
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'chorus-e2e-'));
  const port = fixedPort ?? (await freePort());
  let metricsPort = fixedMetricsPort ?? (await freePort());
  while (metricsPort === port) metricsPort = await freePort();

  const needsFile =
    apps.length > 1 ||
    Object.keys(config).length > 0 ||
    apps.some((a) => a.limits || a.allowed_origins || a.history || a.webhooks);
  const args = [];
  let configPath = null;
  if (needsFile) {
    configPath = path.join(tmpDir, 'chorus.toml');
    writeFileSync(configPath, toToml(config, apps));
    if (configVia === 'flag') args.push('--config', configPath);
  }
  const childEnv = {
    ...process.env,
    CHORUS_HOST: '127.0.0.1',
    CHORUS_PORT: String(port),
    CHORUS_METRICS_PORT: String(metricsPort),
    CHORUS_DATA_DIR: path.join(tmpDir, 'data'),
    CHORUS_APP_ID: apps[0].id,
    CHORUS_APP_KEY: apps[0].key,
    CHORUS_APP_SECRET: apps[0].secret,
    CHORUS_LOG: process.env.CHORUS_LOG ?? 'info',
    ...env,
  };
  delete childEnv.CHORUS_CONFIG;
  if (configPath && configVia === 'env') childEnv.CHORUS_CONFIG = configPath;
  const server = new Chorus({ port, metricsPort, apps, tmpDir, configPath, args, childEnv });
  try {
    await server.launch(readyTimeout);
  } catch (e) {
    rmSync(tmpDir, { recursive: true, force: true });
    throw e;
  }
  return server;
}

/** Starts the process of `server` and waits until it is ready. */
Chorus.prototype.launch = async function launch(readyTimeout = 10000) {
  const proc = spawn(CHORUS_BIN, this.args, { env: this.childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  LIVE.add(proc);
  const server = this;
  server.proc = proc;
  server.exitInfo = null;
  proc.stderr.on('data', (d) => {
    server.stderrText += d.toString();
    if (server.stderrText.length > 200_000) server.stderrText = server.stderrText.slice(-100_000);
  });
  proc.stdout.on('data', (d) => {
    server.stdoutText += d.toString();
    if (server.stdoutText.length > 200_000) server.stdoutText = server.stdoutText.slice(-100_000);
  });
  server.exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      LIVE.delete(proc);
      server.exitInfo = { code, signal };
      resolve(server.exitInfo);
    });
  });

  const deadline = Date.now() + readyTimeout;
  for (;;) {
    if (server.exitInfo) {
      throw new Error(
        `chorus exited early (${JSON.stringify(server.exitInfo)})\n--- stderr ---\n${server.stderrText.slice(-4000)}`,
      );
    }
    try {
      const res = await fetch(`${server.baseUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      await server.exited;
      throw new Error(
        `chorus not ready within ${readyTimeout} ms\n--- stderr ---\n${server.stderrText.slice(-4000)}`,
      );
    }
    await sleep(50);
  }
};

/**
 * Stops the process with `signal` (SIGKILL: no chance to flush or say goodbye; SIGTERM: the
 * graceful shutdown) and starts it again on the same ports, data directory and configuration.
 * Clients are left connected, to see how they reconnect.
 */
Chorus.prototype.restart = async function restart({ signal = 'SIGKILL', pauseMs = 0 } = {}) {
  if (!this.exitInfo) {
    this.proc.kill(signal);
    await withTimeout(this.exited, 15000, `chorus to exit after ${signal}`);
  }
  if (pauseMs) await sleep(pauseMs);
  await this.launch();
};

let controls = 0;

/**
 * The positive control of a check that nothing arrived: `client` (a RawClient or a pusher-js
 * client of `app`) joins a fresh public channel, and an event published there now reaches it. So
 * the client still receives, and whatever was published before had its chance to arrive first.
 */
Chorus.prototype.control = async function control(client, app = this.app) {
  const channel = `control-${++controls}`;
  const sdk = this.sdk(app);
  if (client instanceof RawClient) {
    await client.subscribeOk(channel);
    const got = client.next((m) => m.channel === channel && m.event === 'control');
    await sdk.trigger(channel, 'control', { n: controls });
    await got;
    return;
  }
  const ch = await subscribeOk(client, channel);
  const got = once(ch, 'control');
  await sdk.trigger(channel, 'control', { n: controls });
  await got;
  client.unsubscribe(channel);
};

export const metric = Chorus.metric;

/** Collects frames/events for `ms` and returns them (for asserting that nothing arrived). */
export async function collectFor(ms, bindable, event) {
  const r = record(bindable, event);
  await sleep(ms);
  r.stop();
  return r.items;
}

/** Asserts a promise rejects with a pusher SDK RequestError of `status`; returns the error. */
export async function expectStatus(promise, status) {
  let res;
  try {
    res = await promise;
  } catch (e) {
    if (e && e.status === status) return e;
    throw new Error(`expected HTTP ${status}, got error ${e && e.status} ${e && e.body} ${e && e.message}`);
  }
  throw new Error(`expected HTTP ${status}, got ${res && res.status}`);
}
