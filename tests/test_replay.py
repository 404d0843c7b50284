"""Replay: recordings through the same pipeline, in batch, on Dask, and republished over LSL."""

import asyncio
import csv
import json
import math
import re
import subprocess
import sys
import threading
import types
import uuid
from pathlib import Path

import mne
import numpy as np
import pytest

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import demo_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.errors import ConfigError
from closedloop.estimation.interval import IntervalEstimator
from closedloop.pipeline import Session, SessionConfig
from closedloop.report import load_session
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.proportional import ProportionalAssist
from experiments.demo import demo_phases
from experiments.replay import ReplayOptions, replay_batch, replay_file


def _live_session(out: Path, seconds: float = 12.0) -> None:
    sim = SimulatedParticipant(MuscleParams(seed=5), demo_profile(), duration_s=seconds + 1)
    safety = SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator)
    s = Session(
        sim,
        IntervalEstimator,
        ProportionalAssist(gain_ma_per_pct=0.4, offset_ma=10.0),
        safety,
        SessionConfig(stim_hz=25.0, phases=demo_phases(seconds)),
        out,
        aux_sources={"Force": sim.force, "GroundTruth": sim.truth},
    )
    assert asyncio.run(s.run()).ok


def _csv(path: Path) -> dict:
    with open(path, newline="") as f:
        return {(r["interval"], r["channel"]): r for r in csv.DictReader(f)}


def test_a_recorded_session_replays_to_the_estimates_computed_live(tmp_path):
    live = tmp_path / "live"
    _live_session(live)
    res = replay_file(live / "session.xdf", tmp_path / "replay", ReplayOptions(report=False))
    assert res.ok, res.error
    a, b = _csv(live / "estimates.csv"), _csv(tmp_path / "replay" / "estimates.csv")
    assert a.keys() == b.keys() and len(a) > 1000
    cols = (
        "amplitude_ma",
        "mwave_ptp_uv",
        "mwave_area_uvs",
        "mwave_ptp_rel",
        "effort_uv",
        "effort_pct_mvc",
        "mdf_hz",
        "mnf_hz",
        "fi_nsm5",
    )
    for k in a:
        for c in cols:
            x, y = a[k][c], b[k][c]
            assert (x == "") == (y == ""), (k, c, x, y)
            if x:
                assert float(y) == pytest.approx(float(x), rel=2e-6), (k, c)  # CSV keeps 6 digits
        # live t_s is on the LSL clock, replayed t_s in seconds from the start of the recording
    first = min(a, key=lambda k: float(a[k]["t_s"]))
    assert float(b[first]["t_s"]) == pytest.approx(0.0, abs=1e-9)
    # the full-precision stream agrees to floating-point rounding, and the shadow controller commands what
    # the live controller commanded
    ea, eb = load_session(live)["Estimates"], load_session(tmp_path / "replay")["Estimates"]
    for name in ("effort", "effort_smooth", "mwave_ptp", "mdf_hz", "next_amplitude_ma"):
        np.testing.assert_allclose(eb.channel(name), ea.channel(name), rtol=1e-9, atol=1e-9, equal_nan=True)
    pulses_live = load_session(live)["Pulses"]
    shadow = load_session(tmp_path / "replay")["ShadowPulses"]
    assert shadow.values.shape[0] == pulses_live.values.shape[0]
    np.testing.assert_allclose(shadow.channel("amplitude_ma"), pulses_live.channel("amplitude_ma"), rtol=1e-9)


def _edf(path: Path, seed: int, with_pulses: bool = True) -> None:
    rng = np.random.default_rng(seed)
    fs, n = 2000.0, 6000
    x = rng.normal(0, 50e-6, (3, n))
    info = mne.create_info(["EMG1", "EMG2", "EMG3"], fs, "emg")
    raw = mne.io.RawArray(x, info, verbose="error")
    if with_pulses:
        onsets = np.arange(0.5, 2.5, 1 / 30)
        raw.set_annotations(mne.Annotations(onsets, 0.0, ["stim"] * onsets.size))
    mne.export.export_raw(path, raw, overwrite=True, verbose="error")


