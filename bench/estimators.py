"""Estimator cost per pulse interval and sustained throughput on one core, against plain scipy.

    python -m bench.estimators [--seconds S] [--channels 4,64,256] [--rate HZ] [--stim-hz F] [--batch S]

For each channel count it runs the full :class:`~closedloop.estimation.interval.IntervalEstimator` (artifact
location and blanking, band-pass, M-wave, volitional method, streaming Welch spectral indices, M-wave
fatigue index) over simulated EMG with pulses at ``--stim-hz``:

* per interval: one pulse interval per ``step`` call (all of its work, the deferred spectral work included);
* live, left at the interval's end: ``step`` after the interval went through ``lookahead`` in chunks of 8
  samples, as in the live loop (the decision waits for this much);
* batched: ``--batch`` seconds of consecutive pulse intervals per ``step_many`` call, as a replay feeds
  them, with the compiled kernels a replay uses and with numpy only (``--batch 0``: per interval only);

and in the same run a baseline doing the least a hand-written loop would do per interval: ``sosfilt`` with
carried ``zi`` (the same 4th-order band-pass) and an RMS, per interval and over the same batches (one
``sosfilt`` per batch, an RMS per interval). It prints the median and p99 time per pulse interval, the
sustained channel-samples per second of both modes (and the multiple of real time of the batched one), the
baselines' channel-samples per second and the ratio of the batched throughput to the per-interval
baseline.
Threads are pinned to one (BLAS/OpenMP) so the figures are per core; each mode is timed ``--repeat``
times on fresh estimators and the best run is kept (the machine may be shared).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

from closedloop.estimation import kernels  # noqa: E402
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
    if stim_hz <= 0:  # no stimulation
        return x.astype(np.float32), np.empty(0, dtype=int)
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
    """Seconds per ``step`` call, one pulse interval each."""
    est = IntervalEstimator(info, EstimatorConfig(method=method))
    out = np.empty(len(ivs))
    for i, (iv, pt) in enumerate(ivs):
        t0 = time.perf_counter()
        est.step(iv, pt, 10.0)
        out[i] = time.perf_counter() - t0
    return out


def _summary_ms(t: np.ndarray) -> dict:
    return {"median": float(np.median(t) * 1e3), "p99": float(np.percentile(t, 99) * 1e3)}


def time_live(ivs, info: StreamInfo, method: str, chunk: int = 8) -> np.ndarray:
    """Seconds per ``step`` when each interval was handed to ``lookahead`` chunk by chunk first, as the live
    loop does: the work left when an interval's last chunk arrives (``settle`` runs after, untimed, as it
    runs after the pulse)."""
    est = IntervalEstimator(info, EstimatorConfig(method=method))
    out = np.empty(len(ivs))
    for i, (iv, pt) in enumerate(ivs):
        for k in range(chunk, iv.samples.shape[0], chunk):
            est.lookahead(iv, k, pt)
        t0 = time.perf_counter()
        est.step(iv, pt, 10.0)
        out[i] = time.perf_counter() - t0
        est.settle()
    return out


def batches(ivs, rate: float, batch_s: float) -> list[tuple[list, list, list]]:
    """The intervals in consecutive groups of about ``batch_s`` seconds: ``step_many``'s arguments."""
    out, cur, n = [], [], 0
    for iv, pt in ivs:
        cur.append((iv, pt))
        n += iv.samples.shape[0]
        if n >= batch_s * rate:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return [([iv for iv, _ in g], [pt for _, pt in g], [10.0] * len(g)) for g in out]


def time_batched(groups, info: StreamInfo, method: str, compiled: bool = True) -> float:
    """Seconds for all ``step_many`` calls (with the compiled kernels, as a replay uses them, or numpy only)."""
    est = IntervalEstimator(info, EstimatorConfig(method=method), compiled=compiled)
    t0 = time.perf_counter()
    for g in groups:
        est.step_many(*g)
    return time.perf_counter() - t0


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


