"""Protocol files, `closedloop run`/`report`, and what the assessment protocols recover on the simulated participant.

The expectations are the simulated participant's known parameters (its recruitment sigmoid, its voluntary
activation, its true M-wave and median frequency over time), computed by the simulator, not by the analysis.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from closedloop.errors import ConfigError
from experiments.protocol import ProtocolError, load_protocol, parse_protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
PROTOCOLS = sorted(EXPERIMENTS.glob("*.toml"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "closedloop", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def _run(raw: dict, out: Path):
    """Run a protocol given as a dict on the simulated participant in virtual time; return summary.json."""
    from experiments.run import run_protocol

    res = run_protocol(parse_protocol(raw), out, simulate=True, fast=True, progress=False)
    assert res.status == "completed", res.error
    return json.loads((out / "summary.json").read_text())


def _raw(name: str) -> dict:
    return tomllib.loads((EXPERIMENTS / f"{name}.toml").read_text())


# -- the shipped protocol files ----------------------------------------------------------------------------


def test_the_four_required_protocols_exist_and_are_valid():
    names = {p.stem for p in PROTOCOLS}
    assert {"assisted_contraction", "recruitment_curve", "fatigue_test", "twitch_interpolation"} <= names
    for p in PROTOCOLS:
        proto = load_protocol(p)
        assert proto.duration_s > 0 and proto.analysis.kind != "none"


@pytest.mark.parametrize("name", ["recruitment_curve", "fatigue_test", "twitch_interpolation"])
def test_assessment_protocols_recover_the_simulators_parameters_from_the_cli(name, tmp_path):
    """`closedloop run P.toml --simulate --fast` from the command line: results against the truth."""
    out = tmp_path / name
    cp = _cli("run", str(EXPERIMENTS / f"{name}.toml"), "--simulate", "--fast", "--out", str(out), "--quiet")
    assert cp.returncode == 0, cp.stderr
    assert "report:" in cp.stdout and (out / "report.html").exists()
    s = json.loads((out / "summary.json").read_text())
    r, t = s["results"], s["truth"]
    if name == "recruitment_curve":
        for key in ("threshold_ma", "m_max_uv"):
            assert abs(r[key] / t[key] - 1) < 0.05, (key, r[key], t[key])
        lo, hi = r["threshold_ma_ci"]
        assert lo < r["threshold_ma"] < hi
    elif name == "fatigue_test":
        assert t["mwave_decline_pct_per_min"] < -2.0  # the simulated muscle does fatigue
        assert abs(r["mwave_decline_pct_per_min"] / t["mwave_decline_pct_per_min"] - 1) < 0.10
        assert abs(r["mdf_decline_pct_per_min"] / t["mdf_decline_pct_per_min"] - 1) < 0.10
    else:
        assert len(r["trials"]) == 3
        assert abs(r["va_pct"] - t["va_pct"]) < 5.0
        assert t["va_pct"] == pytest.approx(85.0, abs=0.5)  # what [simulation] voluntary_activation says


@pytest.mark.parametrize(
    "muscle, va, seed",
    [({"threshold_uc": 3.0, "slope_per_uc": 2.5, "m_max_uv": 2500.0}, 0.7, 3), ({"threshold_uc": 6.0}, 0.95, 11)],
)
def test_recruitment_and_twitch_are_right_for_other_participants(muscle, va, seed, tmp_path):
    """Other truths than the shipped files': nothing is tuned to one participant."""
    raw = _raw("recruitment_curve")
    raw["simulation"]["seed"] = seed
    raw["simulation"]["muscle"].update(muscle)
    if muscle.get("threshold_uc", 4.0) > 5.0:  # a less excitable muscle needs a wider sweep
        raw["controller"].update(start_ma=10.0, stop_ma=60.0, step_ma=2.0)
        raw["safety"].update(max_amplitude_ma=60.0, max_step_ma=60.0, max_charge_uc=20.0)
    s = _run(raw, tmp_path / "rc")
    for key in ("threshold_ma", "m_max_uv"):
        assert abs(s["results"][key] / s["truth"][key] - 1) < 0.05, (key, s["results"][key], s["truth"][key])

    raw = _raw("twitch_interpolation")
    raw["simulation"].update(seed=seed, voluntary_activation=va)
    s = _run(raw, tmp_path / "tw")
    assert s["truth"]["va_pct"] == pytest.approx(100 * va, abs=0.5)
    assert abs(s["results"]["va_pct"] - s["truth"]["va_pct"]) < 5.0


