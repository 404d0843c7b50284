"""Estimator cost per pulse interval and sustained throughput on one core, against plain scipy.

    python bench/estimators.py [--seconds S] [--channels 4,64,256] [--rate HZ] [--stim-hz F]

For each channel count it runs the full :class:`~closedloop.estimation.interval.IntervalEstimator` (artifact
location and blanking, band-pass, M-wave, volitional method, streaming Welch spectral indices, M-wave
fatigue index) over simulated EMG with pulses at ``--stim-hz``, one pulse interval per call as in the live
loop, and in the same run a baseline doing the least a hand-written loop would do per interval: ``sosfilt``
with carried ``zi`` (the same 4th-order band-pass) and an RMS. It prints the median and p99 time per pulse
interval, the sustained channel-samples per second (and the multiple of real time), and the ratio to the
baseline. Threads are pinned to one (BLAS/OpenMP) so the figures are per core.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

from closedloop.estimation.filters import bandpass_sos  # noqa: E402
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator  # noqa: E402
from closedloop.estimation.segmenter import Interval  # noqa: E402
from closedloop.estimation.volitional import METHODS  # noqa: E402
from closedloop.types import StreamInfo  # noqa: E402


def make_signal(n_ch: int, rate: float, seconds: float, stim_hz: float, seed: int = 0):
    """Band-limited noise plus a repeating artifact and M-wave at every pulse (cheap to make for 256 ch)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    b, a = signal.butter(2, [30, 150], btype="bandpass", fs=rate)
    x = signal.lfilter(b, a, rng.standard_normal((n, n_ch)), axis=0) * 100.0
    period = rate / stim_hz
    pulses = np.round(np.arange(0, n - period, period)).astype(int)
    t = np.arange(int(period)) / rate
    mwave = np.where((t > 0.004) & (t < 0.014), 2000 * np.sin(2 * np.pi * 100 * (t - 0.004)), 0.0)
    wave = 4000 * np.exp(-t / 0.0005) + mwave
    for p in pulses:
        seg = wave[: min(wave.size, n - p)]
        x[p : p + seg.size] += seg[:, None] * rng.uniform(0.9, 1.1)
    return x.astype(np.float32), pulses


def intervals(x: np.ndarray, pulses: np.ndarray, rate: float):
    ts = np.arange(x.shape[0]) / rate
    bounds = [*pulses.tolist(), x.shape[0]]
    return [(Interval(k, a, x[a:b], ts[a:b]), [ts[a]]) for k, (a, b) in enumerate(itertools.pairwise(bounds))]


def time_estimator(ivs, info: StreamInfo, method: str) -> np.ndarray:
    est = IntervalEstimator(info, EstimatorConfig(method=method))
    out = np.empty(len(ivs))
    for i, (iv, pt) in enumerate(ivs):
        t0 = time.perf_counter()
        est.step(iv, pt, 10.0)
        out[i] = time.perf_counter() - t0
    return out


def time_baseline(ivs, n_ch: int, rate: float) -> np.ndarray:
    sos = bandpass_sos(20, 450, rate, 4)
    zi = np.zeros((sos.shape[0], 2, n_ch))
    out = np.empty(len(ivs))
    for i, (iv, _) in enumerate(ivs):
        t0 = time.perf_counter()
        y, zi = signal.sosfilt(sos, iv.samples, axis=0, zi=zi)
        np.sqrt(np.mean(y * y, axis=0))
        out[i] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--channels", default="4,64,256")
    ap.add_argument("--rate", type=float, default=2048.0)
    ap.add_argument("--stim-hz", type=float, default=50.0)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    rate = args.rate
    print(
        f"# estimators, {args.seconds:g} s per run at {rate:g} Hz, pulses at {args.stim_hz:g} Hz; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, one thread"
    )
    print(
        "| channels | method | per interval median / p99 (ms) | channel-samples/s | x real time | "
        "baseline sosfilt+RMS median (ms) | ratio to baseline |"
    )
    print("|---|---|---|---|---|---|---|")
    for n_ch in (int(c) for c in args.channels.split(",")):
        x, pulses = make_signal(n_ch, rate, args.seconds, args.stim_hz)
        info = StreamInfo("bench", "EMG", rate, tuple(f"c{i}" for i in range(n_ch)), ("uV",))
        ivs = intervals(x, pulses, rate)
        base = time_baseline(ivs, n_ch, rate)
        for method in args.methods.split(","):
            t = time_estimator(ivs, info, method)
            thr = x.shape[0] * n_ch / t.sum()
            print(
                f"| {n_ch} | {method} | {np.median(t) * 1e3:.3f} / {np.percentile(t, 99) * 1e3:.3f} | "
                f"{thr / 1e6:.2f} M | {x.shape[0] / rate / t.sum():.0f}x | {np.median(base) * 1e3:.3f} | "
                f"{t.sum() / base.sum():.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
