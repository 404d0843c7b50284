"""The MQTT bridge against a real mosquitto on 127.0.0.1 (password file and the ACL of docs/mosquitto/acl).

Sessions are real-time sessions of a few seconds on the in-process simulated participant; the peers
(operator, viewer) are aiomqtt clients in threads of their own. Nothing leaves the machine: the broker binds
127.0.0.1 and every client connects there. Skipped when mosquitto is not installed (CI installs it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import aiomqtt
import numpy as np
import pytest
from mqtt_broker import USERS, Broker, free_port, mosquitto_missing

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import named_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.errors import ConfigError
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.mqtt import ENV_PASSWORD, MAX_BUFFERED_EVENTS, MQTTBridge, MQTTConfig
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.fatigue import FatigueCompensation
from controllers.open_loop import Constant

SESSION, OPERATOR, VIEWER = "closedloop-session", "closedloop-operator", "closedloop-viewer"
ESTIMATE_KEYS = {
    "v",
    "t",
    "t_rel",
    "phase",
    "index",
    "effort_pct_mvc",
    "effort_uv",
    "effort_smooth_uv",
    "mwave_ptp_uv",
    "mdf_hz",
    "amplitude_ma",
    "next_amplitude_ma",
}
PULSES_KEYS = {"v", "t", "t_rel", "count", "total", "mean_amplitude_ma", "max_amplitude_ma", "last_amplitude_ma"}
EVENT_KEYS = {"v", "seq", "t", "t_lsl", "t_rel", "kind", "reason"}
FINAL = ("stopped", "estopped", "faulted")


# -- fixtures and helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker():
    missing = mosquitto_missing()
    if missing:
        pytest.skip(missing)
    with Broker(tls=True) as b:
        yield b


@pytest.fixture
def prefix():
    return f"cltest/{uuid.uuid4().hex[:10]}"


class Msg(NamedTuple):
    t: float  # time.monotonic() at reception
    topic: str
    raw: bytes
    data: object  # parsed JSON, or None
    retain: bool


class Peer:
    """An MQTT client in a thread of its own: subscribes, collects every message, publishes; reconnects."""

    def __init__(self, port, user, topics, password=None, tls_ca=None, reconnect=False, connect_timeout=10.0):
        self.port, self.user, self.topics = port, user, list(topics)
        self.password = USERS.get(user, "") if password is None else password
        self.tls_ca, self.reconnect = tls_ca, reconnect
        self.msgs: list[Msg] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.connects = 0
        self.error: BaseException | None = None
        self._client = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        if not self.connected.wait(connect_timeout):
            self.close()
            raise RuntimeError(f"{user} could not connect: {self.error!r}")

    async def _run(self):
        while True:
            try:
                ctx = ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, username=self.user, password=self.password, tls_context=ctx
                ) as c:
                    for topic in self.topics:
                        await c.subscribe(topic, qos=1)
                    self._client = c
                    self.connects += 1
                    self.connected.set()
                    async for m in c.messages:
                        raw = bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else b""
                        try:
                            data = json.loads(raw)
                        except ValueError:
                            data = None
                        with self.cond:
                            self.msgs.append(Msg(time.monotonic(), str(m.topic), raw, data, bool(m.retain)))
                            self.cond.notify_all()
            except aiomqtt.MqttError as exc:
                self.error = exc
                self.connected.clear()
                if not self.reconnect:
                    return
                await asyncio.sleep(0.1)

    def publish(self, topic, payload, qos=1, retain=False):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        fut = asyncio.run_coroutine_threadsafe(self._client.publish(topic, payload, qos=qos, retain=retain), self._loop)
        fut.result(10.0)

    def wait(self, pred, timeout=15.0, start=0, what="message"):
        """The first message from index ``start`` on that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.msgs):
                    m = self.msgs[i]
                    i += 1
                    try:
                        if pred(m):
                            return m
                    except (KeyError, TypeError, AttributeError):
                        pass
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = [(m.topic, m.raw[:120]) for m in self.msgs[-8:]]
                    raise AssertionError(f"no {what} within {timeout} s; last messages: {topics}")
                self.cond.wait(left)

    def of(self, topic):
        with self.cond:
            return [m for m in self.msgs if m.topic == topic]

    def close(self):
        async def stop():
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_default_executor()

        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10.0)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def status_is(prefix, *statuses, session_id=None):
    def pred(m):
        ok = m.topic == f"{prefix}/status" and m.data["status"] in statuses
        return ok and (session_id is None or m.data["session"].get("id") == session_id)

    return pred