def test_fatigue_test_on_a_muscle_that_fatigues_differently(tmp_path):
    raw = _raw("fatigue_test")
    raw["simulation"]["seed"] = 5
    raw["simulation"]["muscle"]["fatigue_rate_scale"] = 0.5
    raw["phases"][-1]["duration_s"] = 120.0
    s = _run(raw, tmp_path / "ft")
    r, t = s["results"], s["truth"]
    assert abs(r["mwave_decline_pct_per_min"] / t["mwave_decline_pct_per_min"] - 1) < 0.10


def test_pid_tracks_a_target_force_on_the_simulated_participant(tmp_path):
    """The PID on measured force follows its trajectory (ramp, hold, step, ramp down) within 5 % RMS."""
    s = _run(_raw("force_tracking"), tmp_path / "pid")
    r = s["results"]
    assert r["force_rms_error_pct_of_target"] < 5.0, r
    assert r["tracking_s"] > 15


def test_assisted_contraction_with_fatigue_compensation_runs_and_tracks_effort(tmp_path):
    s = _run(_raw("assisted_contraction"), tmp_path / "ac")
    assert s["pulses"] > 200 and s["max_amplitude_ma"] <= s["limits"]["max_amplitude_ma"]
    assert s["truth_comparison"]["effort_drive_r"] > 0.85
    assert s["controller"]["type"] == "FatigueCompensation"


def test_report_rebuilds_the_results_from_the_recording(tmp_path):
    raw = _raw("twitch_interpolation")
    out = tmp_path / "tw"
    first = _run(raw, out)
    (out / "report.html").unlink()
    (out / "twitch.png").unlink()
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("results")
    (out / "summary.json").write_text(json.dumps(summary))
    cp = _cli("report", str(out))
    assert cp.returncode == 0, cp.stderr
    again = json.loads((out / "summary.json").read_text())
    assert again["results"]["va_pct"] == pytest.approx(first["results"]["va_pct"], rel=1e-12)
    assert (out / "report.html").exists() and (out / "twitch.png").exists()
    assert "va_pct" in cp.stdout


def test_report_of_a_directory_without_a_session_is_a_one_line_error(tmp_path):
    cp = _cli("report", str(tmp_path))
    assert cp.returncode == 2 and "session.xdf is missing" in cp.stderr and "Traceback" not in cp.stderr


# -- invalid protocol files: the file, the key, what is allowed; nothing starts ------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


GOOD = """
[controller]
type = "constant"
amplitude_ma = 10.0
[[phases]]
name = "go"
duration_s = 1.0
"""


@pytest.mark.parametrize(
    "text, expect",
    [
        (GOOD.replace("amplitude_ma = 10.0", "amplitude = 10.0"), r"\[controller\] unknown key 'amplitude'"),
        (GOOD.replace('"constant"', '"constnt"'), r"type = 'constnt': allowed constant, ramp"),
        (GOOD.replace("amplitude_ma = 10.0", 'amplitude_ma = "ten"'), r"amplitude_ma = 'ten': must be a number"),
        (GOOD + 'controller = "other"\n', r"controller = 'other': no \[controllers.other\] table"),
        (GOOD + "simulate_drive = 1.5\n", r"simulate_drive = 1.5: a drive level must lie in 0..1"),
        (GOOD.replace('"constant"', '"fatigue_compensation"'), r"needs an inner controller table"),
        (GOOD + "[analysis]\nkind = 'va'\n", r"\[analysis\] kind = 'va': allowed assist, recruitment"),
        (GOOD + "[simulation.muscle]\nthreshold = 3\n", r"\[simulation.muscle\] unknown key 'threshold'"),
        ("[[phases]]\nname='go'\nduration_s=1.0\n", r"control phase without a controller"),
        (GOOD.replace("duration_s = 1.0", "duration_s = -1.0"), r"duration_s = -1.0 must be > 0"),
        (GOOD + "[stimulation]\nstimulator = 'sciencemode'\n", r"needs port"),
        ("[controller\n", r"not valid TOML"),
    ],
)
def test_invalid_protocols_name_the_file_and_the_key(tmp_path, text, expect):
    p = _write(tmp_path, text)
    with pytest.raises(ProtocolError, match=expect) as info:
        load_protocol(p)
    assert str(p) in str(info.value)


