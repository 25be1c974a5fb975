// Connection-level behaviour: handshake, ping/pong, bad keys, bad protocol, bad frames.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startChorus,
  waitState,
  once,
  frameData,
  sleep,
  record,
  privateAuth,
} from './harness.mjs';

describe('connection', () => {
  let server;
  before(async () => {
    server = await startChorus({ limits: { max_message_bytes: 2048 } });
  });
  after(async () => {
    await server?.cleanup();
  });

  test('connection_established carries a socket_id "N.N" and activity_timeout 120', async () => {
    const rc = await server.raw();
    const m = await rc.next('pusher:connection_established');
    assert.equal(typeof m.data, 'string', 'data is a JSON-encoded string');
    const d = JSON.parse(m.data);
    assert.match(d.socket_id, /^\d+\.\d+$/);
    assert.equal(d.activity_timeout, 120);
    rc.close();
  });

  test('socket ids are unique across connections', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    assert.notEqual(a.socketId, b.socketId);
    a.close();
    b.close();
  });

  test('pusher-js connects and gets the same socket_id format', async () => {
    const c = server.client();
    await waitState(c, 'connected');
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
    c.disconnect();
  });

  test('pusher:ping is answered with pusher:pong', async () => {
    const rc = await server.rawConnected();
    const pong = await rc.ping();
    assert.equal(pong.event, 'pusher:pong');
    // and again: the connection keeps working
    await rc.ping();
    rc.close();
  });

  test('pusher-js ping (connection.send_event) gets a pong', async () => {
    const c = await server.connectedClient();
    const pong = once(c.connection, 'message', { filter: (m) => m.event === 'pusher:pong', what: 'pusher:pong' });
    c.connection.send_event('pusher:ping', {});
    await pong;
    c.disconnect();
  });

  test('unknown app key: pusher:error 4001 then close 4001', async () => {
    const rc = await server.raw({ app: 'no-such-key' });
    const err = await rc.next('pusher:error');
    assert.equal(frameData(err).code, 4001);
    const closed = await rc.waitClosed();
    assert.equal(closed.code, 4001);
  });

  test('unknown app key: pusher-js reports 4001 and does not reconnect', async () => {
    const c = server.client({ app: { key: 'no-such-key', id: '999', secret: 'whatever-secret' } });
    const errors = record(c.connection, 'error');
    const states = record(c.connection, 'state_change');
    await waitState(c, 'disconnected', 5000);
    const codes = errors.items.map((e) => e?.error?.data?.code ?? e?.data?.code);
    assert.ok(codes.includes(4001), `expected a 4001 error, got ${JSON.stringify(errors.items)}`);
    const before = states.items.length;
    await sleep(2500);
    const later = states.items.slice(before).map((s) => s.current);
    assert.deepEqual(later, [], `pusher-js must stay disconnected, saw states ${later}`);
    assert.equal(c.connection.state, 'disconnected');
    errors.stop();
    states.stop();
    c.disconnect();
  });

  test('missing protocol param: close 4008', async () => {
    const rc = await server.raw({ query: 'client=js&version=8.4.0' });
    const closed = await rc.waitClosed();
    assert.equal(closed.code, 4008);
  });

  test('unsupported protocol (4): close 4007', async () => {
    const rc = await server.raw({ query: 'protocol=4&client=js&version=8.4.0' });
    const closed = await rc.waitClosed();
    assert.equal(closed.code, 4007);
  });

  test('unsupported protocol (8): close 4007', async () => {
    const rc = await server.raw({ query: 'protocol=8&client=js&version=8.4.0' });
    const closed = await rc.waitClosed();
    assert.equal(closed.code, 4007);
  });

  test('protocol 5 is accepted', async () => {
    const rc = await server.raw({ query: 'protocol=5&client=js&version=8.4.0' });
    await rc.next('pusher:connection_established');
    rc.close();
  });

  test('malformed JSON: pusher:error with code null, connection stays open', async () => {
    const rc = await server.rawConnected();
    rc.send('{this is not json');
    const err = await rc.next('pusher:error');
    const d = frameData(err);
    assert.equal(d.code, null);
    assert.equal(typeof d.message, 'string');
    assert.ok(d.message.length > 0);
    await rc.ping();
    assert.ok(rc.isOpen);
    rc.close();
  });

  test('unknown pusher: event: pusher:error code null, connection stays open', async () => {
    const rc = await server.rawConnected();
    rc.send({ event: 'pusher:no_such_thing', data: {} });
    const err = await rc.next('pusher:error');
    assert.equal(frameData(err).code, null);
    await rc.ping();
    rc.close();
  });

  test('wrong types (channel is a number): pusher:error code null, connection stays open', async () => {
    const rc = await server.rawConnected();
    rc.send({ event: 'pusher:subscribe', data: { channel: 12345 } });
    const err = await rc.next((m) => m.event === 'pusher:error' || m.event === 'pusher:subscription_error');
    assert.equal(err.event, 'pusher:error', JSON.stringify(err));
    assert.equal(frameData(err).code, null);
    await rc.ping();
    rc.close();
  });

  test('over-size frame (> max_message_bytes): pusher:error with code null', async () => {
    const rc = await server.rawConnected();
    await rc.subscribeOk('private-big', { auth: privateAuth(server.app, rc.socketId, 'private-big') });
    rc.send({ event: 'client-big', channel: 'private-big', data: { blob: 'x'.repeat(4096) } });
    const err = await rc.next('pusher:error');
    const d = frameData(err);
    assert.equal(d.code, null, JSON.stringify(d));
    assert.equal(typeof d.message, 'string');
    rc.close();
  });

  test('over-size frame that is not a client event (padded ping): pusher:error code null', async () => {
    const rc = await server.rawConnected();
    rc.send({ event: 'pusher:ping', data: { pad: 'p'.repeat(4096) } });
    const m = await rc.next((x) => x.event === 'pusher:error' || x.event === 'pusher:pong');
    assert.equal(m.event, 'pusher:error', JSON.stringify(m));
    assert.equal(frameData(m).code, null);
    rc.close();
  });

  test('over-size client event is not delivered to other members', async () => {
    const a = await server.rawConnected();
    const b = await server.rawConnected();
    await a.subscribeOk('private-big2', { auth: privateAuth(server.app, a.socketId, 'private-big2') });
    await b.subscribeOk('private-big2', { auth: privateAuth(server.app, b.socketId, 'private-big2') });
    a.send({ event: 'client-big', channel: 'private-big2', data: { blob: 'x'.repeat(4096) } });
    a.send({ event: 'client-small', channel: 'private-big2', data: { ok: 1 } });
    const got = await b.next((m) => m.event?.startsWith('client-'));
    assert.equal(got.event, 'client-small');
    a.close();
    b.close();
  });

  test('the app\'s max_message_bytes also bounds REST event data (413 above 2048 here)', async () => {
    const sdk = server.sdk();
    await assert.rejects(sdk.trigger('limited', 'e', 'x'.repeat(3000)), (e) => e.status === 413);
    const res = await sdk.trigger('limited', 'e', 'x'.repeat(1000));
    assert.equal(res.status, 200);
  });

  test('HTTP GET /healthz and /readyz answer 200', async () => {
    assert.equal((await fetch(`${server.baseUrl}/healthz`)).status, 200);
    assert.equal((await fetch(`${server.baseUrl}/readyz`)).status, 200);
  });
});

