"""The orchestrator on the in-process simulated participant (virtual time): the whole loop, and its faults."""

import asyncio
import csv
import json
import math

import numpy as np
import pytest
import pyxdf

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import demo_profile, named_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.estimation.interval import IntervalEstimator
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.recording.session import ESTIMATES_CSV_COLUMNS
from closedloop.report import build_report, load_session
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.proportional import ProportionalAssist
from experiments.demo import demo_phases

LIMITS = SafetyLimits(
    max_amplitude_ma=25.0,
    max_pulse_width_us=400.0,
    max_charge_uc=10.0,
    max_step_ma=3.0,
    max_rate_hz=60.0,
    allowed_channels=(0,),
)


def _session(tmp_path, controller, duration=20.0, phases=None, limits=LIMITS, profile=None, source=None, **cfg):
    sim = SimulatedParticipant(MuscleParams(seed=2), profile or demo_profile(), duration_s=duration + 1.0)
    src = source(sim) if source else sim
    safety = SafetyLayer(limits, sim.stimulator)
    config = SessionConfig(stim_hz=25.0, phases=phases or demo_phases(duration), **cfg)
    s = Session(
        src,
        IntervalEstimator,
        controller,
        safety,
        config,
        tmp_path,
        aux_sources={"Force": sim.force, "GroundTruth": sim.truth},
    )
    return s, sim