def time_baseline_batched(groups, n_ch: int, rate: float) -> float:
    """Seconds for ``sosfilt`` (carried ``zi``) over each batch and an RMS per interval."""
    sos = bandpass_sos(20, 450, rate, 4)
    zi = np.zeros((sos.shape[0], 2, n_ch))
    t0 = time.perf_counter()
    for ivs, _, _ in groups:
        lens = np.array([iv.samples.shape[0] for iv in ivs])
        y, zi = signal.sosfilt(sos, np.concatenate([iv.samples for iv in ivs]), axis=0, zi=zi)
        np.sqrt(np.add.reduceat(y * y, np.r_[0, np.cumsum(lens)[:-1]], axis=0) / lens[:, None])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--channels", default="4,64,256")
    ap.add_argument("--rate", type=float, default=2048.0)
    ap.add_argument("--stim-hz", type=float, default=50.0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", type=float, default=1.0, help="seconds of intervals per step_many call (0: none)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per mode; the best is reported")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    rate = args.rate
    kernels.load()  # numba's start and the loading of the kernels: not part of any timed run
    print(
        f"# estimators, {args.seconds:g} s per run at {rate:g} Hz, pulses at {args.stim_hz:g} Hz, batches of "
        f"{args.batch:g} s; {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"one thread, best of {args.repeat}"
    )
    print(
        "| channels | method | per interval median / p99 (ms) | live, left at the interval's end median / p99 (ms) | "
        "per interval ch-samples/s | batched ch-samples/s | batched x real time | batched, numpy only | "
        "baseline sosfilt+RMS per interval / batched ch-samples/s | batched / baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n_ch in (int(c) for c in args.channels.split(",")):
        x, pulses = make_signal(n_ch, rate, args.seconds, args.stim_hz)
        info = StreamInfo("bench", "EMG", rate, tuple(f"c{i}" for i in range(n_ch)), ("uV",))
        ivs = intervals(x, pulses, rate)
        groups = batches(ivs, rate, args.batch) if args.batch > 0 else []
        n_cs = sum(iv.samples.shape[0] for iv, _ in ivs) * n_ch  # channel-samples estimated
        base = min((time_baseline(ivs, n_ch, rate) for _ in range(args.repeat)), key=np.sum)
        base_thr = n_cs / base.sum()
        if groups:
            base_b = f"{n_cs / min(time_baseline_batched(groups, n_ch, rate) for _ in range(args.repeat)) / 1e6:.2f} M"
        else:
            base_b = "-"
        for method in args.methods.split(","):
            t = min((time_estimator(ivs, info, method) for _ in range(args.repeat)), key=np.sum)
            thr = n_cs / t.sum()
            live = min((time_live(ivs, info, method) for _ in range(args.repeat)), key=np.sum)
            thr_b = thr_np = None
            if groups:
                tb = min(time_batched(groups, info, method) for _ in range(args.repeat))
                thr_b = n_cs / tb
                thr_np = n_cs / min(time_batched(groups, info, method, False) for _ in range(args.repeat))
                batched = f"{thr_b / 1e6:.2f} M | {n_cs / n_ch / rate / tb:.0f}x | {thr_np / 1e6:.2f} M"
                ratio = f"{thr_b / base_thr:.2f}"
            else:
                batched, ratio = "- | - | -", "-"
            print(
                f"| {n_ch} | {method} | {np.median(t) * 1e3:.3f} / {np.percentile(t, 99) * 1e3:.3f} | "
                f"{np.median(live) * 1e3:.3f} / {np.percentile(live, 99) * 1e3:.3f} | "
                f"{thr / 1e6:.2f} M | {batched} | {base_thr / 1e6:.2f} M / {base_b} | {ratio} |",
                flush=True,
            )
            rows.append(
                {
                    "channels": n_ch,
                    "method": method,
                    "step_ms": _summary_ms(t),
                    "live_end_ms": _summary_ms(live),
                    "per_interval_ch_samples_s": thr,
                    "batched_ch_samples_s": thr_b,
                    "batched_numpy_ch_samples_s": thr_np,
                }
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
