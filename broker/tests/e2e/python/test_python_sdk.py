"""The Python server SDK (pusher-http-python) against a real chorus process.

A small harness starts the binary (CHORUS_BIN, default ../../../../target/debug/chorus relative to
this file) on free loopback ports with a fresh data dir, like harness.mjs does for the Node tests.
Subscribers are raw WebSocket clients (websocket-client).
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pusher
import pytest
import websocket
from pusher.errors import PusherBadAuth, PusherBadRequest

HERE = Path(__file__).resolve().parent
CHORUS_BIN = Path(os.environ.get("CHORUS_BIN") or (HERE / "../../../../target/debug/chorus")).resolve()

APP_ID = "777"
APP_KEY = "py-app-key"
APP_SECRET = "py-app-secret-0123456789"
WAIT = 4.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chorus:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="chorus-py-")
        self.port = free_port()
        self.metrics_port = free_port()
        while self.metrics_port == self.port:
            self.metrics_port = free_port()
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        env = dict(os.environ)
        env.pop("CHORUS_CONFIG", None)
        env.update(
            CHORUS_HOST="127.0.0.1",
            CHORUS_PORT=str(self.port),
            CHORUS_METRICS_PORT=str(self.metrics_port),
            CHORUS_DATA_DIR=os.path.join(self.tmp, "data"),
            CHORUS_APP_ID=APP_ID,
            CHORUS_APP_KEY=APP_KEY,
            CHORUS_APP_SECRET=APP_SECRET,
        )
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(CHORUS_BIN)], env=env, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        self._wait_ready(10.0)

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chorus exited early ({self.proc.returncode}):\n{self.stderr()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"chorus not ready within {timeout}s:\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=12)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.proc.returncode

    def sdk(self, secret=APP_SECRET, app_id=APP_ID):
        return pusher.Pusher(
            app_id=app_id,
            key=APP_KEY,
            secret=secret,
            ssl=False,
            host="127.0.0.1",
            port=self.port,
            timeout=5,
            encryption_master_key_base64=base64.b64encode(bytes([7] * 32)).decode(),
        )

    def ws(self):
        return Sub(f"ws://127.0.0.1:{self.port}/app/{APP_KEY}?protocol=7&client=python&version=1.0")


class Sub:
    """A raw WebSocket subscriber with bounded waits."""

    def __init__(self, url):
        self.conn = websocket.create_connection(url, timeout=WAIT)
        self.buffer = []
        est = self.next(lambda m: m.get("event") == "pusher:connection_established")
        self.socket_id = json.loads(est["data"])["socket_id"]

    def send(self, obj):
        self.conn.send(json.dumps(obj))

    def next(self, pred, timeout=WAIT):
        for i, m in enumerate(self.buffer):
            if pred(m):
                return self.buffer.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; frames seen: {self.buffer!r}"[:2000])
            self.conn.settimeout(left)
            try:
                raw = self.conn.recv()
            except websocket.WebSocketTimeoutException:
                continue
            m = json.loads(raw)
            if pred(m):
                return m
            self.buffer.append(m)

    def drain(self, seconds):
        """Everything that arrives within `seconds` (plus what is buffered)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.conn.settimeout(left)
            try:
                self.buffer.append(json.loads(self.conn.recv()))
            except websocket.WebSocketTimeoutException:
                break
        out, self.buffer = self.buffer, []
        return out

    def subscribe(self, channel, **extra):
        self.send({"event": "pusher:subscribe", "data": {"channel": channel, **extra}})
        return self.next(
            lambda m: m.get("channel") == channel
            and m.get("event") in ("pusher_internal:subscription_succeeded", "pusher:subscription_error")
        )

    def subscribe_ok(self, channel, **extra):
        m = self.subscribe(channel, **extra)
        assert m["event"] == "pusher_internal:subscription_succeeded", m
        return m

    def event(self, name, channel=None):
        return self.next(lambda m: m.get("event") == name and (channel is None or m.get("channel") == channel))

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


@pytest.fixture(scope="module")
def server():
    if not CHORUS_BIN.exists():
        pytest.fail(f"chorus binary not found at {CHORUS_BIN} (build it or set CHORUS_BIN)")
    s = Chorus()
    yield s
    code = s.stop()
    assert code == 0, f"chorus exit code {code}"


