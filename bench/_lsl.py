"""Shared parts of the live benchmarks: the EMG pusher process, the baseline's per-pulse work, statistics.

The pusher (``python -m bench._lsl push ...``) is a separate process with one LSL outlet (float32, type
``EMG``, microvolts) that waits for a consumer, then pushes chunks of ``--chunk`` samples on the stream's
real-time schedule for ``--seconds`` and exits. Each chunk is pushed with ``timestamp=local_clock()`` taken
just before the push: liblsl gives that stamp to the chunk's *last* sample, so for every chunk

    push time of its last sample == its LSL timestamp.

Consumers on this machine share ``local_clock`` with the pusher (time correction ~0 on loopback), so the
end-to-end latency of a pulse is ``local_clock() at delivery - timestamps[-1]`` of the chunk that completed
its interval. Every consumer measured here (framework, baseline, peers) uses that same definition.

:class:`PulseWork` is "the same per-pulse work" every contender does: 4th-order Butterworth band-pass
20-450 Hz and 50-Hz notch with carried state (``sosfilt`` + ``zi``), pulse intervals of ``rate / stim_hz``
samples, at each interval's end the RMS of the post-M-wave window (12 ms after the pulse to the interval's
end) of the control channel, and a proportional rule for the next amplitude (mA).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from closedloop.lslconfig import use_loopback

__all__ = ["CpuMeter", "PulseWork", "latency_summary", "start_pusher"]


def start_pusher(
    name: str,
    channels: int,
    rate_hz: float,
    seconds: float,
    chunk: int = 8,
    source_id: str | None = None,
) -> subprocess.Popen:
    """Start the pusher process (loopback-only LSL). It waits up to 30 s for a consumer, then pushes
    ``seconds`` of data and exits by itself; terminate it early with ``.terminate()``."""
    use_loopback(force=True)
    cmd = [sys.executable, "-m", "bench._lsl", "push", "--name", name, "--source-id", source_id or name]
    cmd += ["--channels", str(channels), "--rate", str(rate_hz), "--seconds", str(seconds), "--chunk", str(chunk)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root)


def _push(args: argparse.Namespace) -> int:
    use_loopback(force=True)
    import pylsl

    n_ch, fs, chunk = args.channels, args.rate, args.chunk
    info = pylsl.StreamInfo(args.name, "EMG", n_ch, fs, "float32", args.source_id)
    chans = info.desc().append_child("channels")
    for i in range(n_ch):
        c = chans.append_child("channel")
        c.append_child_value("label", f"EMG{i + 1}")
        c.append_child_value("unit", "microvolts")
        c.append_child_value("type", "EMG")
    outlet = pylsl.StreamOutlet(info, chunk_size=chunk, max_buffered=60)
    # two seconds of band-limited noise (~50 uV RMS), cycled: the content does not change the work
    rng = np.random.default_rng(0)
    n_buf = int(2 * fs) // chunk * chunk
    b, a = signal.butter(2, [30.0, min(300.0, 0.4 * fs)], btype="bandpass", fs=fs)
    data = (signal.lfilter(b, a, rng.standard_normal((n_buf, n_ch)), axis=0) * 80.0).astype(np.float32)
    if not outlet.wait_for_consumers(30.0):
        print("pusher: no consumer within 30 s", file=sys.stderr)
        return 1
    time.sleep(0.5)  # let the consumer finish opening (time correction, its first pull)
    n_chunks = int(args.seconds * fs / chunk)
    period = chunk / fs
    t0 = time.perf_counter()
    pos = 0
    for k in range(n_chunks):
        due = t0 + (k + 1) * period  # a chunk exists once its last sample has been sampled
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        outlet.push_chunk(data[pos : pos + chunk], pylsl.local_clock())
        pos = (pos + chunk) % n_buf
    time.sleep(0.2)
    return 0


@dataclass
class PulseWork:
    """The per-pulse work of the baseline and the peers (see the module docstring).

    Feed chunks with :meth:`push`; it returns the amplitudes (mA) decided at the interval ends the chunk
    completed (usually none or one).
    """

    n_channels: int
    rate_hz: float
    stim_hz: float
    gain_ma_per_uv: float = 0.1
    offset_ma: float = 5.0
    max_ma: float = 30.0
    mwave_end_s: float = 0.012
    control_channel: int = 0
    _sos: np.ndarray = field(init=False, repr=False)
    _zi: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fs = self.rate_hz
        band = signal.butter(4, [20.0, min(450.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
        notch = signal.tf2sos(*signal.iirnotch(50.0, 30.0, fs=fs))
        self._sos = np.vstack([notch, band])
        self._zi = np.zeros((self._sos.shape[0], 2, self.n_channels))
        self._period = fs / self.stim_hz
        self._buf = np.zeros((math.ceil(self._period) + 1, self.n_channels))
        self._fill = 0
        self._n_seen = 0
        self._next_end = self._period
        self._skip = round(self.mwave_end_s * fs)

    def push(self, samples: np.ndarray) -> list[float]:
        y, self._zi = signal.sosfilt(self._sos, samples, axis=0, zi=self._zi)
        return self.intervals(y)

    def intervals(self, y: np.ndarray) -> list[float]:
        """The interval bookkeeping, RMS and rule on already filtered samples; the amplitudes decided (mA)."""
        out: list[float] = []
        start = 0
        n = y.shape[0]
        while start < n:
            end_abs = round(self._next_end)  # absolute sample index where the current interval ends
            take = min(n - start, end_abs - self._n_seen)
            self._buf[self._fill : self._fill + take] = y[start : start + take]
            self._fill += take
            self._n_seen += take
            start += take
            if self._n_seen == end_abs:
                seg = self._buf[self._skip : self._fill, self.control_channel]
                rms = float(np.sqrt(np.mean(seg * seg))) if seg.size else 0.0
                out.append(min(self.max_ma, self.offset_ma + self.gain_ma_per_uv * rms))
                self._fill = 0
                self._next_end += self._period
        return out


def latency_summary(values_s) -> dict:
    """Median, p99 and max of latencies given in s, in ms (None when there are none)."""
    a = np.asarray(values_s, dtype=float) * 1e3
    if a.size == 0:
        return {"median": None, "p99": None, "max": None, "n": 0}
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": a.size}


class CpuMeter:
    """CPU time of this process (all its threads) over wall time, in % of one core."""

    def __enter__(self) -> CpuMeter:
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - self._t0
        cpu = (r1.ru_utime - self._r0.ru_utime) + (r1.ru_stime - self._r0.ru_stime)
        self.percent = 100.0 * cpu / wall if wall > 0 else math.nan


def fmt_ms(d: dict) -> str:
    """``median / p99 / max`` in ms."""
    if d["median"] is None:
        return "n/a"
    return f"{d['median']:.3f} / {d['p99']:.3f} / {d['max']:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._lsl")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("push", help="push EMG chunks on an LSL outlet in real time")
    s.add_argument("--name", required=True)
    s.add_argument("--source-id", required=True)
    s.add_argument("--channels", type=int, default=64)
    s.add_argument("--rate", type=float, default=2048.0)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--chunk", type=int, default=8)
    args = p.parse_args(argv)
    return _push(args)


if __name__ == "__main__":
    sys.exit(main())
