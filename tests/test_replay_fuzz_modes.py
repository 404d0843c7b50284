"""Replay modes under abuse: interrupted batches, --publish-lsl's options, Dask schedulers that are wrong or go away."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mne
import numpy as np
import pytest

from experiments.replay import ReplayOptions, replay_batch, replay_file

ROOT = Path(__file__).resolve().parents[1]


def _edf(path: Path, seed: int, seconds: float = 3.0) -> None:
    """A 3-channel EMG recording at 2000 Hz with 'stim' annotations at 30 Hz."""
    rng = np.random.default_rng(seed)
    fs = 2000.0
    x = rng.normal(0, 50e-6, (3, int(seconds * fs)))
    raw = mne.io.RawArray(x, mne.create_info(["EMG1", "EMG2", "EMG3"], fs, "emg"), verbose="error")
    onsets = np.arange(0.5, seconds - 0.5, 1 / 30)
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["stim"] * onsets.size))
    mne.export.export_raw(path, raw, overwrite=True, verbose="error")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _start(*args: str) -> subprocess.Popen:
    """``closedloop replay ARGS`` started in a session of its own (to be signalled, or killed with its workers)."""
    cmd = [sys.executable, "-m", "closedloop", "replay", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True
    )


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "closedloop", "replay", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _rows(out: Path) -> list[dict]:
    with open(out / "replay_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("jobs, sig", [(1, signal.SIGINT), (2, signal.SIGINT), (2, signal.SIGTERM)])
def test_an_interrupted_batch_stops_and_starts_no_other_file(tmp_path, jobs, sig):
    """SIGINT/SIGTERM sent to the replay (kill -INT PID, a scheduler's stop) ends the batch (exit 130, as the CLI
    says of interrupted commands): the files under way stop, no other file starts, every file has its row, no
    worker process is left. Before, the batch went on with the other files (or its workers did, orphaned)."""
    files = [tmp_path / f"f{i}.edf" for i in range(2 * jobs + 1)]
    for i, f in enumerate(files):
        _edf(f, i, seconds=8.0)
    out = tmp_path / "out"
    args = ["--speed", "1", "--jobs", str(jobs), "--out", str(out), "--no-report"]
    p = _start(*map(str, files), *args)
    try:
        deadline = time.monotonic() + 60.0  # the first replays have started (their session files exist), none ended
        while not list(out.glob("*/session.xdf")) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        t = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=40)
        took = time.monotonic() - t
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err
    assert f"closedloop replay: interrupted ({sig.name})" in err and "Traceback" not in err
    assert took < 15  # the files would take 8 s each at --speed 1
    rows = _rows(out)
    assert [Path(r["file"]).name for r in rows] == [f.name for f in files]
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= {"stopped", "interrupted"} and statuses[-1] == "interrupted", statuses
    for r in rows:
        if r["status"] == "stopped":
            assert r["error"] == f"received {sig.name}"
            summary = json.loads((Path(r["out_dir"]) / "summary.json").read_text())
            # the recording's length, and how much of it was replayed before the stop (as summary.json says)
            assert float(r["duration_s"]) == 8.0
            assert 0 < float(r["replayed_s"]) < 8.0
            assert float(r["replayed_s"]) == pytest.approx(summary["duration_s"], abs=1e-3)
    time.sleep(0.5)
    assert [c for c in children if Path(f"/proc/{c}").exists()] == []


def test_publish_lsl_refuses_the_options_it_would_ignore(tmp_path):
    """--publish-lsl writes nothing and runs no estimator: --out, --protocol, --scheduler, --jobs would be silently
    ignored, and --speed max silently became real time. Each is now a one-line usage error, nothing published."""
    f = tmp_path / "rec.edf"
    _edf(f, 1)
    proto = ROOT / "experiments" / "assisted_contraction.toml"
    for extra, named in (
        (["--out", str(tmp_path / "o")], "--out"),
        (["--protocol", str(proto)], "--protocol"),
        (["--jobs", "2"], "--jobs"),
        (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler"),
        (["--speed", "max"], "--speed max"),
    ):
        r = _cli(str(f), "--publish-lsl", "--loopback", *extra)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        assert "publishing" not in r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("closedloop replay: error: --publish-lsl") and named in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("address", ["notanaddress", "tcp://127.0.0.1:1"])
def test_a_scheduler_that_cannot_be_reached_is_a_one_line_error(tmp_path, address):
    """Before: a traceback from distributed, and an empty --out folder left behind."""
    pytest.importorskip("distributed")
    f = tmp_path / "rec.edf"
    _edf(f, 2)
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        r = _cli(str(f), "--out", str(tmp_path / "o"), "--no-report", "--scheduler", address, timeout=90)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"closedloop replay: error: --scheduler {address!r}: "), r.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as c:
        yield c


def test_dask_workers_are_given_absolute_paths(tmp_path, cluster, monkeypatch):
    """A file, output folder and protocol given relative to where the replay runs are found by the workers
    (whose working folder is their own); before, every file was 'no such file' (or another folder's file was
    replayed, and the results written where the worker runs)."""
    from distributed import Client

    d = tmp_path / "here"
    (d / "sub").mkdir(parents=True)
    _edf(d / "sub" / "rec.edf", 3, seconds=8.0)
    proto = (ROOT / "experiments" / "assisted_contraction.toml").read_text()
    (d / "p.toml").write_text(proto)
    monkeypatch.chdir(d)  # after the workers started: they stay where they were
    with Client(cluster) as client:
        (r,) = replay_batch(["sub/rec.edf"], "out", ReplayOptions(report=False, protocol="p.toml"), scheduler=client)
    assert r.ok, r.error
    assert r.file == "sub/rec.edf" and r.out_dir == "out/rec"  # told as given
    assert (d / "out" / "rec" / "estimates.csv").exists()
    assert _rows(d / "out")[0]["status"] == "completed"
    assert r.values["shadow_pulses"] > 0  # the protocol's controller ran (control from 5 s)


def test_a_dask_cluster_that_goes_away_fails_its_files_instead_of_raising_or_hanging(tmp_path):
    """The scheduler lost mid-batch: each file failed with the reason, replay_summary.csv written (before: a
    FutureCancelledError traceback, no summary). A cluster without workers: the waiting files fail after Dask's
    connect timeout (before: the batch waited forever)."""
    distributed = pytest.importorskip("distributed")
    import dask

    files = [tmp_path / f"f{i}.edf" for i in range(2)]
    for i, f in enumerate(files):
        _edf(f, 10 + i, seconds=8.0)
    got: dict = {}

    def run(out: Path, client) -> None:
        try:
            got[out.name] = replay_batch(files, out, ReplayOptions(report=False, speed=1.0), scheduler=client)
        except BaseException as exc:  # the test says what was raised
            got[out.name] = exc

    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        client = distributed.Client(cluster)
        t = threading.Thread(target=run, args=(tmp_path / "lost", client), daemon=True)
        t.start()
        time.sleep(3.0)
        cluster.close()  # scheduler and worker gone
        t.join(60)
        client.close()
        assert not t.is_alive()
        results = got["lost"]
        assert isinstance(results, list), results
        assert [r.status for r in results] == ["failed", "failed"]
        for r in results:  # the scheduler's loss, or its workers' first (cluster.close() stops those first)
            assert r.error.startswith((f"{r.file}: on Dask: ", f"{r.file}: not replayed: the Dask cluster")), r.error
        assert [row["status"] for row in _rows(tmp_path / "lost")] == ["failed", "failed"]

        with (
            distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as empty,
            distributed.Client(empty) as client,
        ):
            t = threading.Thread(target=run, args=(tmp_path / "empty", client), daemon=True)
            t.start()
            t.join(30)
            assert not t.is_alive(), "a batch on a cluster without workers waited forever"
        results = got["empty"]
        assert [r.status for r in results] == ["failed", "failed"]
        assert all("the Dask cluster has had no workers for 3 s" in r.error for r in results)


def test_a_session_puts_back_the_signal_handlers_it_replaced(tmp_path):
    """A session handles SIGINT/SIGTERM itself while it runs; after it, the handlers from before it are back (the
    batch's own, which stop the batch), not Python's defaults (asyncio's removal of a handler leaves those)."""
    from experiments.replay import replay_file

    f = tmp_path / "r.edf"
    _edf(f, 7, seconds=2.0)
    seen: list[int] = []

    def mine(signum, frame):
        seen.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in before:
            signal.signal(s, mine)
        r = replay_file(f, tmp_path / "out", ReplayOptions(report=False))
        assert r.ok, r.error
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        os.kill(os.getpid(), signal.SIGTERM)  # reaches the handler from before (the default would end pytest)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_the_printed_table_tells_files_of_the_same_name_apart(capsys):
    """Two files named alike in different folders: the printed table shows their paths (their rows would read
    the same otherwise); distinct names stay short."""
    from closedloop.cli import _print_table
    from experiments.replay import ReplayResult

    _print_table([ReplayResult("a/rec.edf", "completed", "", "o/rec"), ReplayResult("b/rec.edf", "failed", "x", "")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("a/rec.edf ") and lines[2].startswith("b/rec.edf ")
    _print_table([ReplayResult("a/one.edf", "completed", "", ""), ReplayResult("b/two.edf", "completed", "", "")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("one.edf ") and lines[2].startswith("two.edf ")


def test_a_file_that_could_not_start_gets_no_hint_about_its_pulses(tmp_path):
    """A replay into a folder that already holds a session fails before any sample is read: the error says so,
    and the hint did say "no pulses; the file's annotations are 'stim'" as if its pulses had not been found."""
    f = tmp_path / "rec.edf"
    _edf(f, 3)
    first = replay_file(f, tmp_path / "o", ReplayOptions(report=False))
    assert first.ok, first.error
    assert first.values["pulses"] > 0 and first.hint == ""
    assert first.values["replayed_s"] == pytest.approx(first.values["duration_s"], abs=1e-3)
    again = replay_file(f, tmp_path / "o", ReplayOptions(report=False))
    assert again.status == "failed" and "cannot create the session files" in again.error
    assert "pulses" not in again.hint and again.values["replayed_s"] == 0.0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_publish_lsl_stopped_by_a_signal_ends_as_interrupted(tmp_path, sig):
    """``kill -INT`` or ``kill -TERM`` to a republishing replay ends it as an interrupted command (exit 130, one
    line), well before the recording's end, not killed with a traceback or Python's default SIGTERM death."""
    f = tmp_path / "rec.edf"
    _edf(f, 2, seconds=30.0)
    p = _start(str(f), "--publish-lsl", "--loopback", "--speed", "1")
    try:
        line = p.stdout.readline()  # "publishing ..." once the outlets are open
        assert "publishing" in line, line
        time.sleep(0.5)
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "closedloop replay: interrupted" and "Traceback" not in err
    assert "published" not in out  # stopped, not run to its end