describe('server-initiated ping', () => {
  let server;
  before(async () => {
    server = await startChorus({ config: { activity_timeout_secs: 1, pong_timeout_secs: 1 } });
  });
  after(async () => {
    await server?.cleanup();
  });

  test('activity_timeout from the config is told in connection_established', async () => {
    const rc = await server.rawConnected();
    assert.equal(rc.established.activity_timeout, 1);
    rc.close();
  });

  test('an idle client is pinged, and closed with 4201 when it does not pong', async () => {
    const rc = await server.rawConnected();
    const ping = await rc.next('pusher:ping', { timeout: 4000 });
    assert.equal(ping.event, 'pusher:ping');
    const closed = await rc.waitClosed(5000);
    assert.equal(closed.code, 4201);
  });

  test('a client that keeps talking is not pinged by the server', async () => {
    const rc = await server.rawConnected();
    const end = Date.now() + 3000;
    while (Date.now() < end) {
      await rc.ping();
      await sleep(300);
    }
    assert.deepEqual(rc.all('pusher:ping'), [], 'no server ping while the client is active');
    assert.ok(rc.isOpen);
    rc.close();
  });

  test('a client that answers pusher:ping with pusher:pong stays connected', async () => {
    const rc = await server.rawConnected();
    rc.ws.on('message', (buf) => {
      const m = JSON.parse(buf.toString());
      if (m.event === 'pusher:ping') rc.send({ event: 'pusher:pong', data: {} });
    });
    await rc.next('pusher:ping', { timeout: 4000 });
    await sleep(3500);
    assert.ok(rc.isOpen, `closed: ${JSON.stringify(rc.closeInfo)}`);
    rc.close();
  });
});
