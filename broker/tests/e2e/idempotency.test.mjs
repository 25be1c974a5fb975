// Idempotent publishing with the official Node `pusher` SDK, which passes the extra
// `idempotency_key` param into the event body (trigger) and keeps it on each event of a batch
// (triggerBatch): a repeat is answered as the first publish was and pusher-js receives it once,
// while the same publish without a key, sent twice, arrives twice.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';

import { startChorus, subscribeOk, waitState, eventually, DEFAULT_APP } from './harness.mjs';

const APP = { ...DEFAULT_APP, history: [{ channels: 'chat-*' }] };

describe('idempotent publishing with the Node SDK', () => {
  let server;
  let sdk;
  before(async () => {
    server = await startChorus({ apps: [APP] });
    sdk = server.sdk();
  });
  after(async () => {
    await server?.cleanup();
  });

  test('a repeat is answered the same and delivered once; without a key, twice', async () => {
    const client = server.client();
    await waitState(client, 'connected');
    const plain = await subscribeOk(client, 'plain');
    const chat = await subscribeOk(client, 'chat-room');
    const got = [];
    plain.bind('e', (data) => got.push(`plain ${data.n}`));
    chat.bind('e', (data) => got.push(`chat ${data.n}`));

    const answers = [];
    for (let i = 0; i < 2; i++) {
      const keyed = await sdk.trigger('plain', 'e', { n: 'keyed' }, { idempotency_key: 'node-plain-1' });
      answers.push([keyed.status, await keyed.json()]);
      const control = await sdk.trigger('plain', 'e', { n: 'control' });
      assert.equal(control.status, 200);
      const history = await sdk.trigger('chat-room', 'e', { n: 'history' }, { idempotency_key: 'node-chat-1' });
      answers.push([history.status, await history.json()]);
      const batch = await sdk.triggerBatch([
        { channel: 'chat-room', name: 'e', data: { n: 'batch-chat' }, idempotency_key: 'node-batch-1' },
        { channel: 'plain', name: 'e', data: { n: 'batch-plain' }, idempotency_key: 'node-batch-2' },
      ]);
      answers.push([batch.status, await batch.json()]);
    }
    // The first round's answers, then the same again.
    assert.deepEqual(answers.slice(3), answers.slice(0, 3));
    assert.deepEqual(answers[0], [200, {}]);
    const [, history] = answers[1];
    assert.equal(history.history[0].channel, 'chat-room');
    assert.equal(history.history[0].offset, 1);
    assert.equal(answers[2][1].history[0].offset, 2);

    await sdk.trigger('plain', 'e', { n: 'end' });
    await sdk.trigger('chat-room', 'e', { n: 'end' });
    await eventually(() => got.includes('plain end') && got.includes('chat end'), { what: 'the end markers' });
    const count = (what) => got.filter((g) => g === what).length;
    assert.equal(count('plain keyed'), 1, got.join(', '));
    assert.equal(count('plain control'), 2, got.join(', '));
    assert.equal(count('chat history'), 1, got.join(', '));
    assert.equal(count('chat batch-chat'), 1, got.join(', '));
    assert.equal(count('plain batch-plain'), 1, got.join(', '));

    // Stored once: the channel's history over the REST API.
    const stored = await (await sdk.get({ path: '/channels/chat-room/history' })).json();
    assert.deepEqual(
      stored.events.map((e) => [e.offset, JSON.parse(e.data).n]),
      [[1, 'history'], [2, 'batch-chat'], [3, 'end']],
    );
    client.disconnect();
  });
});