def test_assisted_contraction_end_to_end(tmp_path):
    session, sim = _session(tmp_path, ProportionalAssist(gain_ma_per_pct=0.5, deadband_pct=5.0, offset_ma=10.0))
    res = asyncio.run(session.run())
    assert res.status == "completed", res.error
    assert res.n_intervals == pytest.approx(20.0 * 25, abs=2)

    # what physically reached the participant respects every limit, pulse by pulse
    applied = sim.applied_pulses
    assert len(applied) == res.n_pulses > 150
    amps = np.array([p.amplitude_ma for p in applied])
    assert amps.max() <= LIMITS.max_amplitude_ma
    assert all(p.charge_uc <= LIMITS.max_charge_uc + 1e-9 for p in applied)
    assert np.all(np.diff(np.r_[0.0, amps]) <= LIMITS.max_step_ma + 1e-9)
    assert _ramps_restart_from_zero(applied)
    # no stimulation during rest and calibration (first 5 s)
    assert min(p.t for p in applied) >= 5.0

    # MVC calibration: the participant contracted at drive 0.95 of a 400 uV (channel 0) maximum
    assert res.mvc_uv[0] == pytest.approx(0.95 * 400.0, rel=0.15)

    # the recording: pyxdf reads the streams by name, with channel labels
    streams, _ = pyxdf.load_xdf(str(tmp_path / "session.xdf"))
    by_name = {s["info"]["name"][0]: s for s in streams}
    assert set(by_name) == {"EMG", "Pulses", "Estimates", "Force", "GroundTruth", "Events"}
    labels = {n: [c["label"][0] for c in s["info"]["desc"][0]["channels"][0]["channel"]] for n, s in by_name.items()}
    assert labels["EMG"] == ["EMG1", "EMG2", "EMG3", "EMG4"]
    assert labels["Pulses"][:3] == ["channel", "amplitude_ma", "pulse_width_us"]
    assert {"effort", "mwave_ptp"} <= set(labels["Estimates"])
    assert {"drive", "fatigue"} <= set(labels["GroundTruth"])
    np.testing.assert_allclose(by_name["Pulses"]["time_series"][:, 1], amps)
    assert by_name["EMG"]["time_series"].shape == (sim.muscle.n_generated, 4)  # every sample recorded

    # estimates.csv: one row per channel per interval
    with open(tmp_path / "estimates.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ESTIMATES_CSV_COLUMNS
    assert len(rows) == 4 * res.n_intervals
    stim_rows = [r for r in rows if r["amplitude_ma"] and r["channel"] == "EMG1"]
    assert len(stim_rows) == res.n_pulses
    assert all(r["mwave_ptp_uv"] for r in stim_rows)

    # summary.json contract
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["pulses"] == res.n_pulses and s["limits"]["max_amplitude_ma"] == 25.0
    assert set(s["decision_latency_ms"]) >= {"median", "p99", "max"}
    assert s["deadline_misses"] == 0
    assert s["safety_events"][-1]["reason"] == "session ended" and "t" in s["safety_events"][-1]

    # the effort estimate follows the participant's true drive (ground truth, not our own numbers)
    metrics = build_report(tmp_path)
    assert metrics["effort_drive_r"] > 0.9
    assert metrics["mwave_rel_error_median"] < 0.15
    assert (tmp_path / "report.html").exists() and (tmp_path / "overview.png").stat().st_size > 10_000


def _ramps_restart_from_zero(applied):
    """Between contractions the ramp restarts from 0 mA: check each step against the previous pulse, or
    against 0 after a pause longer than ramp_reset_s (a deliberate stop restarts it too: a stricter case)."""
    prev_t, prev_a = -1.0, 0.0
    for p in applied:
        base = prev_a if p.t - prev_t <= LIMITS.ramp_reset_s else 0.0
        if p.amplitude_ma > base + LIMITS.max_step_ma + 1e-9:
            return False
        prev_t, prev_a = p.t, p.amplitude_ma
    return True


class Raises:
    def __init__(self, after, value=None):
        self.after, self.value, self.n = after, value, 0

    def step(self, est, ctx=None):
        self.n += 1
        if self.n > self.after:
            if self.value is None:
                raise RuntimeError("controller bug")
            return self.value
        return 12.0

    def reset(self):
        self.n = 0


@pytest.mark.parametrize(
    "value, reason",
    [(None, "controller raised RuntimeError"), (math.nan, "controller returned"), (math.inf, "controller returned")],
)
def test_controller_failure_turns_output_off(tmp_path, value, reason):
    phases = (Phase("go", 10.0, "control"),)
    session, sim = _session(
        tmp_path, Raises(after=40, value=value), phases=phases, profile=named_profile("constant:0.3")
    )
    res = asyncio.run(session.run())
    assert res.status == "faulted" and reason in res.error
    assert sim.stimulator.stopped
    assert len(sim.applied_pulses) == 40  # the pulses before the fault, none after
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "faulted"
    off = [e for e in s["safety_events"] if e["kind"] == "output_off"]
    assert reason in off[0]["reason"]
    t_fault = off[0]["t"]
    assert max(p.t for p in sim.applied_pulses) < t_fault
    # the reason is in the recording too
    events = {s["info"]["name"][0]: s for s in pyxdf.load_xdf(str(tmp_path / "session.xdf"))[0]}["Events"]
    texts = [row[0] for row in events["time_series"]]
    assert any(t.startswith("output_off: ") and reason in t for t in texts)


class Injecting:
    """Wraps a source and corrupts it: NaN samples, a changed channel count, or a wrong clock."""

    def __init__(self, inner, mode, at=200):
        self.inner, self.mode, self.at, self.k = inner, mode, at, 0
        self.clock = inner.clock
        self.info = inner.info

    async def __aenter__(self):
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.inner.__aexit__(*exc)

    def __aiter__(self):
        return self

    async def __anext__(self):
        from closedloop.types import Chunk

        c = await self.inner.__anext__()
        self.k += 1
        x, ts = c.samples, c.timestamps
        if self.mode == "rate":  # timestamps say 2048 Hz is really ~1000 Hz
            ts = ts * 2.0
        elif self.k >= self.at and self.mode == "nan":
            x = x.copy()
            x[3, 1] = np.nan
        elif self.k >= self.at and self.mode == "channels":
            x = x[:, :3]
        return Chunk(x, ts, c.info, c.t_arrival)


@pytest.mark.parametrize(
    "mode, error",
    [
        ("nan", "BadSamples: 1 non-finite EMG samples (NaN/inf) in channel(s) EMG2"),
        ("channels", "StreamMismatch: EMG chunk has shape (8, 3)"),
        ("rate", "StreamMismatch: EMG stream delivers"),
    ],
)
def test_bad_input_stops_the_session_with_a_clear_error_and_no_pulse(tmp_path, mode, error):
    phases = (Phase("go", 10.0, "control"),)
    session, sim = _session(
        tmp_path,
        ProportionalAssist(offset_ma=8.0),
        phases=phases,
        duration=10.0,
        profile=named_profile("constant:0.4"),
        source=lambda s: Injecting(s, mode),
        limits=SafetyLimits(allowed_channels=(0,)),
        start_time=0.0,
    )
    session.estimator_factory = lambda info: IntervalEstimator(info, _calibrated())
    res = asyncio.run(session.run())
    assert res.status == "faulted"
    assert res.error.startswith(error), res.error
    assert sim.stimulator.stopped
    t_fault = next(e.t for e in session.safety.events if e.kind == "output_off")
    assert all(p.t <= t_fault for p in sim.applied_pulses)
    if mode != "rate":
        assert len(sim.applied_pulses) > 0  # it was stimulating before the fault


def _calibrated():
    from closedloop.estimation.interval import EstimatorConfig

    return EstimatorConfig(mvc_uv=400.0)


def test_nonfinite_skip_policy_withholds_only_the_affected_pulses(tmp_path):
    phases = (Phase("go", 10.0, "control"),)
    session, _sim = _session(
        tmp_path,
        ProportionalAssist(offset_ma=8.0),
        phases=phases,
        duration=10.0,
        profile=named_profile("constant:0.4"),
        source=lambda s: Injecting(s, "nan", at=100),
        limits=SafetyLimits(allowed_channels=(0,)),
        nonfinite_policy="skip",
        start_time=0.0,
    )
    session.estimator_factory = lambda info: IntervalEstimator(info, _calibrated())
    res = asyncio.run(session.run())
    assert res.status == "completed"
    data = load_session(tmp_path)
    est = data["Estimates"]
    bad = ~np.isfinite(est.channel("effort"))
    assert bad.sum() > 50  # every interval after chunk 100 carries a NaN sample
    assert np.all(est.channel("next_amplitude_ma")[bad] == 0.0)  # no pulse decided on unusable data
    assert res.summary["events"][0]["kind"] == "bad_samples"


def test_stop_request_turns_output_off_and_ends_the_session(tmp_path):
    phases = (Phase("go", 30.0, "control"),)
    session, sim = _session(
        tmp_path,
        ProportionalAssist(offset_ma=8.0),
        phases=phases,
        duration=30.0,
        profile=named_profile("constant:0.4"),
        start_time=0.0,
    )
    session.estimator_factory = lambda info: IntervalEstimator(info, _calibrated())

    async def main():
        task = asyncio.create_task(session.run())
        while sim.stimulator.n_delivered < 20:
            await asyncio.sleep(0)
        session.request_stop("e-stop pressed")
        n_at_stop = sim.stimulator.n_delivered
        return await task, n_at_stop

    res, n_at_stop = asyncio.run(main())
    assert res.status == "stopped" and res.error == "e-stop pressed"
    assert sim.stimulator.stopped and sim.stimulator.n_delivered == n_at_stop == 20
    off = [e for e in session.safety.events if e.kind == "output_off"]
    assert off[0].reason == "e-stop pressed"


class _Watcher:
    """An observer that starts a waiting session after some intervals and changes a controller parameter."""

    def __init__(self):
        self.calls: list[str] = []
        self.session = None
        self.n = 0
        self.t_start = None
        self.changed = None

    def on_waiting(self):
        self.calls.append("waiting")

    def on_start(self, t):
        self.calls.append("start")
        self.t_start = t

    def on_interval(self, t_rel, phase, est, amp):
        self.n += 1
        if self.n == 50:
            assert self.session.start_threadsafe()
        if self.n == 60:
            assert not self.session.start_threadsafe()  # a second start is refused once begun
        if self.n == 150:
            self.changed = self.session.call_threadsafe(lambda: setattr(self.session.controller, "amplitude_ma", 7.0))

    def on_event(self, ev):
        self.calls.append(f"event:{ev['kind']}")

    def on_end(self, res):
        self.calls.append(f"end:{res.status}")


class _Broken:
    def on_interval(self, *args):
        raise RuntimeError("observer bug")


def test_wait_for_start_observers_and_changes_between_chunks(tmp_path):
    """Phases begin only on start_threadsafe(); observers see the session's life; a parameter changed through
    call_threadsafe applies from the next decision on; a failing observer is dropped, the session goes on."""
    from controllers import Constant

    sim = SimulatedParticipant(MuscleParams(seed=3, n_channels=1), named_profile("rest"), duration_s=10.0)
    watcher = _Watcher()
    session = Session(
        sim,
        IntervalEstimator,
        Constant(12.0),
        SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator),
        SessionConfig(stim_hz=25.0, phases=(Phase("go", 8.0, "control"),), nan_tolerance_s=None),
        tmp_path,
        observers=[watcher, _Broken()],
        wait_for_start=True,
    )
    watcher.session = session
    res = asyncio.run(session.run())
    assert res.status == "completed", res.error
    assert watcher.calls.index("waiting") < watcher.calls.index("start") and watcher.calls[-1] == "end:completed"
    assert "event:started" in watcher.calls
    t = np.array([p.t for p in sim.applied_pulses])
    amps = np.array([p.amplitude_ma for p in sim.applied_pulses])
    assert t[0] >= watcher.t_start and watcher.t_start == pytest.approx(50 / 25.0, abs=0.05)
    assert watcher.changed.result() is None
    k = int((amps == 12.0).sum())
    m = int((amps == 7.0).sum())
    assert list(amps) == [5.0, 10.0] + [12.0] * k + [7.0] * m and k > 50 and m > 50  # (ramp limit: 5 mA steps)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["t_start_lsl"] == pytest.approx(watcher.t_start)
    assert any("observer _Broken failed" in k for k in s["estimator_warnings"])


