// Waiting by polling, with a deadline: the one way these tests synchronise with the processes.
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Waits until `condition()` is true, polling; throws naming `what` (a text, or a function giving
 * it, called then) after `timeout` ms.
 */
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
  const named = typeof what === 'function' ? what() : what;
  throw new Error(`timed out after ${timeout} ms waiting for ${named}${last ? `: ${last.message}` : ''}`);
}