@pytest.fixture
def subs(server):
    opened = []

    def make():
        sub = server.ws()
        opened.append(sub)
        return sub

    yield make
    for s in opened:
        s.close()


def data_of(m):
    d = m.get("data")
    return json.loads(d) if isinstance(d, str) else d


def test_trigger_is_received_by_a_websocket_subscriber(server, subs):
    sub = subs()
    sub.subscribe_ok("py-news")
    assert server.sdk().trigger("py-news", "headline", {"title": "hello", "n": 1}) == {}
    m = sub.event("headline", "py-news")
    assert isinstance(m["data"], str)
    assert json.loads(m["data"]) == {"title": "hello", "n": 1}


def test_trigger_to_several_channels_and_socket_id_exclusion(server, subs):
    a, b = subs(), subs()
    a.subscribe_ok("py-multi-1")
    b.subscribe_ok("py-multi-2")
    b.subscribe_ok("py-multi-1")
    server.sdk().trigger(["py-multi-1", "py-multi-2"], "e", {"x": 1})
    assert data_of(a.event("e", "py-multi-1")) == {"x": 1}
    assert data_of(b.event("e", "py-multi-1")) == {"x": 1}
    assert data_of(b.event("e", "py-multi-2")) == {"x": 1}

    server.sdk().trigger("py-multi-1", "only-b", {}, socket_id=a.socket_id)
    b.event("only-b", "py-multi-1")
    assert [m for m in a.drain(0.5) if m.get("event") == "only-b"] == []


def test_trigger_batch(server, subs):
    sub = subs()
    sub.subscribe_ok("py-batch-a")
    sub.subscribe_ok("py-batch-b")
    res = server.sdk().trigger_batch(
        [
            {"channel": "py-batch-a", "name": "one", "data": {"a": 1}},
            {"channel": "py-batch-b", "name": "two", "data": "text"},
        ]
    )
    assert res == {}
    assert data_of(sub.event("one", "py-batch-a")) == {"a": 1}
    assert sub.event("two", "py-batch-b")["data"] == "text"


def test_trigger_batch_over_ten_events_is_rejected(server):
    batch = [{"channel": "py-big-batch", "name": "e", "data": {}} for _ in range(11)]
    with pytest.raises(PusherBadRequest):
        server.sdk().trigger_batch(batch)


def presence_subscribe(server, sub, channel, user_id, user_info):
    auth = server.sdk().authenticate(
        channel=channel, socket_id=sub.socket_id, custom_data={"user_id": user_id, "user_info": user_info}
    )
    return sub.subscribe(channel, auth=auth["auth"], channel_data=auth["channel_data"])


def test_authenticate_private_used_by_a_raw_subscriber(server, subs):
    sub = subs()
    auth = server.sdk().authenticate(channel="private-py", socket_id=sub.socket_id)
    assert set(auth) == {"auth"}
    m = sub.subscribe("private-py", auth=auth["auth"])
    assert m["event"] == "pusher_internal:subscription_succeeded", m
    server.sdk().trigger("private-py", "secret", {"s": 1})
    assert data_of(sub.event("secret", "private-py")) == {"s": 1}

    # the same auth does not work for another socket
    other = subs()
    m = other.subscribe("private-py", auth=auth["auth"])
    assert m["event"] == "pusher:subscription_error"
    assert data_of(m)["status"] == 401


def test_authenticate_presence_used_by_raw_subscribers(server, subs):
    a, b = subs(), subs()
    m = presence_subscribe(server, a, "presence-py", "py-alice", {"name": "Alice"})
    assert m["event"] == "pusher_internal:subscription_succeeded", m
    assert data_of(m) == {"presence": {"ids": ["py-alice"], "hash": {"py-alice": {"name": "Alice"}}, "count": 1}}
    m = presence_subscribe(server, b, "presence-py", "py-bob", {"name": "Bob"})
    assert data_of(m)["presence"]["count"] == 2
    added = a.event("pusher_internal:member_added", "presence-py")
    assert data_of(added) == {"user_id": "py-bob", "user_info": {"name": "Bob"}}