def test_run_with_an_invalid_protocol_starts_nothing(tmp_path):
    p = _write(tmp_path, GOOD.replace("amplitude_ma = 10.0", "amplitude_ma = -3.0"))
    out = tmp_path / "never"
    cp = _cli("run", str(p), "--simulate", "--fast", "--out", str(out))
    assert cp.returncode == 2
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and "amplitude_ma" in lines[0] and str(p) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "replay"])
def test_a_folder_given_as_the_protocol_is_a_one_line_error(tmp_path, command):
    folder = tmp_path / "protocols"
    folder.mkdir()
    out = tmp_path / "never"
    args = (str(folder),) if command == "run" else ("nofile.edf", "--protocol", str(folder))
    cp = _cli(command, *args, "--out", str(out))
    assert cp.returncode == 2
    assert cp.stderr.strip() == (
        f"closedloop {command}: error: {folder}: is a folder, not a protocol file (give a .toml file)"
    )
    assert not out.exists()


def test_fast_needs_simulate(tmp_path):
    cp = _cli("run", str(EXPERIMENTS / "recruitment_curve.toml"), "--fast", "--out", str(tmp_path / "x"))
    assert cp.returncode == 2 and "--fast needs --simulate" in cp.stderr


# -- bursts and phase controllers in the orchestrator --------------------------------------------------------


def _doublet_session(tmp_path, stimulator_wrapper=None, interval_ms=10.0, phases=None):
    from acquisition.simulator.muscle import MuscleParams
    from acquisition.simulator.profiles import named_profile
    from acquisition.simulator.source import SimulatedParticipant
    from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
    from closedloop.pipeline import Phase, Session, SessionConfig
    from closedloop.safety import SafetyLayer, SafetyLimits
    from controllers import PulseSchedule

    sim = SimulatedParticipant(MuscleParams(seed=2, n_channels=2), named_profile("rest"), duration_s=5.0)
    stim = sim.stimulator if stimulator_wrapper is None else stimulator_wrapper(sim.stimulator)
    limits = SafetyLimits(max_amplitude_ma=40, max_step_ma=40, max_rate_hz=100, allowed_channels=(0,))
    phases = phases or (Phase("a", 2.0, "control", "sched"), Phase("b", 2.0, "control", "sched"))
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, EstimatorConfig()),
        None,
        SafetyLayer(limits, stim),
        SessionConfig(stim_hz=20.0, phases=phases),
        tmp_path,
        phase_controllers={"sched": PulseSchedule((0.5,), 30.0, 2, interval_ms)},
    )
    return sim, session, asyncio.run(session.run())


def test_doublets_arrive_10_ms_apart_and_a_phase_controller_restarts_with_its_phase(tmp_path):
    sim, session, res = _doublet_session(tmp_path)
    assert res.status == "completed", res.error
    t = np.array([p.t for p in sim.applied_pulses])
    assert len(t) == 4  # one doublet per phase: the schedule's time counts from each phase's start
    np.testing.assert_allclose(np.diff(t)[[0, 2]], 0.010, atol=1.0 / 2048)
    t0 = session._t_start
    # the schedule counts from each phase's first decision: phase a's comes one 20 Hz period after the start
    # (its first interval must complete), phase b's at its start (the interval ending there decides for it)
    np.testing.assert_allclose(t[[0, 2]] - t0, [0.05 + 0.5, 2.0 + 0.5], atol=8 / 2048)
    pulses = json.loads((tmp_path / "summary.json").read_text())["pulses"]
    assert pulses == 4


class _NoScheduling:
    """A driver that can only deliver pulses due now (like the RehaStim 2 one-pulse mode)."""

    name = "one-pulse stimulator"

    def __init__(self, inner):
        self.inner = inner

    def open(self):
        self.inner.open()

    def deliver(self, pulse):
        return self.inner.deliver(pulse)

    def stop(self):
        self.inner.stop()

    def close(self):
        self.inner.close()

    @property
    def stopped(self):
        return self.inner.stopped


def test_a_stimulator_that_cannot_time_a_burst_turns_output_off_before_any_of_it(tmp_path):
    sim, _, res = _doublet_session(tmp_path, _NoScheduling)
    assert res.status == "faulted" and "cannot time the pulses of a burst" in res.error
    assert sim.applied_pulses == [] and sim.stimulator.stopped


def test_a_burst_longer_than_a_pulse_period_turns_output_off(tmp_path):
    sim, _, res = _doublet_session(tmp_path, interval_ms=60.0)
    assert res.status == "faulted" and "does not fit in one pulse period" in res.error
    assert sim.applied_pulses == []


def test_a_phase_naming_an_unknown_controller_is_refused_before_anything_runs(tmp_path):
    from closedloop.pipeline import Phase

    with pytest.raises(ConfigError, match="names controller 'nope'"):
        _doublet_session(tmp_path, phases=(Phase("a", 1.0, "control", "nope"),))


