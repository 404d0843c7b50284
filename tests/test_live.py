"""The orchestrator over real LSL: the simulated participant as an LSL device, the session as its controller."""

import asyncio
import threading
import time
import uuid

import pytest

from acquisition.lsl import LSLSource
from acquisition.simulator.device import SimulatedDevice
from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import named_profile
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.report import load_session
from closedloop.safety import SafetyLayer, SafetyLimits
from closedloop.stimulators import LSLStimulator
from controllers.proportional import ProportionalAssist

pytestmark = pytest.mark.lsl


class RaisesAfter:
    def __init__(self, n):
        self.n, self.calls = n, 0

    def step(self, est, ctx=None):
        self.calls += 1
        if self.calls > self.n:
            raise ZeroDivisionError("boom")
        return 15.0

    def reset(self):
        self.calls = 0


def _live(tmp_path, controller, seconds=6.0, stall_timeout_s=1.0):
    tag = uuid.uuid4().hex[:8]
    stim = LSLStimulator(name=f"test-stim-{tag}", source_id=f"test-stim-{tag}", wait_for_consumer_s=10.0)
    dev = SimulatedDevice(
        MuscleParams(seed=4),
        named_profile("constant:0.4"),
        prefix=f"test-{tag}",
        source_id=f"test-sim-{tag}",
        command_source_id=stim.source_id,
        duration_s=seconds + 10,
    )
    thread = threading.Thread(target=dev.run, daemon=True)
    thread.start()
    src = LSLSource(
        source_id=f"test-sim-{tag}-emg",
        expected_channels=4,
        expected_rate_hz=2048.0,
        stall_timeout_s=stall_timeout_s,
        resolve_timeout_s=10.0,
    )
    safety = SafetyLayer(
        SafetyLimits(max_amplitude_ma=30.0, max_step_ma=50.0, max_rate_hz=60.0, allowed_channels=(0,)), stim
    )
    session = Session(
        src,
        lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0)),
        controller,
        safety,
        SessionConfig(stim_hz=25.0, phases=(Phase("go", seconds, "control"),)),
        tmp_path,
    )
    return session, dev, thread


def test_live_session_delivers_pulses_that_reach_the_participant(tmp_path):
    session, dev, thread = _live(tmp_path, ProportionalAssist(gain_ma_per_pct=0.3, offset_ma=10.0), seconds=4.0)
    res = asyncio.run(session.run())
    dev.stop()
    thread.join(5)
    assert res.status == "completed", res.error
    assert res.n_pulses > 80  # 25 Hz for ~4 s, all intervals above the deadband
    assert dev.n_pulses == res.n_pulses  # every delivered pulse arrived at the participant
    # and (nearly all) landed on the sample of their delivery time: the device runs in a thread of this process,
    # so now and then the GIL delays a command past the block it belonged to (it is then applied one block late)
    assert dev.n_late <= max(2, 0.05 * res.n_pulses)
    lat = res.summary["decision_latency_ms"]
    assert lat["n"] == res.n_pulses and lat["median"] < 5.0
    # the M-wave appears in the EMG where the pulse was delivered: every pulse interval measured one
    est = load_session(tmp_path)["Estimates"]
    ptp = est.channel("mwave_ptp")
    assert (ptp[est.channel("amplitude_ma") > 0] > 1000.0).mean() > 0.95


def test_live_controller_exception_turns_output_off(tmp_path):
    session, dev, thread = _live(tmp_path, RaisesAfter(30), seconds=6.0)
    res = asyncio.run(session.run())
    time.sleep(0.3)  # let any in-flight command reach the device
    dev.stop()
    thread.join(5)
    assert res.status == "faulted" and "controller raised ZeroDivisionError: boom" in res.error
    assert res.n_pulses == 30 and dev.n_pulses == 30  # nothing after the fault
    off = [e for e in res.summary["safety_events"] if e["kind"] == "output_off"]
    assert "controller raised" in off[0]["reason"]


def test_live_stream_that_stops_is_reported_and_output_goes_off(tmp_path):
    session, dev, thread = _live(tmp_path, ProportionalAssist(offset_ma=10.0), seconds=20.0, stall_timeout_s=0.3)

    def stop_device_later():
        time.sleep(2.0)
        dev.stop()

    threading.Thread(target=stop_device_later, daemon=True).start()
    t0 = time.monotonic()
    res = asyncio.run(session.run())
    assert time.monotonic() - t0 < 10.0
    thread.join(5)
    assert res.status == "faulted" and "StreamLost" in res.error
    off = [e for e in res.summary["safety_events"] if e["kind"] == "output_off"]
    assert "StreamLost" in off[0]["reason"]
    emg = load_session(tmp_path)["EMG"]
    # output went off within the stall timeout (+ scheduling slack) of the last sample received
    assert off[0]["t"] - emg.timestamps[-1] < 0.3 + 0.2
