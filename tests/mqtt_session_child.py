"""A live (real-time) session on the in-process participant with the MQTT bridge, for the Last Will test.

    python tests/mqtt_session_child.py OUT_DIR URL PREFIX

The password comes from CLOSEDLOOP_MQTT_PASSWORD (the URL has none). Prints 'ready' once the bridge is
connected and the phases run, then runs for at most 30 s (the test kills it with SIGKILL long before).
"""

import asyncio
import sys
import threading
from pathlib import Path

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import named_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.mqtt import MQTTBridge, MQTTConfig
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.open_loop import Constant


def main() -> None:
    out, url, prefix = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    sim = SimulatedParticipant(MuscleParams(seed=2), named_profile("constant:0.3"), realtime=True, duration_s=40)
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0)),
        Constant(5.0),
        SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator),
        SessionConfig(stim_hz=25.0, phases=(Phase("go", 30.0, "control"),)),
        out,
    )
    bridge = MQTTBridge(MQTTConfig.from_url(url, prefix=prefix, keepalive_s=2.0)).attach(session).start()

    def announce() -> None:
        if bridge.wait_connected(20.0) and session.started.wait(20.0):
            print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        res = asyncio.run(session.run())
    finally:
        bridge.close()
    print(res.status, res.error, flush=True)


if __name__ == "__main__":
    main()
