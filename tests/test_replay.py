"""Replay: recordings through the same pipeline, in batch, on Dask, and republished over LSL."""

import asyncio
import csv
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import mne
import numpy as np
import pytest

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import demo_profile
from acquisition.simulator.source import SimulatedParticipant
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
