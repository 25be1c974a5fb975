// A webhook receiver on a loopback port, in the test's process: each request is checked with the
// Node server SDK's webhook validator (`pusher.webhook(request).isValid()`), recorded, and
// answered as the test says (a status, or never). Also the Python SDK's receiver, as a process.
import http from 'node:http';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { PusherSDK, withTimeout, WAIT_MS } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/**
 * Starts a receiver for `app`. `answer(request)` returns the status to answer, or null to never
 * answer (the connection is closed when the receiver stops); 200 by default. `port`: where to
 * listen (a free one by default; a fixed one to stop and start a receiver at the same URL).
 * `requests`: every request, {valid, headers, body, events, at, status}; `events()`: every event
 * of the valid ones, in arrival order.
 */
export async function startReceiver(app, { answer = () => 200, port = 0 } = {}) {
  const sdk = new PusherSDK({ appId: app.id, key: app.key, secret: app.secret, host: '127.0.0.1' });
  const requests = [];
  const hanging = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const webhook = sdk.webhook({ headers: req.headers, rawBody });
      const valid = webhook.isValid();
      const record = {
        valid,
        headers: req.headers,
        body: rawBody,
        events: valid ? webhook.getEvents() : [],
        at: Date.now(),
      };
      requests.push(record);
      const status = answer(record);
      record.status = status;
      if (status === null) {
        hanging.add(res);
        return;
      }
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}/webhook`;
  return {
    url,
    requests,
    events: () => requests.flatMap((r) => r.events),
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Starts the Python SDK's receiver (python/webhook_receiver.py in the e2e venv) for `app`. */
export async function startPythonReceiver(app) {
  const python = path.join(HERE, '.venv/bin/python');
  if (!existsSync(python)) {
    throw new Error(`${python} is missing: run.sh makes the venv (python3 -m venv .venv; pip install -r python/requirements.txt)`);
  }
  const proc = spawn(python, [path.join(HERE, 'python/webhook_receiver.py'), app.id, app.key, app.secret], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: proc.stdout });
  const requests = [];
  let announce;
  const port = new Promise((resolve) => (announce = resolve));
  lines.on('line', (line) => {
    const msg = JSON.parse(line);
    if (msg.port) announce(msg.port);
    else requests.push(msg);
  });
  const p = await withTimeout(port, WAIT_MS * 3, 'the Python receiver to listen');
  return {
    url: `http://127.0.0.1:${p}/hook`,
    requests,
    events: () => requests.flatMap((r) => r.events),
    async close() {
      proc.kill('SIGKILL');
    },
  };
}
