#!/usr/bin/env python3
"""Benchmarks of the node's edge (not tests): the node's RSS while 1000 attackers hold each of
three attacks, against its quiet RSS, and the WebSocket handshake rate with per-IP limits on and
off. Python's standard library only; one chorus process per run, started here.

    python3 loadtest/edge_attacks.py --bin target/release/chorus rss
    python3 loadtest/edge_attacks.py --bin target/release/chorus handshakes

Attacks (1000 clients each, from 127.0.0.1-127.0.0.4):
  frames   a WebSocket frame header declaring 2^40 bytes, then 256 KiB of payload
  bodies   a signed API publish declaring 250000 bytes, 200000 sent, then silence
  readers  SSE streams of one channel that never read, while one publisher sends 30 KB events
Each figure is the median of `--runs` runs (3).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

KEY, SECRET, APP = "bench-key", "bench-secret-123", "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, env):
        self.dir = tempfile.mkdtemp(prefix="chorus-bench-")
        self.port, self.metrics = free_port(), free_port()
        full = dict(os.environ)
        full.update({
            "CHORUS_HOST": "127.0.0.1", "CHORUS_PORT": str(self.port),
            "CHORUS_METRICS_PORT": str(self.metrics), "CHORUS_CLUSTER_PORT": str(free_port()),
            "CHORUS_DATA_DIR": os.path.join(self.dir, "data"), "CHORUS_LOG": "warn",
            "CHORUS_APP_ID": APP, "CHORUS_APP_KEY": KEY, "CHORUS_APP_SECRET": SECRET,
        })
        full.update(env)
        self.proc = subprocess.Popen([binary], env=full, stdout=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("chorus did not become ready")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def signed_path(path, body):
    params = {"auth_key": KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
              "body_md5": hashlib.md5(body).hexdigest()}
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    sig = hmac.new(SECRET.encode(), f"POST\n{path}\n{query}".encode(), hashlib.sha256).hexdigest()
    return f"{path}?{query}&auth_signature={sig}"


def publish(port, channel, data):
    body = json.dumps({"name": "e", "channel": channel, "data": data}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{signed_path('/apps/1/events', body)}",
                                 data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def open_tcp(port, i):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{1 + i % 4}", 0))


async def ws_handshake(port, i):
    reader, writer = await open_tcp(port, i)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    await reader.readexactly(n)  # pusher:connection_established
    return reader, writer


async def attack_frames(node, i):
    reader, writer = await ws_handshake(node.port, i)
    writer.write(bytes([0x81, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"\x01\x02\x03\x04")
    try:
        for _ in range(4):
            writer.write(b"\0" * 65536)
            await writer.drain()
        await asyncio.wait_for(reader.read(), 10)
    except (OSError, asyncio.TimeoutError):
        pass
    writer.close()


async def attack_bodies(node, i):
    reader, writer = await open_tcp(node.port, i)
    body = b" " * 250_000
    writer.write((f"POST {signed_path('/apps/1/events', body)} HTTP/1.1\r\nHost: x\r\n"
                  "Content-Type: application/json\r\nContent-Length: 250000\r\n\r\n").encode())
    try:
        writer.write(body[:200_000])
        await writer.drain()
        await asyncio.wait_for(reader.read(), 30)
    except (OSError, asyncio.TimeoutError):
        pass
    writer.close()


async def attack_readers(node, i):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((f"127.0.0.{1 + i % 4}", 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET /app/{KEY}/sse?channels=crowd HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(12)  # never reads
    writer.close()


async def rss_during(node, attack, publishing=False):
    quiet = node.rss_kib()
    tasks = [asyncio.create_task(attack(node, i)) for i in range(1000)]
    peak, started = quiet, time.time()
    loop = asyncio.get_running_loop()
    while not all(t.done() for t in tasks) and time.time() - started < 40:
        if publishing:
            await loop.run_in_executor(None, publish, node.port, "crowd", "x" * 30_000)
        peak = max(peak, node.rss_kib())
        await asyncio.sleep(0.02)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    return quiet, peak, node.rss_kib()


def rss(binary, runs):
    for name, attack, publishing in [("frames", attack_frames, False),
                                     ("bodies", attack_bodies, False),
                                     ("readers", attack_readers, True)]:
        figures = []
        for _ in range(runs):
            node = Node(binary, {})
            try:
                figures.append(asyncio.run(rss_during(node, attack, publishing)))
            finally:
                node.stop()
        quiet, peak, after = (statistics.median(f[k] for f in figures) for k in range(3))
        print(f"{name}: quiet {quiet} KiB, peak under 1000 attackers {peak} KiB, "
              f"1 s after {after} KiB (medians of {runs})")


async def handshake_rate(node, total=3000, concurrency=50):
    done = 0

    async def worker(w):
        nonlocal done
        while done < total:
            done += 1
            _, writer = await ws_handshake(node.port, w)
            writer.close()

    started = time.time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return total / (time.time() - started)


def handshakes(binary, runs):
    on = {"CHORUS_MAX_CONNECTIONS_PER_IP": "100000", "CHORUS_MAX_HANDSHAKES_PER_IP_PER_SEC": "1000000"}
    for name, env in [("per-IP limits off", {}), ("per-IP limits on", on)]:
        rates = []
        for _ in range(runs):
            node = Node(binary, env)
            try:
                rates.append(asyncio.run(handshake_rate(node)))
            finally:
                node.stop()
        print(f"{name}: {statistics.median(rates):.0f} WebSocket handshakes/s "
              f"(median of {runs}: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("what", choices=["rss", "handshakes"])
    args = parser.parse_args()
    {"rss": rss, "handshakes": handshakes}[args.what](args.bin, args.runs)