def test_replaying_a_run_session_reproduces_its_estimates_and_its_pulses(tmp_path):
    """A `closedloop run` recording replays to the same estimates, and its protocol's phase controllers, run
    in shadow, command the same doublets at the same times."""
    import csv

    from closedloop.report import load_session
    from experiments.replay import ReplayOptions, replay_file

    out = tmp_path / "tw"
    _run(_raw("twitch_interpolation"), out)
    res = replay_file(out / "session.xdf", tmp_path / "replay", ReplayOptions(report=False))
    assert res.ok, res.error

    def rows(path):
        with open(path, newline="") as f:
            return {(r["interval"], r["channel"]): r for r in csv.DictReader(f)}

    a, b = rows(out / "estimates.csv"), rows(tmp_path / "replay" / "estimates.csv")
    assert a.keys() == b.keys()
    for k in a:
        for c in ("amplitude_ma", "mwave_ptp_uv", "effort_uv"):
            assert (a[k][c] == "") == (b[k][c] == ""), (k, c)
            if a[k][c]:
                assert float(b[k][c]) == pytest.approx(float(a[k][c]), rel=2e-6, abs=1e-9)
    live = load_session(out)["Pulses"]
    shadow = load_session(tmp_path / "replay")["ShadowPulses"]
    assert shadow.values.shape[0] == live.values.shape[0] == 12
    np.testing.assert_allclose(shadow.timestamps - live.timestamps[0], live.timestamps - live.timestamps[0], atol=1e-3)
    np.testing.assert_array_equal(shadow.channel("amplitude_ma"), live.channel("amplitude_ma"))


def test_run_live_over_lsl_against_the_simulated_device(tmp_path):
    """The live path of `closedloop run`: EMG and force from LSL outlets (`closedloop simulate` in its own
    process), pulses out on the LSL command stream, the recruitment fit from what came back."""
    import uuid

    from experiments.run import run_protocol

    tag = uuid.uuid4().hex[:8]
    sim = subprocess.Popen(
        [sys.executable, "-m", "closedloop", "simulate", "--prefix", f"t{tag}", "--source-id", f"s{tag}",
         "--command-stream", f"cmd{tag}", "--profile", "rest", "--duration", "60", "--seed", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        raw = _raw("recruitment_curve")
        raw["source"].update(source_id=f"s{tag}-emg", loopback=True, force_stream=f"t{tag}-Force", channels=4)
        raw["stimulation"]["command_stream"] = f"cmd{tag}"
        raw["controller"].update(start_ma=8.0, stop_ma=32.0, step_ma=2.0, pulses_per_level=1, every_n_periods=3)
        raw["phases"][1]["duration_s"] = 8.0
        res = run_protocol(parse_protocol(raw), tmp_path / "live", progress=False)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    assert res.status == "completed", res.error
    s = json.loads((tmp_path / "live" / "summary.json").read_text())
    # 25 pulses asked for; live, on a loaded machine, a decision may miss its deadline and skip one
    counts = {k: s.get(k) for k in ("pulses", "skipped_pulses", "deadline_misses", "intervals", "safety_counts")}
    assert 23 <= s["pulses"] <= 25 and s["pulses"] + s["skipped_pulses"] == 25, (counts, s["estimator_warnings"])
    assert "truth" not in s  # a live session knows no truth
    assert s["results"]["n_pulses"] == s["pulses"]
    # the device's default muscle: 10 % of M-max at 4 uC / 300 us = 13.3 mA
    assert abs(s["results"]["threshold_ma"] / 13.33 - 1) < 0.10
    from closedloop.report import load_session

    assert load_session(tmp_path / "live")["Force"].values.shape[0] > 2048 * 8


def test_emg_triggered_protocol_gives_one_train_per_contraction(tmp_path):
    """On the simulated participant's repeated contractions: every train starts while the participant is
    contracting, and between two trains the participant relaxed (the hysteresis re-arms only then)."""
    from closedloop.report import load_session

    out = tmp_path / "et"
    _run(_raw("emg_triggered"), out)
    data = load_session(out)
    t = data["Pulses"].timestamps
    starts = t[np.concatenate(([True], np.diff(t) > 0.5))]
    gt = data["GroundTruth"]
    drive = gt.channel("drive")
    assert len(starts) >= 5
    for a, b in itertools.pairwise(starts):
        between = (gt.timestamps > a) & (gt.timestamps < b)
        assert drive[between].min() < 0.05  # relaxed in between
    assert np.all(np.interp(starts, gt.timestamps, drive) > 0.1)  # triggered by a contraction
