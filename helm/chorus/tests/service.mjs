// A Service as kube-proxy makes it: one address whose TCP connections go, round robin, to the
// ready endpoints (pods that pass their readiness probe and are not terminating). A client that
// a pod closes reconnects through it and lands on another ready pod.
import net from 'node:net';

export class Service {
  /** `endpoints()` gives the addresses (`{host, port}`) a new connection may go to. */
  constructor(endpoints) {
    this.endpoints = endpoints;
    this.next = 0;
    this.sockets = new Set();
    this.server = net.createServer((client) => this.#forward(client));
  }

  async listen() {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', resolve);
    });
    this.port = this.server.address().port;
    return this;
  }

  #forward(client) {
    const ready = this.endpoints();
    if (ready.length === 0) {
      client.destroy(); // no endpoint: the connection is refused, as with kube-proxy
      return;
    }
    const target = ready[this.next++ % ready.length];
    const upstream = net.connect(target);
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  }

  async close() {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
