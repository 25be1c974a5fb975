#!/usr/bin/env python3
"""Benchmarks of the cluster's webhooks (not tests): how many webhook events one node sends per
second to a local receiver, and the delay from a presence change to its webhook (p50/p99), with
batching on and off. Python's standard library only; one chorus process per run, started here
with a webhook to a receiver in this process.

    python3 loadtest/webhooks_bench.py --bin target/release/chorus throughput
    python3 loadtest/webhooks_bench.py --bin target/release/chorus delay
    python3 loadtest/webhooks_bench.py receiver --port 9999     # for a server run by hand

throughput  --users users join presence channels (40 each, --concurrency joins at a time), then all leave:
            2 x users member events. Figure: those events / the seconds from the first join sent
            to the last member_added received, plus from the first leave to the last
            member_removed.
delay       a user joins every 1/--rate s for --seconds, and leaves: per member_added, the time
            from its subscribe being sent to the receiver having the webhook.
receiver    answers 200 to every webhook on --port (to run beside a server started by hand, for
            the fan-out comparison with webhooks on and off).
Each figure is the median of `--runs` runs (3).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import statistics
import tempfile
import time

from edge_attacks import APP, KEY, SECRET, Node, free_port

EVENT_TYPES = ["channel_occupied", "channel_vacated", "member_added", "member_removed"]


class Receiver:
    """A webhook receiver: records each event with the time it arrived."""

    def __init__(self):
        self.events = []
        self.arrived = asyncio.Event()

    async def start(self, port=0):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                now = time.monotonic()
                for event in json.loads(body)["events"]:
                    self.events.append((now, event))
                self.arrived.set()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def wait_for(self, count, timeout):
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        return len(self.events) >= count


async def ws_connect(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise ConnectionError(head.split(b"\r\n")[0].decode())
    return reader, writer


async def ws_recv(reader):
    """The next text frame, as JSON (pings and other control frames skipped)."""
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(n)
        opcode = b0 & 0x0F
        if opcode == 1:
            return json.loads(payload)
        if opcode == 8:
            raise ConnectionError("closed by the server")


def ws_send(writer, message, opcode=1):
    data = json.dumps(message).encode() if opcode == 1 else message
    mask = os.urandom(4)
    n = len(data)
    header = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126
                                       else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


async def join(port, channel, user):
    """Joins `channel` as `user`; returns the connection and when the subscribe was sent."""
    reader, writer = await ws_connect(port)
    established = await ws_recv(reader)
    socket_id = json.loads(established["data"])["socket_id"]
    channel_data = json.dumps({"user_id": user})
    signature = hmac.new(SECRET.encode(), f"{socket_id}:{channel}:{channel_data}".encode(),
                         hashlib.sha256).hexdigest()
    sent = time.monotonic()
    ws_send(writer, {"event": "pusher:subscribe", "data": {
        "channel": channel, "auth": f"{KEY}:{signature}", "channel_data": channel_data}})
    while True:
        frame = await ws_recv(reader)
        if frame.get("channel") == channel and "subscription" in frame["event"]:
            if frame["event"] != "pusher_internal:subscription_succeeded":
                raise RuntimeError(f"join refused: {frame}")
            return writer, sent


def leave(writer):
    ws_send(writer, (1000).to_bytes(2, "big"), opcode=8)
    writer.close()


def start_node(binary, receiver_port, batching):
    config = os.path.join(tempfile.mkdtemp(prefix="chorus-webhooks-bench-"), "chorus.toml")
    with open(config, "w") as f:
        f.write(f'[[apps]]\nid = "{APP}"\nkey = "{KEY}"\nsecret = "{SECRET}"\n\n'
                f'[[apps.webhooks]]\nurl = "http://127.0.0.1:{receiver_port}/hook"\n'
                f'event_types = {json.dumps(EVENT_TYPES)}\n\n'
                f'[apps.webhook_delivery]\nbatching = {str(batching).lower()}\n'
                'vacate_delay_ms = 0\n')
    return Node(binary, {"CHORUS_CONFIG": config})


async def throughput_run(binary, batching, users, concurrency):
    """Seconds for the receiver to get `users` member_added, then `users` member_removed."""
    receiver = await Receiver().start()
    node = start_node(binary, receiver.port, batching)
    try:
        gate = asyncio.Semaphore(concurrency)

        async def one(i):
            async with gate:
                # Presence channels hold 100 members: 40 users per channel.
                writer, _ = await join(node.port, f"presence-bench-{i // 40}", f"u{i}")
                return writer

        async def phase(name, act):
            started = time.monotonic()
            await act()
            count = lambda: sum(1 for _, e in receiver.events if e["name"] == name)
            deadline = time.monotonic() + 120
            while count() < users and time.monotonic() < deadline:
                await receiver.wait_for(len(receiver.events) + 1, deadline - time.monotonic())
            if count() < users:
                raise RuntimeError(f"only {count()} of {users} {name} arrived")
            return max(t for t, e in receiver.events if e["name"] == name) - started

        writers = []

        async def join_all():
            writers.extend(await asyncio.gather(*(one(i) for i in range(users))))

        async def leave_all():
            for writer in writers:
                leave(writer)

        # Every user stays until every join is committed: a join and a leave committed together
        # would be no change at all.
        joining = await phase("member_added", join_all)
        leaving = await phase("member_removed", leave_all)
        return 2 * users / (joining + leaving)
    finally:
        node.stop()
        receiver.server.close()


async def delay_run(binary, batching, rate, seconds):
    receiver = await Receiver().start()
    node = start_node(binary, receiver.port, batching)
    try:
        sent = {}
        for i in range(int(rate * seconds)):
            tick = time.monotonic()
            writer, sent[f"u{i}"] = await join(node.port, "presence-delay", f"u{i}")
            asyncio.get_running_loop().call_later(0.5, leave, writer)
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - tick)))
        added = lambda: {e["user_id"]: t for t, e in receiver.events if e["name"] == "member_added"}
        deadline = time.monotonic() + 30
        while len(added()) < len(sent) and time.monotonic() < deadline:
            await receiver.wait_for(len(receiver.events) + 1, deadline - time.monotonic())
        arrived = added()
        delays = sorted((arrived[u] - sent[u]) * 1000 for u in sent if u in arrived)
        if len(delays) < len(sent):
            raise RuntimeError(f"only {len(delays)} of {len(sent)} member_added arrived")
        return delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
    finally:
        node.stop()
        receiver.server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default="target/release/chorus")
    parser.add_argument("--runs", type=int, default=3)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--users", type=int, default=2000)
    t.add_argument("--concurrency", type=int, default=50)
    d = sub.add_parser("delay")
    d.add_argument("--rate", type=float, default=20)
    d.add_argument("--seconds", type=float, default=10)
    r = sub.add_parser("receiver")
    r.add_argument("--port", type=int, default=free_port())
    args = parser.parse_args()

    if args.what == "receiver":
        async def serve():
            receiver = await Receiver().start(args.port)
            print(f"receiving webhooks on http://127.0.0.1:{receiver.port}/hook", flush=True)
            await receiver.server.serve_forever()
        asyncio.run(serve())
        return
    for batching in (True, False):
        label = "batching on " if batching else "batching off"
        if args.what == "throughput":
            runs = [asyncio.run(throughput_run(args.bin, batching, args.users, args.concurrency))
                    for _ in range(args.runs)]
            print(f"{label}: {statistics.median(runs):,.0f} webhook events/s "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in runs)})", flush=True)
        else:
            runs = [asyncio.run(delay_run(args.bin, batching, args.rate, args.seconds))
                    for _ in range(args.runs)]
            p50 = statistics.median(r[0] for r in runs)
            p99 = statistics.median(r[1] for r in runs)
            print(f"{label}: presence change to webhook p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                  f"(runs p50/p99: {', '.join(f'{a:.0f}/{b:.0f}' for a, b in runs)})", flush=True)


if __name__ == "__main__":
    main()
