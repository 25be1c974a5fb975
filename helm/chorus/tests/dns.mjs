// The cluster's DNS, as CoreDNS serves a headless Service that publishes not-ready addresses:
// an A record for every pod that exists (`POD.HEADLESS.NAMESPACE.svc.DOMAIN`, from the moment it
// has an address until it is deleted) and one per pod under the Service's own name; NXDOMAIN
// for any other name of the cluster domain, at once, and nothing outside it. The server is the
// real dnsmasq (Debian's dnsmasq-base) on a loopback address of its own, reading its records
// from a hosts file it reads again on SIGHUP; the pods' /etc/resolv.conf names it.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { eventually } from './wait.mjs';

/** A DNS query for the A records of `name`, as bytes. */
function query(name, id) {
  const header = Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  const labels = name.split('.').map((label) => Buffer.concat([Buffer.from([label.length]), Buffer.from(label)]));
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

export class ClusterDns {
  /** `ip`: the loopback address it serves on, port 53; `dir`: where it keeps its records. */
  constructor(ip, dir, domain) {
    this.ip = ip;
    this.file = path.join(dir, 'cluster-dns-records');
    this.domain = domain;
    writeFileSync(this.file, '');
  }

  async start() {
    this.process = spawn('dnsmasq', [
      '--keep-in-foreground', '--conf-file=/dev/null', '--pid-file=', '--user=root', '--group=root',
      '--no-resolv', '--no-hosts', `--addn-hosts=${this.file}`, '--no-negcache', '--local-ttl=5',
      `--local=/${this.domain}/`, `--listen-address=${this.ip}`, '--bind-interfaces', '--port=53',
      '--log-facility=-', '--quiet-dhcp',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.log = [];
    this.process.stderr.on('data', (chunk) => this.log.push(chunk.toString()));
    this.exited = new Promise((resolve) => this.process.once('exit', resolve));
    await eventually(() => {
      if (this.process.exitCode !== null) throw new Error(`dnsmasq exited: ${this.log.join('')}`);
      return this.answers(`nothing.${this.domain}`);
    }, { timeout: 10000, what: `dnsmasq answering on ${this.ip}:53` });
    return this;
  }

  /** Whether the server answers a query for `name` (with any code) within 200 ms. */
  async answers(name) {
    const socket = dgram.createSocket('udp4');
    try {
      return await new Promise((resolve) => {
        socket.once('message', () => resolve(true));
        socket.once('error', () => resolve(false));
        setTimeout(() => resolve(false), 200);
        socket.send(query(name, 7), 53, this.ip);
      });
    } finally {
      socket.close();
    }
  }

  /** Serves exactly `records` ([{name, ip}]) from now on. */
  update(records) {
    writeFileSync(this.file, records.map(({ name, ip }) => `${ip}\t${name}\n`).join(''));
    this.process?.kill('SIGHUP');
  }

  async stop() {
    if (this.process && this.process.exitCode === null) {
      this.process.kill('SIGTERM');
      await this.exited;
    }
  }
}