def command(peer, prefix, name, body=None, raw=None, timeout=15.0):
    """Send a command and return its reply (the first reply to ``name`` with the body's id after sending)."""
    start = len(peer.msgs)
    cid = body.get("id") if isinstance(body, dict) else None
    peer.publish(f"{prefix}/cmd/{name}", raw if raw is not None else json.dumps(body or {}))

    def pred(m):
        return m.topic == f"{prefix}/reply" and m.data["cmd"] == name and m.data["id"] == cid

    return peer.wait(pred, timeout=timeout, start=start, what=f"reply to {name} {cid!r}").data


def make_session(out, seconds, controller=None, wait_for_start=False, **kw):
    """A real-time session on the simulated participant (25 pulses/s; the source outlasts a waiting start)."""
    sim = SimulatedParticipant(
        MuscleParams(seed=6), named_profile("constant:0.3"), realtime=True, duration_s=seconds + 30
    )
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0)),
        controller if controller is not None else Constant(5.0),
        SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator),
        SessionConfig(stim_hz=25.0, phases=(Phase("go", seconds, "control"),)),
        out,
        wait_for_start=wait_for_start,
        **kw,
    )
    return session, sim


class Running:
    """A session running in a thread of its own (as the CLI runs it beside the bridge's thread)."""

    def __init__(self, session):
        self.session = session
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.result = asyncio.run(self.session.run())

    def join(self, timeout=20.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the session did not end"
        return self.result


def assert_stopped_by(res, reason):
    """The session ended because of ``reason`` (a stop_threadsafe from the bridge), which turned output off
    first; also when the stop met a pulse being delivered in the session's thread."""
    assert res.summary["output_off"]["reason"] == reason
    assert (res.status, res.error) == ("stopped", reason)


def bridge_for(url, prefix, **kw):
    return MQTTBridge(MQTTConfig.from_url(url, prefix=prefix, **kw))


def amplitudes(sim, after=-math.inf, n=0, timeout=10.0):
    """Amplitudes (mA) of the pulses the participant received after ``after`` (monotonic clock); waits for
    at least ``n`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        amps = np.array([p.amplitude_ma for p in list(sim.applied_pulses) if p.t > after])
        if len(amps) >= n or time.monotonic() > deadline:
            return amps
        time.sleep(0.02)


# -- configuration (no broker) ------------------------------------------------------------------------------
def test_config_urls_and_defaults(monkeypatch):
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    c = MQTTConfig.from_url("mqtt://alice:p%40ss@127.0.0.1")
    assert (c.host, c.port, c.tls, c.username, c.password) == ("127.0.0.1", 1883, False, "alice", "p@ss")
    assert (c.prefix, c.telemetry_hz, c.keepalive_s, c.settable) == ("closedloop", 10.0, 5.0, {})
    assert "p@ss" not in repr(c) and "p%40ss" not in repr(c) and "***" in repr(c)
    assert c.redacted_url == "mqtt://alice:***@127.0.0.1"
    t = MQTTConfig.from_url("mqtts://broker.lab:9000", prefix="lab2/rig1")
    assert (t.port, t.tls, t.username, t.password, t.topic("cmd", "+")) == (9000, True, None, None, "lab2/rig1/cmd/+")
    assert MQTTConfig.from_url("MQTTS://h").port == 8883
    # the password from the environment when the URL has a user but no password; the URL's wins
    monkeypatch.setenv(ENV_PASSWORD, "from-env")
    assert MQTTConfig.from_url("mqtt://bob@h").password == "from-env"
    assert MQTTConfig.from_url("mqtt://bob:url@h").password == "url"
    assert MQTTConfig.from_url("mqtt://h").password is None
    # what the protocol loader does: replace() with bounds, validated again
    r = dataclasses.replace(c, settable={"gain": [0, 1], "controller.inner.gain_ma_per_pct": (0.0, 2)})
    assert r.settable == {"gain": (0.0, 1.0), "controller.inner.gain_ma_per_pct": (0.0, 2.0)}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"url": "http://h"}, "scheme http:// not supported"),
        ({"url": "127.0.0.1:1883"}, "not supported"),
        ({"url": "mqtt://"}, "no host"),
        ({"url": "mqtt://h:99999"}, "out of range"),
        ({"url": "mqtt://h:0"}, "out of range"),
        ({"url": "mqtt://h:abc"}, "mqtt://"),
        ({"url": "mqtt://h:"}, "empty port"),
        ({"url": "mqtt://h/closedloop"}, "nothing may follow"),
        ({"url": "mqtt://:secret@h"}, "password without a user"),
        ({"url": ""}, "must be a text string"),
        ({"prefix": "a/+/b"}, "must not contain '+'"),
        ({"prefix": "a/#"}, "'#'"),
        ({"prefix": "/a"}, "leading"),
        ({"prefix": "a//b"}, "doubled"),
        ({"prefix": "$SYS/x"}, "reserved"),
        ({"prefix": ""}, "non-empty"),
        ({"telemetry_hz": 0}, "telemetry_hz"),
        ({"telemetry_hz": 51}, "telemetry_hz"),
        ({"telemetry_hz": math.nan}, "telemetry_hz"),
        ({"telemetry_hz": True}, "telemetry_hz"),
        ({"keepalive_s": 0.5}, "keepalive_s"),
        ({"broker_loss_timeout_s": 0}, "broker_loss_timeout_s"),
        ({"stop_on_broker_loss": 1}, "true or false"),
        ({"ca_file": "/etc/hostname"}, "needs a TLS connection"),
        ({"url": "mqtts://h", "ca_file": "/nonexistent/ca.crt"}, "no such file"),
        ({"url": "mqtts://h", "key_file": "/etc/hostname"}, "without cert_file"),
        ({"tls_insecure": True}, "mqtts://"),
        ({"client_id": ""}, "client_id"),
        ({"settable": {"_private": [0, 1]}}, "dotted path"),
        ({"settable": {"a..b": [0, 1]}}, "dotted path"),
        ({"settable": {"gain": [2, 1]}}, "low <= high"),
        ({"settable": {"gain": [0]}}, "[low, high]"),
        ({"settable": {"gain": ["0", 1]}}, "[low, high]"),
        ({"settable": {"gain": [0, math.inf]}}, "[low, high]"),
        ({"settable": [("gain", [0, 1])]}, "must map"),
    ],
)
def test_config_errors_are_clear(kw, message):
    kw = {"url": "mqtt://user:topsecret@127.0.0.1", **kw}
    with pytest.raises(ConfigError, match=None) as err:
        MQTTConfig(**kw)
    assert message in str(err.value)
    assert "topsecret" not in str(err.value)


def test_attach_checks_the_whitelist_against_the_session(tmp_path):
    session, _ = make_session(tmp_path, 1.0, controller=FatigueCompensation(Constant(5.0), max_boost_ma=3.0))
    url = "mqtt://u:p@127.0.0.1:1"
    ok = MQTTBridge(MQTTConfig.from_url(url, settable={"inner.amplitude_ma": [0, 9], "controller.gain_ma": [0, 1]}))
    ok.attach(session)
    assert ok._whitelist.keys() == {"controller.inner.amplitude_ma", "controller.gain_ma"}
    assert session.observers == [ok]  # attach adds the bridge once
    ok.attach(session)
    assert session.observers == [ok]
    for key, message in [
        ("nope", "not a numeric parameter of FatigueCompensation"),
        ("inner", "not a numeric parameter"),
        ("_boost", "dotted path"),
        ("controller.missing.x", "has no 'missing'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            MQTTBridge(MQTTConfig.from_url(url, settable={key: [0, 1]})).attach(session)


def test_observer_methods_are_quick_and_events_bounded(tmp_path):
    """Without a running thread nothing is sent: the slots keep the latest values, the event queue its bound."""
    session, _ = make_session(tmp_path, 1.0)
    b = MQTTBridge(MQTTConfig.from_url("mqtt://u:p@127.0.0.1:1")).attach(session)
    e = SimpleNamespace(
        index=3,
        effort_pct_mvc=20.0,
        effort_uv=80.0,
        effort_smooth_uv=81.0,
        mwave_ptp_uv=400.0,
        amplitude_ma=5.0,
        channel_mdf_hz=np.array([90.0, 85.0]),
    )
    n = 5000
    t0 = time.perf_counter()
    for i in range(n):
        b.on_interval(i * 0.04, "go", e, 5.0)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 100e-6, f"on_interval takes {per_call * 1e6:.1f} us"
    assert b._latest[1] == (n - 1) * 0.04 and b._latest[8] == 90.0
    assert b._pulses[:3] == [n, 5.0 * n, 5.0]
    for i in range(MAX_BUFFERED_EVENTS + 250):
        b.on_event({"t": float(i), "kind": "clamp", "reason": "x"})
    assert len(b._events) == MAX_BUFFERED_EVENTS and b._events_dropped == 250
    assert b._events[0][1]["t"] == 250.0


# -- against the broker -------------------------------------------------------------------------------------
def test_wrong_password_cannot_connect(broker, prefix):
    async def try_connect(user, password):
        async with aiomqtt.Client("127.0.0.1", broker.port, username=user, password=password):
            pass

    for user, password in [(OPERATOR, "wrong"), ("nobody", "x"), (OPERATOR, "")]:
        with pytest.raises(aiomqtt.MqttCodeError, match=r"[Nn]ot authori"):
            asyncio.run(try_connect(user, password))
    b = bridge_for(broker.url(SESSION, password="wrong"), prefix).start()
    try:
        assert not b.wait_connected(1.0)
        assert "authori" in (b.last_error or "")
    finally:
        b.close(timeout_s=1.0)


def test_telemetry_rate_schema_status_and_events(broker, prefix, tmp_path):
    hz, seconds = 4.0, 3.0
    session, _ = make_session(tmp_path, seconds)
    with Peer(broker.port, VIEWER, [f"{prefix}/#"]) as viewer:
        bridge = bridge_for(broker.url(), prefix, telemetry_hz=hz).attach(session).start()
        assert bridge.wait_connected(10.0)
        try:
            res = Running(session).join()
        finally:
            bridge.close()
        assert res.status == "completed", res.error
        final = viewer.wait(status_is(prefix, *FINAL), what="final status").data
    assert final["status"] == "stopped" and final["reason"] == "completed" and final["v"] == 1
    assert final["result"]["status"] == "completed" and final["result"]["n_pulses"] == res.n_pulses
    assert final["session"]["id"] == tmp_path.name and final["session"]["phases"][0]["name"] == "go"
    statuses = [m.data["status"] for m in viewer.of(f"{prefix}/status")]
    assert statuses[-1] == "stopped" and "running" in statuses and "offline" not in statuses
    # estimates: the documented schema, at most hz per second, and flowing
    est = viewer.of(f"{prefix}/telemetry/estimates")
    assert len(est) >= hz * seconds * 0.5, len(est)
    for m in est:
        d = m.data
        assert set(d) == ESTIMATE_KEYS and d["v"] == 1 and d["phase"] in ("go", "waiting")
        assert isinstance(d["index"], int) and isinstance(d["t"], float)
        for k in ESTIMATE_KEYS - {"v", "phase", "index"}:
            assert d[k] is None or isinstance(d[k], (int, float)), (k, d[k])
    assert any(m.data["effort_pct_mvc"] is not None and m.data["amplitude_ma"] == 5.0 for m in est)
    t = np.array([m.t for m in est])
    window = max(int(np.sum((t >= t0) & (t < t0 + 1.0))) for t0 in t)  # unlimited: 25 per second
    assert window <= hz + 2, f"{window} estimates within one second (telemetry_hz = {hz})"
    assert len(est) <= hz * (t[-1] - t[0]) + 2
    indices = [m.data["index"] for m in est]
    assert indices == sorted(indices)
    # pulses: summaries of what was delivered since the previous message
    pulses = [m.data for m in viewer.of(f"{prefix}/telemetry/pulses")]
    assert pulses and all(set(p) == PULSES_KEYS and p["v"] == 1 for p in pulses)
    assert all(p["count"] > 0 and p["mean_amplitude_ma"] == p["max_amplitude_ma"] == 5.0 for p in pulses)
    totals = [p["total"] for p in pulses]
    assert totals == sorted(totals) and totals[-1] <= res.n_pulses
    assert sum(p["count"] for p in pulses) <= res.n_pulses
    pt = np.array([m.t for m in viewer.of(f"{prefix}/telemetry/pulses")])
    assert max(int(np.sum((pt >= t0) & (pt < t0 + 1.0))) for t0 in pt) <= hz + 2
    # events: every session and safety event, in order
    events = [m.data for m in viewer.of(f"{prefix}/events")]
    assert all(set(e) == EVENT_KEYS and e["v"] == 1 for e in events)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert any(e["kind"] == "output_off" and e["reason"] == "session ended" for e in events)
    session_events = [(e["kind"], e["reason"]) for e in res.summary["events"]]  # safety events come on top
    assert session_events == [(e["kind"], e["reason"]) for e in events if (e["kind"], e["reason"]) in session_events]
    # the retained status is what a late subscriber gets first
    with Peer(broker.port, VIEWER, [f"{prefix}/status"]) as late:
        m = late.wait(lambda m: m.topic == f"{prefix}/status", what="retained status")
    assert m.retain and m.data["status"] == "stopped"
    assert not any("observer" in k for k in res.summary["estimator_warnings"])


def test_estop_turns_output_off_and_replies(broker, prefix, tmp_path):
    session, sim = make_session(tmp_path, 10.0)
    with Peer(broker.port, OPERATOR, [f"{prefix}/#"]) as op:
        bridge = bridge_for(broker.url(), prefix).attach(session).start()
        run = Running(session)
        try:
            op.wait(status_is(prefix, "running"), what="status running")
            op.wait(lambda m: m.topic == f"{prefix}/telemetry/pulses", what="pulses")
            t_sent = time.monotonic()
            reply = command(op, prefix, "estop", {"id": "e-1"})
            res = run.join()
        finally:
            bridge.close()
        final = op.wait(status_is(prefix, *FINAL), what="final status").data
    assert reply["ok"] is True and reply["v"] == 1 and reply["result"]["status"] == "estopped"
    assert_stopped_by(res, "e-stop (MQTT)")
    stim = sim.stimulator
    assert stim.stopped and t_sent <= stim.stopped_at < t_sent + 1.0
    assert all(p.t <= stim.stopped_at + 1e-3 for p in sim.applied_pulses)
    assert final["status"] == "estopped" and final["reason"] == "e-stop (MQTT)"


def test_estop_acts_on_a_malformed_payload(broker, prefix, tmp_path):
    """An e-stop is never refused for its syntax: output goes off, the reply says what was ignored."""
    session, sim = make_session(tmp_path, 10.0)
    with Peer(broker.port, OPERATOR, [f"{prefix}/reply", f"{prefix}/status"]) as op:
        bridge = bridge_for(broker.url(), prefix).attach(session).start()
        run = Running(session)
        try:
            op.wait(status_is(prefix, "running"), what="status running")
            reply = command(op, prefix, "estop", raw=b"STOP!")
            res = run.join()
        finally:
            bridge.close()
    assert reply["ok"] is True and "payload ignored" in reply["result"]["warning"]
    assert_stopped_by(res, "e-stop (MQTT)")
    assert sim.stimulator.stopped


class SlowToOpen(SimulatedParticipant):
    """A participant whose stream takes a while to connect (like an LSL resolve)."""

    async def __aenter__(self):
        await asyncio.sleep(1.0)
        return self


def test_estop_while_the_session_opens_its_sources(broker, prefix, tmp_path):
    """Output goes off at once; the session, which could not take the stop yet, ends as soon as it can."""
    sim = SlowToOpen(MuscleParams(seed=6), named_profile("constant:0.3"), realtime=True, duration_s=30)
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0)),
        Constant(5.0),
        SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator),
        SessionConfig(stim_hz=25.0, phases=(Phase("go", 20.0, "control"),)),
        tmp_path,
        wait_for_start=True,
    )
    with Peer(broker.port, OPERATOR, [f"{prefix}/reply", f"{prefix}/status"]) as op:
        bridge = bridge_for(broker.url(), prefix).attach(session).start()
        try:
            assert bridge.wait_connected(10.0)
            run = Running(session)
            op.wait(status_is(prefix, "starting"), what="status starting")
            reply = command(op, prefix, "estop", {"id": 1})
            assert reply["ok"] and session.safety.tripped == "e-stop (MQTT)"
            res = run.join(timeout=10.0)
        finally:
            bridge.close()
        final = op.wait(status_is(prefix, *FINAL), what="final status").data
    assert res.status == "stopped" and res.error == "e-stop (MQTT)" and len(sim.applied_pulses) == 0
    assert final["status"] == "estopped"


def test_start_set_stop_refusals_and_viewer_acl(broker, prefix, tmp_path):
    ctrl = Constant(5.0)
    session, sim = make_session(tmp_path, 60.0, controller=ctrl, wait_for_start=True)
    cfg = {"settable": {"amplitude_ma": [-5.0, 10.0]}, "telemetry_hz": 20.0}
    with (
        Peer(broker.port, OPERATOR, [f"{prefix}/#"]) as op,
        Peer(broker.port, VIEWER, [f"{prefix}/cmd/#", f"{prefix}/reply"]) as viewer,
    ):
        bridge = bridge_for(broker.url(), prefix, **cfg).attach(session).start()
        run = Running(session)
        try:
            waiting = op.wait(status_is(prefix, "waiting"), what="status waiting").data
            assert waiting["session"]["wait_for_start"] is True
            assert waiting["session"]["settable"] == {"controller.amplitude_ma": [-5.0, 10.0]}
            # the viewer may not command: the broker drops its publishes (the session never sees them)
            for name, body in [("start", {}), ("estop", {}), ("set", {"param": "amplitude_ma", "value": 9})]:
                viewer.publish(f"{prefix}/cmd/{name}", body)
            got = command(op, prefix, "get", {"id": "g0"})
            assert got["ok"] and got["result"]["status"] == "waiting"
            assert got["result"]["params"] == {"controller.amplitude_ma": 5.0}
            assert not session.started.is_set() and run.thread.is_alive() and not sim.stimulator.stopped
            assert ctrl.amplitude_ma == 5.0 and len(sim.applied_pulses) == 0
            # start
            reply = command(op, prefix, "start", {"id": 7})
            assert reply["ok"] and reply["id"] == 7
            op.wait(status_is(prefix, "running"), what="status running")
            again = command(op, prefix, "start", {"id": 8})
            assert not again["ok"] and "already begun" in again["error"]
            assert set(amplitudes(sim, n=10)) == {5.0}
            # refusals: an error reply each, and no effect
            refusals = [
                ("set", None, b"{not json", "not JSON"),
                ("set", None, b"[1, 2]", "must be a JSON object"),
                ("set", None, b"\xff\xfe", "not JSON"),
                ("frobnicate", {"id": "u"}, None, "unknown command 'frobnicate'"),
                ("set", {"id": "w", "param": "max_ma", "value": 1}, None, "may not be set"),
                ("set", {"id": "b", "param": "amplitude_ma", "value": 10.5}, None, "out of bounds [-5, 10]"),
                ("set", {"id": "c", "param": "amplitude_ma", "value": -1}, None, "refused by Constant"),
                ("set", {"id": "s", "param": "amplitude_ma", "value": "7"}, None, "must be a finite number"),
                ("set", {"id": "t", "param": "amplitude_ma", "value": True}, None, "must be a finite number"),
                ("set", {"id": "k", "param": "amplitude_ma", "value": 7, "when": 1}, None, "unknown key(s) 'when'"),
                ("set", {"id": "m"}, None, 'needs "param" and "value"'),
                ("set", None, b'{"id": [1], "param": "amplitude_ma", "value": 7}', "must be a string or a number"),
                ("stop", {"id": "x", "force": True}, None, "unknown key(s) 'force'"),
            ]
            for name, body, raw, message in refusals:
                r = command(op, prefix, name, body, raw=raw)
                assert r["ok"] is False and message in r["error"], (name, body, raw, r)
                assert ctrl.amplitude_ma == 5.0 and run.thread.is_alive() and not sim.stimulator.stopped
            assert set(amplitudes(sim, after=time.monotonic(), n=5)) == {5.0}
            # set within bounds: applied between two chunks, then the reply; the next pulses carry it
            reply = command(op, prefix, "set", {"id": "ok", "param": "amplitude_ma", "value": 8})
            t_set = time.monotonic()
            assert reply["ok"], reply
            assert reply["result"] == {
                "applied": {"controller.amplitude_ma": 8.0},
                "previous": {"controller.amplitude_ma": 5.0},
            }
            assert ctrl.amplitude_ma == 8.0 and isinstance(ctrl.amplitude_ma, float)
            op.wait(
                lambda m: m.topic == f"{prefix}/telemetry/pulses" and m.data["max_amplitude_ma"] == 8.0,
                what="pulses at 8 mA",
            )
            assert set(amplitudes(sim, after=t_set + 0.1, n=5)) == {8.0}
            reply = command(op, prefix, "set", {"id": "p", "params": {"controller.amplitude_ma": 6.5}})
            assert reply["ok"] and ctrl.amplitude_ma == 6.5
            op.wait(lambda m: m.topic == f"{prefix}/events" and m.data["kind"] == "set", what="set event")
            # stop
            reply = command(op, prefix, "stop", {"id": "end"})
            assert reply["ok"]
            res = run.join()
        finally:
            bridge.close()
        final = op.wait(status_is(prefix, *FINAL), what="final status").data
        with viewer.cond:
            seen = list(viewer.msgs)
    assert_stopped_by(res, "stop (MQTT)")
    assert sim.stimulator.stopped
    assert final["status"] == "stopped" and final["reason"] == "stop (MQTT)"
    assert seen == [], f"the viewer received {[(m.topic, m.raw) for m in seen]}"
    sets = [e for e in res.summary["events"] if e["kind"] == "set"]
    assert [e["reason"] for e in sets] == [
        "controller.amplitude_ma = 8 (was 5) over MQTT",
        "controller.amplitude_ma = 6.5 (was 8) over MQTT",
    ]


def test_last_will_when_the_session_process_is_killed(broker, prefix, tmp_path):
    child = Path(__file__).with_name("mqtt_session_child.py")
    env = dict(os.environ, **{ENV_PASSWORD: USERS[SESSION]})
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    url = f"mqtt://{SESSION}@127.0.0.1:{broker.port}"  # no password: it comes from the environment
    with Peer(broker.port, VIEWER, [f"{prefix}/status"]) as viewer:
        cmd = [sys.executable, str(child), str(tmp_path), url, prefix]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
            try:
                line = proc.stdout.readline().strip()
                assert line == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
                viewer.wait(status_is(prefix, "running", session_id=tmp_path.name), what="status running")
                proc.send_signal(signal.SIGKILL)
                t_kill = time.monotonic()
                proc.wait(10)
                will = viewer.wait(status_is(prefix, "offline"), timeout=15.0, what="last will").data
            finally:
                if proc.poll() is None:
                    proc.kill()
    assert will["reason"] == "connection lost (last will)" and will["v"] == 1
    assert will["session"]["id"] == tmp_path.name
    assert time.monotonic() - t_kill < 15.0


def test_broker_restart_mid_session(tmp_path, prefix):
    missing = mosquitto_missing()
    if missing:
        pytest.skip(missing)
    seconds = 7.0
    session, sim = make_session(tmp_path, seconds)
    with Broker() as b, Peer(b.port, OPERATOR, [f"{prefix}/#"], reconnect=True) as op:
        bridge = bridge_for(b.url(), prefix, telemetry_hz=10.0).attach(session).start()
        run = Running(session)
        try:
            op.wait(lambda m: m.topic == f"{prefix}/telemetry/estimates", what="estimates")
            b.stop()
            t_down = time.monotonic()
            time.sleep(1.0)
            b.start()
            t_up = time.monotonic()
            assert op.connected.wait(10.0)
            m = op.wait(lambda m: m.topic == f"{prefix}/telemetry/estimates" and m.t > t_up, what="estimates again")
            assert m.t - t_up < 5.0
            op.wait(lambda m: m.topic == f"{prefix}/status" and m.t > t_up, what="status again")
            res = run.join()
        finally:
            bridge.close()
        final = op.wait(status_is(prefix, *FINAL), what="final status").data
    assert res.status == "completed", res.error
    assert final["status"] == "stopped" and final["reason"] == "completed"
    assert bridge.stats["disconnects"] >= 1 and bridge.stats["connects"] >= 2
    t = np.array([p.t for p in sim.applied_pulses])
    assert np.sum((t > t_down) & (t < t_up)) >= 15  # stimulation went on while the broker was away
    kinds = [(e["kind"], e["reason"]) for e in res.summary["events"]]
    assert any(k == "mqtt" and r.startswith("lost the MQTT broker") for k, r in kinds), kinds
    assert any(k == "mqtt" and r.startswith("reconnected") for k, r in kinds), kinds


def test_tls_with_a_self_signed_ca(broker, prefix, tmp_path):
    session, _ = make_session(tmp_path, 1.5)
    with Peer(broker.tls_port, OPERATOR, [f"{prefix}/#"], tls_ca=broker.ca_file) as op:
        bridge = bridge_for(broker.url(tls=True), prefix, ca_file=str(broker.ca_file)).attach(session).start()
        try:
            assert bridge.wait_connected(10.0), bridge.last_error
            res = Running(session).join()
        finally:
            bridge.close()
        op.wait(lambda m: m.topic == f"{prefix}/telemetry/estimates", what="estimates over TLS")
        final = op.wait(status_is(prefix, *FINAL), what="final status").data
    assert res.status == "completed" and final["status"] == "stopped"
    # without the CA the broker's certificate is not trusted: no connection
    b = bridge_for(broker.url(tls=True), prefix).start()
    try:
        assert not b.wait_connected(1.0)
        assert "CERTIFICATE_VERIFY_FAILED" in (b.last_error or "")
    finally:
        b.close(timeout_s=0.5)


def test_no_broker_the_session_goes_on(tmp_path, prefix):
    port = free_port()  # nothing listens there
    session, _ = make_session(tmp_path, 1.5)
    bridge = bridge_for(f"mqtt://{SESSION}:x@127.0.0.1:{port}", prefix).attach(session).start()
    res = Running(session).join()
    t0 = time.monotonic()
    bridge.close(timeout_s=1.0)
    assert time.monotonic() - t0 < 4.0  # bounded, broker or not
    assert res.status == "completed", res.error
    assert not bridge.connected and bridge.stats["connection_failures"] >= 2


def test_stop_on_broker_loss(tmp_path, prefix):
    port = free_port()
    session, sim = make_session(tmp_path, 20.0)
    cfg = {"stop_on_broker_loss": True, "broker_loss_timeout_s": 0.5}
    bridge = bridge_for(f"mqtt://{SESSION}:x@127.0.0.1:{port}", prefix, **cfg).attach(session).start()
    t0 = time.monotonic()
    try:
        res = Running(session).join(timeout=10.0)
    finally:
        bridge.close(timeout_s=0.5)
    assert res.status == "faulted" and "unreachable" in res.error and "stop_on_broker_loss" in res.error
    assert sim.stimulator.stopped and sim.stimulator.stopped_at - t0 < 5.0


def test_closedloop_run_with_mqtt_from_the_command_line(broker, prefix, tmp_path):
    """`closedloop run P.toml --simulate --mqtt URL --wait-start`: the phases begin on the operator's start, a
    whitelisted parameter set over MQTT changes the pulses, telemetry arrives, summary.json holds no password."""
    proto = tmp_path / "p.toml"
    proto.write_text(
        f"""
[controller]
type = "constant"
amplitude_ma = 6.0
[[phases]]
name = "go"
duration_s = 4.0
[safety]
allowed_channels = [0]
[mqtt]
prefix = "{prefix}"
[mqtt.settable]
amplitude_ma = [0.0, 12.0]
[simulation]
channels = 1
"""
    )
    out = tmp_path / "out"
    with Peer(broker.port, "closedloop-operator", [f"{prefix}/#"]) as op:
        proc = subprocess.Popen(
            [sys.executable, "-m", "closedloop", "run", str(proto), "--simulate", "--quiet", "--wait-start",
             "--mqtt", broker.url(), "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            op.wait(status_is(prefix, "waiting"), timeout=30)
            assert command(op, prefix, "start", {"id": "s"})["ok"]
            op.wait(lambda m: m.topic == f"{prefix}/telemetry/pulses" and m.data["count"] > 0, timeout=15)
            bad = command(op, prefix, "set", {"id": "b", "param": "amplitude_ma", "value": 30.0})
            assert not bad["ok"] and "amplitude_ma" in bad["error"]
            assert command(op, prefix, "set", {"id": "g", "param": "amplitude_ma", "value": 9.0})["ok"]
            stdout, stderr = proc.communicate(timeout=60)
            assert "closedloop run" in stdout
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stderr
        final = op.wait(status_is(prefix, "stopped"), timeout=15).data
        assert final["reason"] == "completed"
    from closedloop.report import load_session

    amps = load_session(out)["Pulses"].channel("amplitude_ma")
    # the ramp limit's 5-mA first step, 6 mA until the set arrived, 9 mA after it, to the end
    assert set(np.unique(amps)) == {5.0, 6.0, 9.0} and amps[0] == 5.0 and np.all(np.diff(amps) >= 0)
    assert (amps == 9.0).sum() > 25
    text = (out / "summary.json").read_text()
    assert "operator-secret" not in text and "session-secret" not in text and "***" in text