def test_batch_in_parallel_with_bad_files_reported_and_the_rest_processed(tmp_path):
    files = [tmp_path / f"good{i}.edf" for i in range(3)]
    for i, f in enumerate(files):
        _edf(f, i)
    missing = tmp_path / "missing.edf"
    corrupt = tmp_path / "corrupt.fif"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    seen = []
    out = tmp_path / "out"
    results = replay_batch(
        [*files, missing, corrupt, unknown], out, ReplayOptions(report=False), jobs=2, on_result=seen.append
    )
    assert [r.ok for r in results] == [True, True, True, False, False, False]
    assert len(seen) == 6
    for r in results[3:]:
        assert Path(r.file).name in r.error and "\n" not in r.error
    assert "no such file" in results[3].error.lower() or "not found" in results[3].error.lower()
    assert "unknown file type '.txt'" in results[5].error
    for r in results[:3]:
        assert r.values["pulses"] == 60 and r.values["pulse_source"] == "annotations"
        assert (Path(r.out_dir) / "estimates.csv").exists()
    with open(out / "replay_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == [p.name for p in [*files, missing, corrupt, unknown]]
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["failed"] * 3


def test_cli_exit_code_and_one_line_errors(tmp_path):
    good = tmp_path / "good.edf"
    _edf(good, 1, with_pulses=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "closedloop",
            "replay",
            str(good),
            str(tmp_path / "nope.bdf"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "nope.bdf: error:" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "1 of 2 files replayed" in r.stdout
    assert (tmp_path / "o" / "good" / "report.html").exists()


def test_dask_local_cluster_runs_the_same_batch(tmp_path):
    distributed = pytest.importorskip("distributed")
    files = [tmp_path / f"f{i}.edf" for i in range(2)]
    for i, f in enumerate(files):
        _edf(f, 10 + i)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        results = replay_batch(files, tmp_path / "dask", ReplayOptions(report=False), scheduler=client)
    local = replay_batch(files, tmp_path / "local", ReplayOptions(report=False), jobs=1)
    assert [r.ok for r in results] == [True, True]
    for r, s in zip(results, local, strict=True):
        assert _csv(Path(r.out_dir) / "estimates.csv") == _csv(Path(s.out_dir) / "estimates.csv")


def _data_dir() -> Path | None:
    import os

    for cand in (os.environ.get("CLOSEDLOOP_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if cand and Path(cand, "tscs_SingleCh_StimON.mat").exists():
            return Path(cand)
    return None


@pytest.mark.skipif(_data_dir() is None, reason="shared data folder (../shared/data or $CLOSEDLOOP_DATA) not present")
def test_real_recordings_replay_from_the_cli(tmp_path):
    d = _data_dir()
    files = [d / "tscs_SingleCh_StimON.mat", d / "tscs_SingleCh_StimOFF.mat", d / "bsnb_emg_bursts.h5"]
    r = subprocess.run(
        [sys.executable, "-m", "closedloop", "replay", *map(str, files), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    for stem in ("tscs_SingleCh_StimON", "tscs_SingleCh_StimOFF", "bsnb_emg_bursts"):
        assert (tmp_path / stem / "report.html").exists()
    with open(tmp_path / "replay_summary.csv", newline="") as f:
        rows = {Path(x["file"]).stem: x for x in csv.DictReader(f)}
    assert int(rows["tscs_SingleCh_StimON"]["pulses"]) == 3904  # detected 30-Hz train
    assert int(rows["bsnb_emg_bursts"]["pulses"]) == 0  # voluntary EMG: no train, nothing taken for pulses


@pytest.mark.lsl
def test_publish_lsl_makes_a_recording_a_device(tmp_path):
    from acquisition.lsl import LSLSource
    from experiments.replay import publish_file

    path = tmp_path / "dev.edf"
    _edf(path, 3)
    name = f"replay-{uuid.uuid4().hex[:8]}"
    t = threading.Thread(target=publish_file, args=(path, ReplayOptions(speed=2.0, chunk_size=64), name))
    t.start()

    async def read():
        got = []
        async with LSLSource(name=name, type="EMG", resolve_timeout_s=10.0, expected_channels=3) as src:
            assert src.info.units == ("microvolts",) * 3
            async for c in src:
                got.append(c.samples)
                if sum(len(g) for g in got) >= 2000:
                    break
        return np.vstack(got)

    got = asyncio.run(read())
    t.join(10)
    raw = mne.io.read_raw_edf(path, verbose="error", preload=True)
    uv = raw.get_data().T * 1e6
    # the inlet joined mid-stream: find where its samples sit in the file, then they must match
    first = int(np.argmin(np.abs(uv[:, 0] - got[0, 0]) + np.abs(uv[:, 1] - got[0, 1])))
    np.testing.assert_allclose(got[:1000], uv[first : first + 1000], rtol=1e-5, atol=1e-3)


def _xdf_overview(out_dir: Path) -> dict:
    """The replay summary's Estimates figures as they were computed before: read back from session.xdf."""
    est = load_session(out_dir)["Estimates"]

    def med(name: str):
        a = est.channel(name)
        a = a[np.isfinite(a)]
        return round(float(np.median(a)), 3) if a.size else ""

    mdf = est.channel("mdf_hz")
    ok = mdf[np.isfinite(mdf)]
    return {
        "effort_median_uv": med("effort"),
        "mwave_ptp_median_uv": med("mwave_ptp"),
        "mdf_first_hz": round(float(ok[0]), 2) if ok.size else "",
        "mdf_last_hz": round(float(ok[-1]), 2) if ok.size else "",
    }


@pytest.mark.parametrize("with_pulses", [True, False])
def test_replay_summary_figures_equal_those_read_back_from_session_xdf(tmp_path, with_pulses):
    path = tmp_path / "rec.edf"
    _edf(path, 4, with_pulses)
    res = replay_file(path, tmp_path / "out", ReplayOptions(report=False, protocol=str(_PROTOCOL)))
    assert res.ok, res.error
    expected = _xdf_overview(tmp_path / "out")
    assert {k: res.values[k] for k in expected} == expected
    assert res.values["effort_median_uv"] != ""
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [res.values[k] for k in ("pulses", "shadow_pulses", "intervals")] == [
        summary[k] for k in ("pulses", "shadow_pulses", "intervals")
    ]


_PROTOCOL = Path(__file__).resolve().parents[1] / "experiments" / "assisted_contraction.toml"


class _PlainEstimator:
    """Deterministic stand-in for the estimator: numbers of each interval alone (no state), so that a session
    records the same whatever the chunking; lets the recording of several intervals per chunk be compared
    with one interval per chunk, value for value."""

    def __init__(self, info) -> None:
        from closedloop.estimation.interval import EstimatorConfig

        self.config = EstimatorConfig()
        self.n = info.n_channels
        self.mvc_uv = np.full(self.n, 30.0)

    def set_mvc(self, mvc) -> None:
        self.mvc_uv = np.asarray(mvc, dtype=float)

    def step(self, interval, pulse_times=(), amplitude_ma=math.nan):
        from closedloop.types import Estimate

        x = interval.samples * 1e6
        rms = np.sqrt(np.mean(x**2, axis=0))
        ptp = np.ptp(x, axis=0) if pulse_times else np.full(self.n, np.nan)
        k = interval.index
        per = {name: rms * (i + 1) + k for i, name in enumerate(("area", "lat", "pct", "prel", "arel", "mdf", "mnf"))}
        per["fi"] = np.where(np.arange(self.n) == 1, np.nan, rms * 1e-15)
        return Estimate(
            index=k,
            t_start=float(pulse_times[0]) if pulse_times else float(interval.timestamps[0]),
            t_end=float(interval.timestamps[-1]),
            amplitude_ma=amplitude_ma if pulse_times else math.nan,
            effort_uv=float(rms[0]),
            effort_smooth_uv=float(rms[0]) / 2,
            effort_pct_mvc=float(rms[0] / self.mvc_uv[0] * 100.0),
            mwave_ptp_uv=float(ptp[0]),
            channel_effort_uv=rms,
            channel_mwave_ptp_uv=ptp,
            channel_mwave_area_uvs=per["area"],
            channel_mwave_latency_s=per["lat"] * 1e-3,
            channel_effort_pct_mvc=per["pct"],
            channel_mwave_ptp_rel=per["prel"],
            channel_mwave_area_rel=per["arel"],
            channel_mdf_hz=per["mdf"],
            channel_mnf_hz=per["mnf"],
            channel_fi_nsm5=per["fi"],
            warnings=("odd interval",) if k % 2 else (),
            has_pulse=bool(pulse_times),
        )

    def step_many(self, intervals, pulse_times=None, amplitudes_ma=None):
        times = pulse_times or [()] * len(intervals)
        amps = amplitudes_ma or [math.nan] * len(intervals)
        return [self.step(iv, t, a) for iv, t, a in zip(intervals, times, amps, strict=True)]


def _plain_replay(path: Path, out: Path, chunk_size: int):
    from acquisition.files import FileSource
    from closedloop.pipeline import Phase
    from closedloop.stimulators import ShadowStimulator

    async def run():
        async with FileSource(path, chunk_size=chunk_size) as src:
            config = SessionConfig(
                phases=(Phase("rest", 0.6, "rest"), Phase("assist", 3.0, "control"), Phase("after", 1.0, "rest")),
                segmentation="pulses",
                pulses_from="source",
                record_emg=False,
            )
            safety = SafetyLayer(SafetyLimits(allowed_channels=(0,), max_step_ma=2.0), ShadowStimulator(src.clock))
            controller = ProportionalAssist(gain_ma_per_pct=0.05, offset_ma=5.0, max_ma=20.0)
            s = Session(
                src, _PlainEstimator, controller, safety, config, out, csv_relative_time=True, keep_estimates=True
            )
            return await s.run()

    return asyncio.run(run())


def test_a_replay_records_the_same_whether_a_chunk_completes_one_interval_or_many(tmp_path):
    path = tmp_path / "rec.edf"
    _edf(path, 7)
    one = _plain_replay(path, tmp_path / "one", 16)  # 2000 Hz, 30-Hz pulses: at most one interval per chunk
    many = _plain_replay(path, tmp_path / "many", 4096)
    assert one.ok and many.ok, (one.error, many.error)
    assert one.n_intervals == many.n_intervals > 50 and one.n_pulses == many.n_pulses > 20  # shadow pulses
    a, b = load_session(tmp_path / "one"), load_session(tmp_path / "many")
    assert list(a.streams) == list(b.streams)
    for name in a.streams:
        x, y = a[name], b[name]
        assert x.labels == y.labels
        np.testing.assert_array_equal(x.timestamps, y.timestamps)
        if x.values.dtype == object:
            assert x.values.tolist() == y.values.tolist()
        else:
            np.testing.assert_array_equal(x.values, y.values)
    assert (tmp_path / "one" / "estimates.csv").read_bytes() == (tmp_path / "many" / "estimates.csv").read_bytes()
    assert (
        one.summary["estimator_warnings"]
        == many.summary["estimator_warnings"]
        == {"odd interval": one.n_intervals // 2}
    )
    # the kept control-channel columns are the Estimates stream's, row for row
    head = a["Estimates"].values[:, : many.estimates.shape[1]]
    np.testing.assert_array_equal(many.estimates, head)
    np.testing.assert_array_equal(one.estimates, head)


def test_the_mvc_applies_from_the_interval_after_calibration_whatever_the_chunking(tmp_path):
    """A calibration ending in the middle of a chunk sets the MVC before the chunk's later intervals are
    estimated: their % MVC is there, as when the intervals come one by one (it was missing when a chunk's
    intervals were all estimated before any decision)."""
    rng = np.random.default_rng(3)
    fs, n = 2000.0, 14000  # 7 s: rest 1 s, calibrate 3 s, rest 1 s, then the assist phase
    x = rng.normal(0, 50e-6, (2, n))
    x[:, 2000:8000] *= 4.0  # a contraction during the calibration
    raw = mne.io.RawArray(x, mne.create_info(["EMG1", "EMG2"], fs, "emg"), verbose="error")
    onsets = np.arange(5.2, 6.9, 1 / 25)
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["stim"] * onsets.size))
    path = tmp_path / "rec.edf"
    mne.export.export_raw(path, raw, overwrite=True, verbose="error")
    pct = {}
    for chunk in (3000, 100):  # 3000 samples: the calibration ends in the middle of the chunk from 3 to 4.5 s
        out = tmp_path / f"c{chunk}"
        res = replay_file(path, out, ReplayOptions(report=False, protocol=str(_PROTOCOL), chunk_size=chunk))
        assert res.ok, res.error
        with open(out / "estimates.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["channel"] == "EMG1"]
        pct[chunk] = [(float(r["t_s"]), r["effort_pct_mvc"]) for r in rows]
    assert [t for t, _ in pct[3000]] == [t for t, _ in pct[100]]
    after = [(t, v) for t, v in pct[3000] if t > 4.05]  # from the second interval after the calibration on
    assert after and all(v != "" for _, v in after)
    np.testing.assert_allclose(
        [float(v) if v else np.nan for _, v in pct[3000]],
        [float(v) if v else np.nan for _, v in pct[100]],
        rtol=1e-5,
        equal_nan=True,
    )


def test_pulse_marker_picks_annotations_the_default_pattern_misses(tmp_path):
    """Annotations named as a lab names them ('FES', not stim/pulse/trigger) are the pulses with --pulse-marker;
    without it the replay says which annotations the file has, and a bad pattern is a one-line error."""
    rng = np.random.default_rng(4)
    fs = 2000.0
    raw = mne.io.RawArray(
        rng.normal(0, 50e-6, (2, 8000)), mne.create_info(["EMG1", "EMG2"], fs, "emg"), verbose="error"
    )
    onsets = np.arange(0.5, 3.5, 1 / 20)
    raw.set_annotations(mne.Annotations([*onsets, 3.8], 0.0, ["FES"] * onsets.size + ["Comment/rest"]))
    path = tmp_path / "fes.edf"
    mne.export.export_raw(path, raw, overwrite=True, verbose="error")
    plain = replay_file(path, tmp_path / "plain", ReplayOptions(report=False, detect_pulses=False))
    assert plain.ok and plain.values["pulses"] == 0
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["replay"]["annotations"] == ["Comment/rest", "FES"]
    assert "'Comment/rest', 'FES'" in plain.hint and "--pulse-marker" in plain.hint
    marked = replay_file(path, tmp_path / "fes", ReplayOptions(report=False, pulse_marker="^FES$"))
    assert marked.ok and marked.values["pulse_source"] == "annotations"
    assert marked.values["pulses"] == onsets.size
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "closedloop",
            "replay",
            str(path),
            "--pulse-marker",
            "FES(",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "--pulse-marker 'FES(' is not a regular expression" in bad.stderr
    assert "Traceback" not in bad.stderr


def _fif_with_nan(path: Path) -> tuple[np.ndarray, float]:
    """2 channels x 10 s at 2048 Hz, 25-Hz pulses as annotations, NaN in EMG1 from 3.0 s for 10 samples."""
    fs = 2048.0
    rng = np.random.default_rng(11)
    x = rng.normal(0, 50e-6, (2, 10 * 2048))
    onsets = np.arange(0.05, 9.99, 0.04)
    x[0, 3 * 2048 : 3 * 2048 + 10] = np.nan
    raw = mne.io.RawArray(x, mne.create_info(["EMG1", "EMG2"], fs, "emg"), verbose="error")
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["stim"] * onsets.size))
    raw.save(path, overwrite=True, verbose="error")
    return onsets, fs


def _emg1_rows(out: Path) -> list[dict]:
    with open(out / "estimates.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["channel"] == "EMG1"]


def test_non_finite_samples_lose_nothing_whatever_the_chunk_size(tmp_path):
    """A NaN stretch in a recording: by default the replay goes on (the interval holding it is flagged and has no
    values, every other interval is estimated); under a protocol's nonfinite_policy "stop" it stops at the bad
    sample with the intervals before it kept. Either way the result does not depend on the chunk size (a fast
    replay's one chunk held the whole file, and the stop lost all of it)."""
    path = tmp_path / "nan_raw.fif"
    onsets, fs = _fif_with_nan(path)
    t_bad = 3.0
    csv_bytes = {}
    for chunk in (None, 256):
        out = tmp_path / f"skip{chunk}"
        res = replay_file(path, out, ReplayOptions(report=False, chunk_size=chunk))
        assert res.ok, res.error
        assert res.values["pulses"] == onsets.size
        rows = _emg1_rows(out)
        assert len(rows) == onsets.size + 1  # the stretch before the first pulse, then one per pulse
        empty = [float(r["t_s"]) for r in rows if r["effort_uv"] == ""]
        holding = onsets[np.searchsorted(onsets, t_bad, side="right") - 1]
        assert empty == [pytest.approx(holding, abs=1 / fs)]  # only the interval with the NaN samples
        csv_bytes[chunk] = (out / "estimates.csv").read_bytes()
    assert csv_bytes[None] == csv_bytes[256]

    assert 'nonfinite_policy = "stop"' in _PROTOCOL.read_text()
    kept = {}
    for chunk in (None, 256):
        out = tmp_path / f"stop{chunk}"
        res = replay_file(path, out, ReplayOptions(report=False, chunk_size=chunk, protocol=str(_PROTOCOL)))
        assert not res.ok and "non-finite" in res.error
        rows = _emg1_rows(out)
        kept[chunk] = [float(r["t_s"]) for r in rows]
        # every interval that ended before the bad sample, none after it
        assert len(kept[chunk]) == np.searchsorted(onsets, t_bad, side="right")
    assert kept[None] == kept[256]


def test_a_flat_channel_gives_empty_cells_and_no_warnings(tmp_path):
    """A dead channel (flat) beside a good one, with pulses and a protocol that calibrates: the good channel is
    estimated as usual, the flat one's ratios (% MVC, relative M-wave) are empty, and nothing is printed from
    numpy (warnings are errors in the tests)."""
    fs = 2048.0
    rng = np.random.default_rng(12)
    x = rng.normal(0, 50e-6, (2, 10 * 2048))
    x[1] = 0.0
    onsets = np.arange(0.05, 9.99, 0.04)
    for k in range(4):
        x[0, np.round(onsets * fs).astype(int) + k] += 5e-3 * np.exp(-k)
    raw = mne.io.RawArray(x, mne.create_info(["EMG1", "EMG2"], fs, "emg"), verbose="error")
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["stim"] * onsets.size))
    path = tmp_path / "flat_raw.fif"
    raw.save(path, verbose="error")
    for protocol in (None, str(_PROTOCOL)):
        out = tmp_path / f"out{protocol is None}"
        res = replay_file(path, out, ReplayOptions(report=False, protocol=protocol))
        assert res.ok, res.error
        with open(out / "estimates.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        good = [r for r in rows if r["channel"] == "EMG1"][5:]
        flat = [r for r in rows if r["channel"] == "EMG2"][5:]
        assert all(float(r["effort_uv"]) > 0 and r["mwave_ptp_rel"] != "" for r in good)
        assert all(float(r["effort_uv"]) == 0 and r["mwave_ptp_rel"] == "" for r in flat)
        if protocol is not None:  # calibrated: % MVC where the MVC is not 0
            assert any(r["effort_pct_mvc"] != "" for r in good)
            assert all(r["effort_pct_mvc"] == "" for r in flat)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["mvc_uv"][0] > 0 and summary["mvc_uv"][1] is None
    # the report shows it
    from closedloop.report import build_report

    build_report(out)
    html = (out / "report.html").read_text()
    assert re.search(r"MVC reference \(uV\)</t[dh]><td>[0-9.]+, none<", html), html[html.find("MVC") :][:200]


def _cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``closedloop replay ARGS`` in a subprocess (the worktree's code, whatever the working directory)."""
    import os

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "closedloop", "replay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def test_out_dirs_are_unique_across_the_batch_and_follow_the_input_order(tmp_path):
    from experiments.replay import _out_dirs

    def names(*files: str) -> list[str]:
        return [d.name for d in _out_dirs([Path(f) for f in files], tmp_path)]

    # the second a.edf must not take a-2, which is a-2.edf's own name
    assert names("a.edf", "a.edf", "a-2.edf") == ["a", "a-3", "a-2"]
    assert names("a-2.edf", "a.edf", "a.edf", "a.edf", "a-3.fif") == ["a-2", "a", "a-4", "a-5", "a-3"]
    assert names("x/session.xdf", "y/x-replay.edf", "z/x/session.xdf") == ["x-replay", "x-replay-2", "x-replay-3"]
    assert names("A.edf", "a.edf") == ["A", "a-2"]  # distinct on a case-insensitive file system too


def test_a_file_named_like_a_generated_folder_does_not_collide(tmp_path):
    a, a2 = tmp_path / "a.edf", tmp_path / "a-2.edf"
    _edf(a, 1)
    _edf(a2, 2)
    results = replay_batch([a, a, a2], tmp_path / "o", ReplayOptions(report=False), jobs=2)
    assert [r.status for r in results] == ["completed"] * 3, [r.error for r in results]
    assert len({r.out_dir for r in results}) == 3
    assert Path(results[2].out_dir).name == "a-2"
    assert json.loads((Path(results[2].out_dir) / "summary.json").read_text())["replay"]["file"] == str(a2)


def test_replays_started_in_the_same_second_get_their_own_default_folders(tmp_path, monkeypatch):
    import datetime

    from closedloop import cli

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(cli, "_dt", types.SimpleNamespace(datetime=Frozen))  # the CLI's clock only
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.edf", tmp_path / "b.edf"
    _edf(a, 1)
    _edf(b, 2)
    assert cli.main(["replay", str(a), "--no-report", "--jobs", "1"]) == 0
    assert cli.main(["replay", str(b), "--no-report", "--jobs", "1"]) == 0
    first, second = tmp_path / "closedloop-replay-20260102-030405", tmp_path / "closedloop-replay-20260102-030405-2"
    for folder, path in ((first, a), (second, b)):
        with open(folder / "replay_summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["file"], r["status"]) for r in rows] == [(str(path), "completed")]


def test_a_second_replay_into_the_same_out_stops_before_touching_the_first(tmp_path, capsys):
    from closedloop.cli import main

    a = tmp_path / "a.edf"
    _edf(a, 1)
    out = tmp_path / "o"
    assert main(["replay", str(a), "--out", str(out), "--no-report", "--jobs", "1"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["replay", str(a), "--out", str(out), "--no-report", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"closedloop replay: error: {out}: already holds a replay's results (replay_summary.csv); "
        "choose another output folder or remove it"
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # no summary table, but the file's folder holds a session: refused too, and nothing is deleted
    (out / "replay_summary.csv").unlink()
    with pytest.raises(ConfigError, match=r"/o/a: already holds session files \(session.xdf, estimates.csv"):
        replay_batch([a], out, ReplayOptions(report=False), jobs=1)
    assert not (out / "replay_summary.csv").exists()
    assert (out / "a" / "session.xdf").read_bytes() == before[out / "a" / "session.xdf"]


@pytest.mark.parametrize(
    "where, problem",
    [("file", "not a folder (a file of that name exists)"), ("file/sub", "cannot create the folder: Not a directory")],
)
def test_an_out_folder_that_cannot_be_made_is_a_one_line_usage_error(tmp_path, where, problem):
    a = tmp_path / "a.edf"
    _edf(a, 1)
    (tmp_path / "file").write_text("mine")
    out = tmp_path / where
    r = _cli(str(a), "--out", str(out), "--no-report")
    assert r.returncode == 2
    assert r.stderr.strip() == f"closedloop replay: error: --out {out}: {problem}"
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize(
    "text, problem",
    [(",", "no channel names"), ("", "no channel names"), ("EMG1,,EMG2", "an empty channel name")],
)
def test_an_empty_channel_list_or_name_says_so(tmp_path, capsys, text, problem):
    from closedloop.cli import main

    a = tmp_path / "a.edf"
    _edf(a, 1)
    assert main(["replay", str(a), "--channels", text, "--out", str(tmp_path / "o"), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"closedloop replay: error: --channels {text!r}: {problem}; give names separated by commas (e.g. EMG1,EMG2)"
    )
    assert not (tmp_path / "o").exists()
    # the library says the same of a name list with an empty name (not 'given more than once')
    r = replay_file(a, tmp_path / "lib", ReplayOptions(report=False, channels=("EMG1", "", "")))
    assert not r.ok and r.error == "channels: an empty channel name in ['EMG1', '', '']"


@pytest.mark.parametrize("bad", ["missing.edf", "corrupt.fif"])
def test_publish_lsl_checks_the_file_before_announcing_and_exits_as_the_batch_does(tmp_path, bad):
    path = tmp_path / bad
    if bad == "corrupt.fif":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    batch = _cli(str(path), "--out", str(tmp_path / "o"), "--no-report")
    published = _cli(str(path), "--publish-lsl", "--loopback")
    assert batch.returncode == published.returncode == 1
    assert "publishing" not in published.stdout
    assert published.stderr.strip().startswith(f"closedloop replay: error: {path}: ")
    assert len(published.stderr.strip().splitlines()) == 1 and "Traceback" not in published.stderr


@pytest.mark.parametrize("late", ["jitter 0-1 sample", "2 samples", "4 samples"])
def test_late_pulse_markers_leave_the_artifact_out_of_the_effort(tmp_path, late):
    """Markers stamped up to 2 ms after the stimulator fired (software triggers): the artifact's first samples are
    no longer left at the end of the previous interval, where they counted as volitional EMG (one sample of jitter
    made the median effort ~9 times too large). The effort is that of the recording with exact markers."""
    fs = 2048.0
    rng = np.random.default_rng(13)
    x = rng.normal(0, 50e-6, (2, 10 * 2048))
    onsets = np.arange(0.05, 9.99, 0.04)
    at = np.round(onsets * fs).astype(int)
    for k in range(4):
        x[:, at + k] += 5e-3 * np.exp(-k)
    delay = {"jitter 0-1 sample": rng.integers(0, 2, at.size), "2 samples": 2, "4 samples": 4}[late]
    medians = {}
    for name, times in (("exact", at / fs), ("late", (at + delay) / fs)):
        raw = mne.io.RawArray(x, mne.create_info(["EMG1", "EMG2"], fs, "emg"), verbose="error")
        raw.set_annotations(mne.Annotations(times, 0.0, ["stim"] * times.size))
        path = tmp_path / f"{name}_raw.fif"
        raw.save(path, verbose="error")
        res = replay_file(path, tmp_path / name, ReplayOptions(report=False))
        assert res.ok and res.values["pulses"] == onsets.size
        medians[name] = res.values["effort_median_uv"]
    # the noise's RMS is 50 uV before the band-pass; the artifact's 5 mV would dominate any window it enters
    assert 20 < medians["exact"] < 60
    assert medians["late"] == pytest.approx(medians["exact"], rel=0.1)


def test_output_folders_keep_the_dots_of_the_file_names(tmp_path):
    from experiments.replay import _out_dirs

    files = [Path(n) for n in ("S01.run1.edf", "S01.run2.edf", "S01.edf", "d/rec.fif.gz", "spike_0.01.fif")]
    assert [d.name for d in _out_dirs(files, tmp_path)] == ["S01.run1", "S01.run2", "S01", "rec", "spike_0.01"]


def test_piped_output_closed_early_loses_nothing(tmp_path):
    """`closedloop replay ... | head -1`: the reader goes away after one line; every file is still replayed and the
    summary table written, without a traceback."""
    files = [tmp_path / f"good{i}.edf" for i in range(3)]
    for i, f in enumerate(files):
        _edf(f, i)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "closedloop",
        "replay",
        *map(str, files),
        "--jobs",
        "1",
        "--no-report",
        "--out",
        str(out),
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        p.stdout.readline()
        p.stdout.close()  # as `head -1` does
        err = p.stderr.read().decode()
        assert p.wait(timeout=300) == 0, err
    assert "Traceback" not in err
    with open(out / "replay_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed"] * 3


def _xdf_with_timestamps(path: Path, ts: np.ndarray, rate: float) -> None:
    from closedloop.recording.xdf import XDFWriter

    x = np.random.default_rng(3).normal(0.0, 40.0, (ts.size, 2)).astype(np.float32)
    with XDFWriter(path) as w:
        emg = w.add_stream("EMG", "EMG", ("EMG1", "EMG2"), ("microvolts",), rate, "float32", source_id="amp")
        for a in range(0, ts.size, 512):
            w.write_samples(emg, x[a : a + 512], ts[a : a + 512])


def test_a_recording_with_lost_samples_or_a_drifting_clock_replays_with_a_note(tmp_path):
    """Timestamps with a 1-s gap (samples lost while recording), or running 2.4 % fast: the samples replay back to
    back (the live stream's rate check does not apply to a file) and the result says what the timestamps show."""
    rate = 2048.0
    n = 5 * 2048
    ts = 100.0 + np.arange(n) / rate
    ts[n // 2 :] += 1.0  # 2048 samples missing
    _xdf_with_timestamps(tmp_path / "gap.xdf", ts, rate)
    _xdf_with_timestamps(tmp_path / "drift.xdf", 100.0 + np.arange(n) / (rate * 1.024), rate)
    # LSL stamps a chunk on arrival (its earlier samples backdated at the nominal rate): 0-12 ms of jitter per
    # 32-sample chunk, no sample lost: nothing to say
    k = np.arange(n) // 32
    arrival = np.random.default_rng(8).uniform(0.0, 0.012, k[-1] + 1)
    jitter = 100.0 + (k + 1) * 32 / rate + arrival[k] - (31 - np.arange(n) % 32) / rate
    _xdf_with_timestamps(tmp_path / "jitter.xdf", jitter, rate)
    gap = replay_file(tmp_path / "gap.xdf", tmp_path / "o1", ReplayOptions(report=False))
    drift = replay_file(tmp_path / "drift.xdf", tmp_path / "o2", ReplayOptions(report=False))
    jittery = replay_file(tmp_path / "jitter.xdf", tmp_path / "o3", ReplayOptions(report=False))
    assert gap.ok and drift.ok and jittery.ok, (gap.error, drift.error, jittery.error)
    assert "1 gap(s) in the EMG timestamps (longest 1 s, about 2048 samples missing)" in gap.hint
    assert "2097.2 samples/s for a declared 2048 Hz" in drift.hint
    assert "timestamps" not in jittery.hint, jittery.hint
    assert gap.values["intervals"] > 0 and drift.values["intervals"] > 0


def test_a_file_that_fails_midway_is_failed_with_the_file_named_once(tmp_path):
    """A FIF cut in half opens (its header is whole) and fails when its samples are read: status failed, the
    reader's message with the file's name, no class name, no real-time figure."""
    f = tmp_path / "whole_raw.fif"
    info = mne.create_info(["EMG1", "EMG2"], 2048.0, "emg")
    raw = mne.io.RawArray(np.random.default_rng(0).normal(0, 5e-5, (2, 2048 * 5)), info, verbose="error")
    raw.set_annotations(mne.Annotations(np.arange(0.1, 4.9, 0.04), 0.0, "stim"))  # no detection pass at opening
    raw.save(f, verbose="error")
    cut = tmp_path / "cut_raw.fif"
    data = f.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    r = replay_file(cut, tmp_path / "o", ReplayOptions(report=False))
    assert r.status == "failed"
    assert r.error.startswith(f"{cut}: ") or r.error.startswith("cut_raw.fif: "), r.error
    assert "Error:" not in r.error.split(":")[0] and "FileFormatError" not in r.error
    assert r.values["x_real_time"] == ""


def test_a_session_with_an_unusable_summary_is_a_clear_error(tmp_path):
    live = tmp_path / "live"
    _live_session(live, seconds=8.0)
    s = json.loads((live / "summary.json").read_text())
    del s["limits"]
    (live / "summary.json").write_text(json.dumps(s))
    r = replay_file(live / "session.xdf", tmp_path / "o", ReplayOptions(report=False))
    assert r.status == "failed"
    assert "summary.json: not a closedloop session summary this version can use (no 'limits')" in r.error


def test_a_truncated_xdf_replays_what_it_holds_and_says_so(tmp_path):
    ts = 100.0 + np.arange(6 * 2048) / 2048.0
    whole = tmp_path / "whole.xdf"
    _xdf_with_timestamps(whole, ts, 2048.0)
    data = whole.read_bytes()
    cut = tmp_path / "cut.xdf"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    r = replay_file(cut, tmp_path / "o", ReplayOptions(report=False))
    assert r.ok, r.error
    assert "corruption" in r.hint, r.hint
    assert 0 < r.values["duration_s"] < 6.0


def test_a_session_without_its_summary_replays_with_the_defaults_and_says_so(tmp_path):
    live = tmp_path / "live"
    _live_session(live, seconds=8.0)
    (live / "summary.json").unlink()  # as a session killed before its end leaves it
    r = replay_file(live / "session.xdf", tmp_path / "o", ReplayOptions(report=False))
    assert r.ok, r.error
    assert "no summary.json beside this session.xdf: replayed with the default settings" in r.hint