@pytest.mark.parametrize("offset_s", [-0.025, 0.0, 0.015])
def test_controller_time_counts_from_the_phase_first_decision(tmp_path, offset_s):
    """Live, the data's decision grid is offset from the session's time zero by up to a period; a sweep
    scheduled on decision slots must still give every level (the first at the phase's first decision)."""
    from controllers.open_loop import RecruitmentSweep

    sweep = RecruitmentSweep(start_ma=6.0, stop_ma=10.0, step_ma=1.0, every_n_periods=3, direction="up")
    session, sim = _session(
        tmp_path,
        sweep,
        phases=(Phase("sweep", 1.0, "control"),),
        duration=1.0,
        profile=named_profile("rest"),
        limits=SafetyLimits(max_amplitude_ma=20.0, max_step_ma=20.0, max_rate_hz=60.0, allowed_channels=(0,)),
        start_time=offset_s,
    )
    session.estimator_factory = lambda info: IntervalEstimator(info, _calibrated())
    res = asyncio.run(session.run())
    assert res.status == "completed", res.error
    assert [p.amplitude_ma for p in sim.applied_pulses] == [6.0, 7.0, 8.0, 9.0, 10.0]
    t = np.array([p.t for p in sim.applied_pulses])
    chunk_s = 8 / 2048  # a pulse leaves when the chunk that completed its interval has arrived
    np.testing.assert_allclose(np.diff(t), 3 / 25.0, atol=chunk_s)  # every third decision of the 25 Hz grid
    assert t[0] - max(offset_s, 0.0) < 1 / 25.0 + chunk_s  # the first at the phase's first decision


def test_collector_frozen_nests_and_unfreezes_at_the_outermost_end():
    import gc

    from closedloop.pipeline import collector_frozen

    before = [object() for _ in range(10)]
    assert gc.get_freeze_count() == 0
    with collector_frozen():
        frozen = gc.get_freeze_count()
        assert frozen >= len(before)  # what existed is out of the collector's scans
        with collector_frozen():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen  # the inner end does not unfreeze
    assert gc.get_freeze_count() == 0
