"""Replay speed: a 64-channel x 2048-Hz recording through the whole pipeline, against reading it with MNE.

    python bench/replay.py [--seconds S] [--channels N] [--rate HZ] [--stim-hz F] [--format fif|edf]

Writes a recording (simulated EMG with stimulation artifacts and pulse annotations) to a temporary
folder, then in the same run times, interleaved, ``--repeat`` times each:

(a) MNE alone reading the whole file (``read_raw_*`` + ``get_data``);
(b) ``closedloop replay`` of it as fast as possible on one core: reading in chunks, pulse-synchronous
    estimation (nlms), estimates.csv, session.xdf and summary.json (no report), with the compiled kernels
    (numba) as a replay uses them;
(c) the same with numpy only (``compiled=False``: the same numbers, what a machine without numba gets).

Prints the best (least) and median seconds of each, the multiple of real time and the ratio to MNE's read;
and, measured in a fresh process, the one-time cost of loading the compiled kernels (numba's start and the
loading of the cached machine code) that a replay process pays before its first file. Threads are pinned to
one (BLAS/OpenMP); each replay is timed on the wall clock and on the process's CPU clock (the machine may
be shared: CPU time is what the replay itself used).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mne  # noqa: E402
import numpy as np  # noqa: E402

from closedloop.estimation import kernels  # noqa: E402
from experiments.replay import ReplayOptions, replay_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from estimators import make_signal  # noqa: E402

_LOAD = (
    "import time; t = time.perf_counter(); from closedloop.estimation import kernels; k = kernels.load(); "
    "print(time.perf_counter() - t if k is not None else 'nan')"
)


def write_recording(path: Path, n_ch: int, rate: float, seconds: float, stim_hz: float) -> None:
    x, pulses = make_signal(n_ch, rate, seconds, stim_hz)
    info = mne.create_info([f"EMG{i + 1}" for i in range(n_ch)], rate, "emg")
    raw = mne.io.RawArray(x.T.astype(np.float64) * 1e-6, info, verbose="error")
    raw.set_annotations(mne.Annotations(pulses / rate, 0.0, ["stim"] * pulses.size))
    if path.suffix == ".fif":
        raw.save(path, overwrite=True, verbose="error")
    else:
        mne.export.export_raw(path, raw, overwrite=True, verbose="error")


def kernel_load_s() -> float:
    """Seconds a fresh process takes to load the compiled kernels (NaN without numba)."""
    out = subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--rate", type=float, default=2048.0)
    ap.add_argument("--stim-hz", type=float, default=30.0, help="0: no pulses (the replay then scans for artifacts)")
    ap.add_argument("--format", choices=("fif", "edf"), default="fif")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    load_s = kernel_load_s()
    compiled = kernels.load() is not None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench_raw.{args.format}"
        write_recording(path, args.channels, args.rate, args.seconds, args.stim_hz)
        read = mne.io.read_raw_fif if args.format == "fif" else mne.io.read_raw_edf
        modes = {"mne": None, "compiled": True, "numpy": False} if compiled else {"mne": None, "numpy": False}
        wall: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        pulses = 0

        def mne_read() -> None:
            read(path, preload=False, verbose="error").get_data()

        def replay(k: int, use: bool):
            def run() -> None:
                nonlocal pulses
                res = replay_file(path, Path(tmp) / f"out{k}-{use}", ReplayOptions(report=False, compiled=use))
                if not res.ok:
                    raise SystemExit(f"replay failed: {res.error}")
                pulses = res.values["pulses"]

            return run

        for k in range(args.repeat + 1):  # the first round warms caches and is not counted
            for mode, use in modes.items():
                w, c = _timed(mne_read if use is None else replay(k, use))
                if k:
                    wall[mode].append(w)
                    cpu[mode].append(c)
        samples = args.seconds * args.rate * args.channels
        print(
            f"# replay, {args.channels} ch x {args.rate:g} Hz, {args.seconds:g} s, pulses at {args.stim_hz:g} Hz "
            f"({pulses} pulses), {args.format.upper()}, one thread, {args.repeat} rounds interleaved"
        )
        print("| what | wall s best / median | x real time (best) | CPU s best | ch-samples/s | / MNE read |")
        print("|---|---|---|---|---|---|")
        names = {
            "mne": "MNE read_raw + get_data",
            "compiled": "closedloop replay, compiled kernels (estimates.csv, session.xdf, summary.json)",
            "numpy": "closedloop replay, numpy only (CLOSEDLOOP_JIT=0)",
        }
        best = {m: min(wall[m]) for m in modes}
        for m in modes:
            med = float(np.median(wall[m]))
            print(
                f"| {names[m]} | {best[m]:.3f} / {med:.3f} | {args.seconds / best[m]:.0f}x | {min(cpu[m]):.3f} | "
                f"{samples / best[m] / 1e6:.1f} M | {best[m] / best['mne']:.1f} |"
            )
        print(
            "\nloading the compiled kernels in a fresh process (numba's start, cached machine code): "
            + (f"{load_s:.2f} s, once per process" if compiled else "numba not available")
        )
        if args.json:
            main_mode = "compiled" if compiled else "numpy"
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "args": vars(args),
                        "replay_s": best[main_mode],
                        "replay_numpy_s": best["numpy"],
                        "mne_s": best["mne"],
                        "x_real_time": args.seconds / best[main_mode],
                        "compiled": compiled,
                        "kernel_load_s": load_s,
                        "pulses": pulses,
                    },
                    f,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