def test_authenticate_user_signin(server, subs):
    sub = subs()
    auth = server.sdk().authenticate_user(sub.socket_id, {"id": "py-user", "name": "P"})
    sub.send({"event": "pusher:signin", "data": auth})
    m = sub.event("pusher:signin_success")
    assert json.loads(data_of(m)["user_data"]) == {"id": "py-user", "name": "P"}


def test_channels_info(server, subs):
    a, b = subs(), subs()
    presence_subscribe(server, a, "presence-py-list", "u1", {})
    presence_subscribe(server, b, "presence-py-list", "u2", {})
    a.subscribe_ok("py-list-public")
    b.subscribe_ok("py-list-public")

    everything = server.sdk().channels_info()
    assert "presence-py-list" in everything["channels"]
    assert "py-list-public" in everything["channels"]

    pres = server.sdk().channels_info(prefix_filter="presence-py-list", attributes=["user_count"])
    assert pres == {"channels": {"presence-py-list": {"user_count": 2}}}

    subs_count = server.sdk().channels_info(prefix_filter="py-list-", attributes=["subscription_count"])
    assert subs_count == {"channels": {"py-list-public": {"subscription_count": 2}}}

    with pytest.raises(PusherBadRequest):
        server.sdk().channels_info(attributes=["user_count"])


def test_channel_info(server, subs):
    sdk = server.sdk()
    assert sdk.channel_info("py-nobody-here")["occupied"] is False
    a = subs()
    presence_subscribe(server, a, "presence-py-one", "solo", {})
    info = sdk.channel_info("presence-py-one", ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 1, "subscription_count": 1}
    a.subscribe_ok("py-one-public")
    assert sdk.channel_info("py-one-public") == {"occupied": True}


def test_users_info(server, subs):
    a, b, b2 = subs(), subs(), subs()
    presence_subscribe(server, a, "presence-py-users", "ua", {"x": 1})
    presence_subscribe(server, b, "presence-py-users", "ub", {})
    presence_subscribe(server, b2, "presence-py-users", "ub", {})
    users = server.sdk().users_info("presence-py-users")
    assert sorted(u["id"] for u in users["users"]) == ["ua", "ub"]
    with pytest.raises(PusherBadRequest):
        server.sdk().users_info("py-not-presence")


def test_sdk_gets_send_body_md5_and_are_accepted(server):
    client = server.sdk()._pusher_client
    req = client.channels_info.make_request(prefix_filter="py-", attributes=["subscription_count"])
    assert req.method == "GET"
    assert req.query_params["body_md5"] == "d41d8cd98f00b204e9800998ecf8427e"
    with urllib.request.urlopen(req.url, timeout=5) as r:
        assert r.status == 200
        assert "channels" in json.loads(r.read())
    # and through the SDK itself
    assert "channels" in server.sdk().channels_info()
    assert "occupied" in server.sdk().channel_info("py-anything")


def test_wrong_secret_is_rejected_with_401(server):
    bad = server.sdk(secret="py-wrong-secret-000000")
    with pytest.raises(PusherBadAuth):
        bad.trigger("py-x", "e", {})
    with pytest.raises(PusherBadAuth):
        bad.channels_info()


def test_encrypted_channel_trigger_is_relayed_as_ciphertext(server, subs):
    sub = subs()
    auth = server.sdk().authenticate(channel="private-encrypted-py", socket_id=sub.socket_id)
    assert "shared_secret" in auth
    sub.subscribe_ok("private-encrypted-py", auth=auth["auth"])
    server.sdk().trigger("private-encrypted-py", "sealed", {"k": "v"})
    d = data_of(sub.event("sealed", "private-encrypted-py"))
    assert set(d) >= {"nonce", "ciphertext"}
    assert "k" not in d


def test_send_to_user_reaches_the_signed_in_socket(server, subs):
    sub, other = subs(), subs()
    for s, uid in ((sub, "py-target"), (other, "py-other")):
        auth = server.sdk().authenticate_user(s.socket_id, {"id": uid})
        s.send({"event": "pusher:signin", "data": auth})
        s.event("pusher:signin_success")
        s.subscribe_ok(f"#server-to-user-{uid}")
    assert server.sdk().send_to_user("py-target", "notice", {"hi": 1}) == {}
    assert data_of(sub.event("notice", "#server-to-user-py-target")) == {"hi": 1}
    assert [m for m in other.drain(0.5) if m.get("event") == "notice"] == []
