"""E-stop latency over MQTT on loopback: from an operator's publish to the stimulator's stop().

    python bench/estop_mqtt.py [--trials N] [--max-seconds S] [--seed K] [--no-tcp-nodelay]

Starts mosquitto on 127.0.0.1 (a free port; password file and the ACL of docs/mosquitto/acl, as the tests
do). Each trial runs a real-time session (simulated participant, 25 pulses/s) with the MQTT bridge in a
thread of its own, waits a random 0.3-0.8 s after the phases begin, then an operator client (another
thread) records ``time.monotonic()`` just before publishing ``cmd/estop`` (QoS 1); the latency is the
stimulator's ``stopped_at`` (time.monotonic() when output went off) minus that time. The reply's arrival is
timed too. Baseline in the same run: a raw aiomqtt QoS-0 publish -> receive round trip between two clients
of one event loop through the same broker. Prints median, p90, max and n. ``--no-tcp-nodelay`` runs the
broker without ``set_tcp_nodelay true`` (mosquitto's default), to show what Nagle's algorithm costs. Nothing
leaves the machine; the number of trials and the total time are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiomqtt
import numpy as np

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import named_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.mqtt import MQTTBridge, MQTTConfig
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.open_loop import Constant

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mqtt_broker import USERS, Broker, mosquitto_missing

OPERATOR = "closedloop-operator"


def stats_ms(values_s: list[float]) -> str:
    a = np.asarray(values_s) * 1e3
    return f"median {np.median(a):.2f} ms, p90 {np.percentile(a, 90):.2f} ms, max {a.max():.2f} ms, n {a.size}"


async def baseline(port: int, n: int = 300) -> list[float]:
    """Raw aiomqtt QoS-0 publish -> receive through the broker (two clients, one loop)."""
    out = []
    pw = USERS[OPERATOR]
    async with (
        aiomqtt.Client("127.0.0.1", port, username=OPERATOR, password=pw) as sub,
        aiomqtt.Client("127.0.0.1", port, username=OPERATOR, password=pw) as pub,
    ):
        await sub.subscribe("cltest/bench/cmd/ping", qos=0)
        messages = sub.messages
        for i in range(n + 20):
            t0 = time.monotonic()
            await pub.publish("cltest/bench/cmd/ping", str(i).encode(), qos=0)
            await asyncio.wait_for(messages.__anext__(), 5.0)
            if i >= 20:  # warm-up
                out.append(time.monotonic() - t0)
    return out


async def trial(
    op: aiomqtt.Client, replies: asyncio.Queue, broker: Broker, out: Path, rng: random.Random
) -> tuple | None:
    """One session and one e-stop: (output-off latency s, reply latency s, session status), or None when the
    session ended by itself before the e-stop."""
    prefix = "cltest/bench"
    sim = SimulatedParticipant(MuscleParams(seed=6), named_profile("constant:0.3"), realtime=True, duration_s=20)
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0)),
        Constant(5.0),
        SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator),
        SessionConfig(stim_hz=25.0, phases=(Phase("go", 10.0, "control"),)),
        out,
    )
    bridge = MQTTBridge(MQTTConfig.from_url(broker.url(), prefix=prefix)).attach(session).start()
    if not bridge.wait_connected(10.0):
        raise RuntimeError(f"the bridge did not connect: {bridge.last_error}")
    result: list = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(session.run())), daemon=True)
    thread.start()
    try:
        while not session.started.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.3, 0.8))
        while not replies.empty():
            replies.get_nowait()
        if not thread.is_alive():  # it ended by itself (a fault on a loaded machine): no e-stop to time
            return None
        t_pub = time.monotonic()
        await op.publish(f"{prefix}/cmd/estop", json.dumps({"id": str(out)}).encode(), qos=1)
        try:
            while True:
                t_reply, reply = await asyncio.wait_for(replies.get(), 10.0)
                if reply.get("id") == str(out):
                    break
        except asyncio.TimeoutError:
            off = (result[0].summary.get("output_off") or {}).get("reason") if result else None
            if off is not None and off != "e-stop (MQTT)":
                return None  # the session ended by itself just before the e-stop; the bridge was gone
            raise RuntimeError(
                f"no reply within 10 s: bridge {dict(bridge.stats)}, last error {bridge.last_error}, connected "
                f"{bridge.connected}, output off {sim.stimulator.stopped}, session alive {thread.is_alive()}, "
                f"result {result[0].status if result else None} {result[0].error if result else None}, events "
                f"{session.events}"
            ) from None
        while thread.is_alive():
            await asyncio.sleep(0.01)
    finally:
        await asyncio.to_thread(thread.join, 15.0)
        await asyncio.to_thread(bridge.close)
    res = result[0]
    off = res.summary.get("output_off") or {}
    if off.get("reason") != "e-stop (MQTT)" or not reply.get("ok"):
        raise RuntimeError(f"unexpected end: {res.status} {res.error}; output off {off}; reply {reply}")
    # an e-stop that meets a pulse being delivered ends the session as "faulted" (pipeline; reported)
    return sim.stimulator.stopped_at - t_pub, t_reply - t_pub, res.status


async def main_async(args: argparse.Namespace, broker: Broker) -> None:
    rng = random.Random(args.seed)
    base = await baseline(broker.port)
    print(f"baseline raw aiomqtt QoS-0 publish -> receive: {stats_ms(base)}")
    off, rep, statuses, skipped = [], [], {}, []
    deadline = time.monotonic() + args.max_seconds
    async with aiomqtt.Client("127.0.0.1", broker.port, username=OPERATOR, password=USERS[OPERATOR]) as op:
        await op.subscribe("cltest/bench/reply", qos=1)
        replies: asyncio.Queue = asyncio.Queue()

        async def collect() -> None:
            async for m in op.messages:
                replies.put_nowait((time.monotonic(), json.loads(m.payload)))

        collector = asyncio.create_task(collect())
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.trials):
                if time.monotonic() > deadline:
                    print(f"time limit ({args.max_seconds:g} s) reached after {i} trials")
                    break
                out = Path(tmp) / f"t{i}"
                got = await trial(op, replies, broker, out, rng)
                if got is None:
                    summary = json.loads((out / "summary.json").read_text())
                    skipped.append(f"{summary['status']}: {summary['error']}")
                    continue
                a, b, status = got
                off.append(a)
                rep.append(b)
                statuses[status] = statuses.get(status, 0) + 1
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    print(f"e-stop publish -> output off (stimulator.stopped_at): {stats_ms(off)}")
    print(f"e-stop publish -> reply received:                    {stats_ms(rep)}")
    print(f"session results: {statuses} (output off by the e-stop in every trial)")
    if skipped:
        print(f"{len(skipped)} trial(s) not counted, the session ended before the e-stop: {skipped}")
    med = float(np.median(off)) * 1e3
    print(f"target median <= 20 ms: {'met' if med <= 20.0 else 'MISSED'} ({med:.2f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30, help="e-stop trials (one session each), default 30")
    ap.add_argument("--max-seconds", type=float, default=180.0, help="stop starting trials after this, default 180")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random e-stop moments")
    ap.add_argument("--no-tcp-nodelay", action="store_true", help="broker without set_tcp_nodelay (its default)")
    args = ap.parse_args()
    missing = mosquitto_missing()
    if missing:
        sys.exit(missing)
    print(f"broker: mosquitto, set_tcp_nodelay {'false' if args.no_tcp_nodelay else 'true'}")
    with Broker(prefix="cltest/+", tcp_nodelay=not args.no_tcp_nodelay) as broker:
        asyncio.run(main_async(args, broker))


if __name__ == "__main__":
    main()
