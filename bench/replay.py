"""Replay speed: a 64-channel x 2048-Hz recording through the whole pipeline, against reading it with MNE.

    python bench/replay.py [--seconds S] [--channels N] [--rate HZ] [--stim-hz F] [--format fif|edf]

Writes a recording (simulated EMG with stimulation artifacts and pulse annotations) to a temporary
folder, then in the same run times (a) MNE alone reading the whole file (``read_raw_*`` + ``get_data``) and
(b) ``closedloop replay`` of it as fast as possible on one core: reading in chunks, pulse-synchronous
estimation (nlms), estimates.csv and summary.json (no report). Prints seconds, the multiple of real time
and the ratio. Threads are pinned to one.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mne  # noqa: E402
import numpy as np  # noqa: E402

from experiments.replay import ReplayOptions, replay_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from estimators import make_signal  # noqa: E402


def write_recording(path: Path, n_ch: int, rate: float, seconds: float, stim_hz: float) -> None:
    x, pulses = make_signal(n_ch, rate, seconds, stim_hz)
    info = mne.create_info([f"EMG{i + 1}" for i in range(n_ch)], rate, "emg")
    raw = mne.io.RawArray(x.T.astype(np.float64) * 1e-6, info, verbose="error")
    raw.set_annotations(mne.Annotations(pulses / rate, 0.0, ["stim"] * pulses.size))
    if path.suffix == ".fif":
        raw.save(path, overwrite=True, verbose="error")
    else:
        mne.export.export_raw(path, raw, overwrite=True, verbose="error")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--rate", type=float, default=2048.0)
    ap.add_argument("--stim-hz", type=float, default=30.0, help="0: no pulses (the replay then scans for artifacts)")
    ap.add_argument("--format", choices=("fif", "edf"), default="fif")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench_raw.{args.format}"
        write_recording(path, args.channels, args.rate, args.seconds, args.stim_hz)
        read = mne.io.read_raw_fif if args.format == "fif" else mne.io.read_raw_edf
        t_mne, t_rep = [], []
        for k in range(args.repeat):
            t0 = time.perf_counter()
            raw = read(path, preload=False, verbose="error")
            raw.get_data()
            t_mne.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = replay_file(path, Path(tmp) / f"out{k}", ReplayOptions(report=False))
            t_rep.append(time.perf_counter() - t0)
            if not res.ok:
                raise SystemExit(f"replay failed: {res.error}")
        m, r = min(t_mne), min(t_rep)
        samples = args.seconds * args.rate * args.channels
        print(
            f"# replay, {args.channels} ch x {args.rate:g} Hz, {args.seconds:g} s, pulses at {args.stim_hz:g} Hz "
            f"({res.values['pulses']} pulses), {args.format.upper()}, one thread, best of {args.repeat}"
        )
        print("| what | seconds | x real time | channel-samples/s |")
        print("|---|---|---|---|")
        print(f"| MNE read_raw + get_data | {m:.3f} | {args.seconds / m:.0f}x | {samples / m / 1e6:.1f} M |")
        print(
            f"| closedloop replay (estimates.csv, summary.json) | {r:.3f} | {args.seconds / r:.0f}x | "
            f"{samples / r / 1e6:.1f} M |"
        )
        print(f"\nreplay / MNE read: {r / m:.1f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "args": vars(args),
                        "replay_s": r,
                        "mne_s": m,
                        "x_real_time": args.seconds / r,
                        "pulses": res.values["pulses"],
                    },
                    f,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
