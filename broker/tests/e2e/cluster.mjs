// Several chorus processes forming one cluster, for the end-to-end tests: each started by the
// harness's startChorus on free ports with the same peer list and cluster secret, as an operator
// would (CHORUS_NODE_ID, CHORUS_CLUSTER_PORT, CHORUS_PEERS, CHORUS_CLUSTER_SECRET).
import { startChorus, freePort, eventually } from './harness.mjs';

export const CLUSTER_SECRET = 'e2e-cluster-secret-0123';

/**
 * Starts nodes 1..size; `nodes[i]` is node i + 1 (a harness server with `id` and `clusterPort`).
 * `apps` and `config` go to every node's startChorus.
 */
export async function startCluster(size, { apps, config } = {}) {
  const clusterPorts = [];
  for (let i = 0; i < size; i++) clusterPorts.push(await freePort());
  const peers = clusterPorts.map((port, i) => `${i + 1}@127.0.0.1:${port}`).join(',');
  // All at once: a node is ready only once a quorum of them is up and has a leader.
  const starting = clusterPorts.map(async (clusterPort, i) => {
    const node = await startChorus({
      apps,
      config,
      env: {
        CHORUS_NODE_ID: String(i + 1),
        CHORUS_CLUSTER_PORT: String(clusterPort),
        CHORUS_PEERS: peers,
        CHORUS_CLUSTER_SECRET: CLUSTER_SECRET,
        CHORUS_LOG: process.env.CHORUS_LOG ?? 'warn,openraft=off',
      },
    });
    node.id = i + 1;
    node.clusterPort = clusterPort;
    return node;
  });
  const started = await Promise.allSettled(starting);
  const nodes = started.filter((s) => s.status === 'fulfilled').map((s) => s.value);
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await Promise.all(nodes.map((node) => node.cleanup()));
    throw failed.reason;
  }
  return {
    nodes,
    node: (id) => nodes[id - 1],
    /** The nodes with subscribers of `channel` (of the first app), as node `id` applied it. */
    async interest(id, channel) {
      const res = await fetch(`http://127.0.0.1:${nodes[id - 1].clusterPort}/cluster/interest`, {
        headers: { 'x-chorus-cluster-secret': CLUSTER_SECRET },
        signal: AbortSignal.timeout(2000),
      });
      if (res.status !== 200) throw new Error(`/cluster/interest answered ${res.status}`);
      const entry = (await res.json()).find((e) => e.app === nodes[0].app.id && e.channel === channel);
      return entry?.nodes ?? [];
    },
    /** Waits until node `id` has applied that exactly `ids` have subscribers of `channel`. */
    async awaitInterest(id, channel, ids, timeout = 15000) {
      const want = JSON.stringify(ids);
      await eventually(async () => JSON.stringify(await this.interest(id, channel)) === want, {
        timeout,
        what: `node ${id} to see nodes ${want} subscribed to ${channel}`,
      });
    },
    /** The id of the leader, as node `id` knows it (null: none). */
    async leaderSeenBy(id) {
      const res = await fetch(`http://127.0.0.1:${nodes[id - 1].clusterPort}/cluster`, {
        headers: { 'x-chorus-cluster-secret': CLUSTER_SECRET },
        signal: AbortSignal.timeout(2000),
      });
      return (await res.json()).leader_id ?? null;
    },
    async cleanup() {
      await Promise.all(nodes.map((node) => node.cleanup()));
    },
  };
}
