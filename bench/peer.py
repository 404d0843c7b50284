"""Peers on the same per-pulse closed-loop work: a hand-written baseline, mne-lsl and ezmsg.

Run ``python -m bench.peer [--channels 64] [--rate 2048] [--stim-hz 50] [--seconds 20] [--quick]`` from the
repository root. Every contender gets a fresh pusher (:func:`bench._lsl.start_pusher`, a separate process,
chunks of 8 samples, a unique stream name and source_id) and does :class:`bench._lsl.PulseWork`'s work:
4th-order Butterworth band-pass 20-450 Hz + 50-Hz notch with carried state, pulse intervals of
``rate / stim_hz`` samples, RMS of channel 0 from 12 ms after the pulse (the end of the M-wave) to the
interval's end, proportional rule. Each amplitude is "delivered" by reading the LSL clock (``local_clock()``).

Contenders (each runs in its own child process, ``python -m bench.peer --worker <json Config>``, so that the two
liblsl copies — pylsl's 1.18 and mne-lsl's bundled 1.17 — never share a process, no thread of one contender
outlives into the next, and the CPU figure is that contender's alone):

``baseline``
    A dedicated reader thread blocks in ``inlet.pull_chunk(timeout=0.1, max_samples=rate,
    dest_obj=<preallocated float32 buffer>, min_samples=1, as_numpy=True)`` and hands a copy of each chunk
    to an asyncio loop with ``loop.call_soon_threadsafe``; the loop runs ``PulseWork.push``.

``mne-lsl``
    ``mne_lsl.stream.StreamLSL(bufsize=1 s, name=..., source_id=...)`` connected with mne-lsl's default
    ``acquisition_delay`` (1 ms: its background thread pulls with ``timeout=0``, rolls the whole buffer,
    then ``high_precision_sleep``\\ s; the roll is why a small ``--mne-bufsize`` is cheaper) and
    ``processing_flags=["clocksync"]``. StreamLSL tells no other thread about new data (its ``add_callback``
    hook runs inside the acquisition thread: see ``mne-lsl-cb``), so the main thread polls
    ``stream.n_new_samples`` and on new samples calls
    ``get_data(winsize=..., picks=<int array of all channels>)`` (``winsize`` is in *seconds* for a regular
    stream and is ceiled to samples, so ``(n - 0.5) / sfreq`` asks for exactly ``n``; integer picks cost
    5 us in ``_picks_to_idx`` against 32 us for ``picks=None``), then ``PulseWork.push``.
    Polling: ``time.sleep(0)`` between polls by default (``--mne-poll sleep0``): it releases the GIL on
    every iteration, so mne-lsl's acquisition thread gets the interpreter at once. A pure busy loop without
    any sleep (``--mne-poll spin``) holds the GIL until the 5-ms switch interval forces a hand-over and
    delays every acquisition (measured here: 7 ms median end-to-end, 100 % CPU). Any real sleep adds its
    own length (``--mne-poll sleep100us`` sleeps 100 us: ~0.15 ms with the kernel's timer slack) but costs
    less CPU (here ~28 % of a core for the process against ~41 % with sleep(0), at about the same
    end-to-end latency, which mne-lsl's 1-ms acquisition cadence dominates).
    ``get_data`` resets ``n_new_samples`` to 0 under its lock, but the read of ``n_new_samples`` before it
    is not under that lock: samples acquired between the two reads would be skipped. The loop therefore
    asks for ``n + chunk`` samples and keeps those after the last timestamp it processed (exact float
    match; it never relies on timestamps being increasing); it counts how often this mattered
    ("n_new races"). A callback added with ``stream.add_callback`` (run by mne-lsl in its acquisition
    thread right after each pull) only records ``perf_counter`` per acquisition window, for the decision
    latency.

``mne-lsl-cb`` (opt-in: ``--contenders ...,mne-lsl-cb``)
    The same StreamLSL, but ``PulseWork.push`` runs inside an ``add_callback`` callback, i.e. in mne-lsl's
    acquisition thread (the docs ask callbacks to be fast; it is). Not polled at all. ``connect()`` returns
    ~0.6 s after opening the inlet (its ``time_correction``), after the pusher has started: the samples
    acquired before the callback was added are counted as received but not processed.

``ezmsg``
    One ezmsg process (``ez.run(..., force_single_process=True)``, GraphServer on an ephemeral loopback
    port): ezmsg-lsl's ``LSLInletUnit`` (``processing_flags=proc_clocksync``, ``use_lsl_clock=True``; it
    pulls with ``pull_chunk(timeout=0.1, min_samples=1, dest_obj=..., as_numpy=True)`` in
    ``asyncio.to_thread``) -> ezmsg-sigproc's ``Filter`` unit with ``coef_type="sos"`` and exactly
    PulseWork's coefficients (notch + band-pass sections, one ``sosfilt`` per message with carried ``zi``)
    -> a custom unit doing PulseWork's intervals, RMS and rule on the filtered data (no second filtering).
    ``--ezmsg-chain butter`` uses ezmsg-sigproc's ``ButterworthFilter`` unit (order 4, 20-450 Hz, sos)
    followed by a ``Filter`` unit for the notch instead (one unit more); ``--ezmsg-chain unit`` is
    inlet -> one custom unit calling ``PulseWork.push``. The inlet is subclassed only to record
    ``perf_counter`` when its pull returns a message (after ezmsg-lsl's copy and AxisArray construction).
    ezmsg-lsl opens its inlet with ``max_chunklen=1``: liblsl then forwards every sample on its own, and
    about half the pushed chunks arrive as two messages (the "partial" units below).

Measured per decision (identically for all): **end-to-end latency** = ``local_clock()`` at delivery - LSL
timestamp (time-corrected by liblsl's clocksync; ~0 on loopback) of the last sample of the pushed chunk that
completed the interval, i.e. of the pushed chunk holding the newest sample of the data unit (pulled chunk,
``get_data`` window, message) handed to the per-pulse work. The pusher stamps each 8-sample chunk's last
sample with its push time, so this is delivery - push time. liblsl sometimes hands over a pushed chunk in two
pulls; the first part's own last timestamp is then up to 7 samples (3.4 ms at 2048 Hz) older than the push,
so the reference is that timestamp + the samples still missing to the chunk's end / rate (stream sample
indices count from the first sample received, which is the first one pushed: the pusher starts 0.5 s after
the consumer connects). Units ending inside a pushed chunk are counted as "partial", units spanning more than
one pushed chunk (the consumer fell behind) as "batched". **Decision latency** = ``perf_counter()`` at
delivery - ``perf_counter()`` when the pull that brought the unit's newest sample into the process returned
(reader thread, mne-lsl acquisition callback, ezmsg-lsl pull). Decisions whose reference is within the first
second of the stream are warm-up and dropped for everyone. **CPU %** = ``bench._lsl.CpuMeter`` over the
consumer process (all its threads, not the pusher) from its first data to its last. Samples received <
pushed are reported as lost (and would shift the chunk alignment above).

Note: PulseWork skips 12 ms after each pulse (the M-wave); at pulse rates above ~80 Hz the RMS window is
empty and the rule always sees RMS 0; the work is then the filtering and the interval bookkeeping. The output
says so.

:func:`run_contender` runs one contender and returns a dict, for ``bench/__main__.py``.
"""

from __future__ import annotations

from closedloop.lslconfig import LOOPBACK_CFG, use_loopback

use_loopback(force=True)  # before anything loads a liblsl (pylsl's or mne-lsl's own copy)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench._lsl import CpuMeter, PulseWork, fmt_ms, latency_summary, start_pusher  # noqa: E402

__all__ = ["CONTENDERS", "EXTRA_CONTENDERS", "Config", "main", "run_contender"]

#: Contenders run by default, in this order.
CONTENDERS: tuple[str, ...] = ("baseline", "framework", "mne-lsl", "ezmsg")
#: Contenders that run only when named with ``--contenders``.
EXTRA_CONTENDERS: tuple[str, ...] = ("mne-lsl-cb",)

WARMUP_S = 1.0  #: decisions whose reference sample is this close to the stream's first sample are dropped
IDLE_END_S = 1.0  #: after data started, this long without a sample means the pusher is gone
CONNECT_TIMEOUT_S = 15.0  #: to find and open the pusher's stream (the pusher needs ~1 s to start)
RESULT_PREFIX = "PEER-RESULT "


@dataclass(frozen=True)
class Config:
    """One contender run."""

    name: str
    channels: int = 64
    rate_hz: float = 2048.0
    stim_hz: float = 50.0
    seconds: float = 20.0
    chunk: int = 8
    mne_poll: str = "sleep0"
    mne_bufsize_s: float = 1.0
    mne_acquisition_delay_s: float = 0.001
    ezmsg_chain: str = "filter"

    @property
    def samples_pushed(self) -> int:
        """What the pusher pushes (its own formula)."""
        return int(self.seconds * self.rate_hz / self.chunk) * self.chunk

    @property
    def deadline_s(self) -> float:
        """Hard bound on a consumer's run after it starts looking for the stream."""
        return CONNECT_TIMEOUT_S + self.seconds + 10.0


def _expected_decisions(n_samples: int, rate_hz: float, stim_hz: float) -> int:
    """Interval ends within ``n_samples`` samples, with PulseWork's own accumulation and rounding."""
    period, nxt, n = rate_hz / stim_hz, rate_hz / stim_hz, 0
    while round(nxt) <= n_samples:
        n += 1
        nxt += period
    return n


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class _PrefilteredPulseWork(PulseWork):
    """PulseWork's intervals, RMS and rule on data that an upstream unit has already filtered.

    Same loop as :meth:`bench._lsl.PulseWork.push` minus the ``sosfilt`` (the filter runs in ezmsg-sigproc's
    unit with the same coefficients), so nothing is filtered twice.
    """

    def push(self, samples: np.ndarray) -> list[float]:
        return self.intervals(samples)


@dataclass
class _Recorder:
    """Per-decision measurements, kept the same way for every contender."""

    cfg: Config
    clock: Callable[[], float]  # the LSL local_clock of the liblsl this contender uses
    t0_lsl: float | None = None
    e2e: list[float] = field(default_factory=list)
    decision: list[float] = field(default_factory=list)
    n_decisions: int = 0
    n_samples: int = 0
    n_units: int = 0
    n_batched: int = 0
    n_partial: int = 0
    amplitudes_sum: float = 0.0
    notes: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    cpu_percent: float | None = None
    t_last_data: float = 0.0
    _meter: CpuMeter | None = None

    def unit(self, n: int, ts_first: float, ts_last: float) -> float:
        """A data unit of ``n`` samples stamped ``ts_first`` .. ``ts_last`` is about to be processed; return
        the LSL timestamp its decisions are measured from: the push time of the pushed chunk holding the
        unit's newest sample (= that chunk's last-sample timestamp, which liblsl spaces by 1/rate back from
        it, so a unit that ends inside a pushed chunk is referred to the chunk's end)."""
        chunk = self.cfg.chunk
        if self.t0_lsl is None:
            self.t0_lsl = ts_first
            self._meter = CpuMeter().__enter__()
        g_first, g_last = self.n_samples, self.n_samples + n - 1  # stream sample indices (pushes start at 0)
        self.n_samples += n
        self.n_units += 1
        if g_first // chunk != g_last // chunk:
            self.n_batched += 1
        to_end = chunk - 1 - g_last % chunk
        if to_end:
            self.n_partial += 1
        self.t_last_data = time.perf_counter()
        return ts_last + to_end / self.cfg.rate_hz

    def deliver(self, amplitudes: list[float], ts_ref: float, t_avail: float | None) -> None:
        """Deliver each amplitude (read the LSL clock) and record its latencies."""
        for amp in amplitudes:
            t_lsl = self.clock()
            t_pc = time.perf_counter()
            self.n_decisions += 1
            self.amplitudes_sum += amp
            if self.t0_lsl is not None and ts_ref - self.t0_lsl >= WARMUP_S:
                self.e2e.append(t_lsl - ts_ref)
                if t_avail is not None:
                    self.decision.append(t_pc - t_avail)

    @property
    def complete(self) -> bool:
        return self.n_samples >= self.cfg.samples_pushed

    def idle(self) -> bool:
        """Data started and nothing came for IDLE_END_S."""
        return self.t0_lsl is not None and time.perf_counter() - self.t_last_data > IDLE_END_S

    def stop_cpu(self) -> None:
        if self._meter is not None and self.cpu_percent is None:
            self._meter.__exit__(None, None, None)
            self.cpu_percent = self._meter.percent

    def result(self) -> dict[str, Any]:
        cfg = self.cfg
        self.stop_cpu()
        pushed = cfg.samples_pushed
        res: dict[str, Any] = {
            "name": cfg.name,
            "status": "ok",
            "e2e": latency_summary(self.e2e),
            "decision": latency_summary(self.decision),
            "pulses": self.n_decisions,
            "pulses_expected": _expected_decisions(pushed, cfg.rate_hz, cfg.stim_hz),
            "pulses_kept": len(self.e2e),
            "samples_received": self.n_samples,
            "samples_pushed": pushed,
            "samples_lost": max(0, pushed - self.n_samples),
            "units": self.n_units,
            "batched_units": self.n_batched,
            "partial_units": self.n_partial,
            "cpu_percent": self.cpu_percent,
            "mean_amplitude_ma": self.amplitudes_sum / self.n_decisions if self.n_decisions else None,
            "counters": dict(self.counters),
            "notes": list(self.notes),
            "config": asdict(cfg),
        }
        return res


def _finish_pusher(pusher: subprocess.Popen, rec: _Recorder) -> None:
    """Let the pusher end by itself (it exits ~0.2 s after its last chunk); stop it if it does not."""
    try:
        _, err = pusher.communicate(timeout=5.0)
    except subprocess.TimeoutExpired:
        pusher.terminate()
        try:
            _, err = pusher.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            pusher.kill()
            _, err = pusher.communicate()
        rec.notes.append("pusher had to be stopped")
    text = (err or b"").decode(errors="replace").strip()
    if pusher.returncode not in (0, None, -15) or text:
        rec.notes.append(f"pusher exit {pusher.returncode}: {text[-300:]}")


# --------------------------------------------------------------------------------------------- baseline


def _run_baseline(cfg: Config) -> dict[str, Any]:
    import pylsl

    rec = _Recorder(cfg, pylsl.local_clock)
    name = f"peer-baseline-{uuid.uuid4().hex[:10]}"
    pusher = start_pusher(name, cfg.channels, cfg.rate_hz, cfg.seconds, chunk=cfg.chunk)
    try:
        infos = pylsl.resolve_byprop("source_id", name, minimum=1, timeout=CONNECT_TIMEOUT_S)
        infos = [i for i in infos if i.name() == name]
        if not infos:
            raise RuntimeError(f"stream {name} not found within {CONNECT_TIMEOUT_S} s")
        inlet = pylsl.StreamInlet(infos[0], processing_flags=pylsl.proc_clocksync)
        inlet.open_stream(timeout=CONNECT_TIMEOUT_S)
        inlet.time_correction(timeout=5.0)  # first estimate before data, so clocksync never waits in a pull
        asyncio.run(_baseline_loop(cfg, inlet, rec))
        inlet.close_stream()
    finally:
        _finish_pusher(pusher, rec)
    return rec.result()


async def _baseline_loop(cfg: Config, inlet: Any, rec: _Recorder) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    stop = threading.Event()
    work = PulseWork(cfg.channels, cfg.rate_hz, cfg.stim_hz)
    max_samples = int(cfg.rate_hz)  # one second
    t_end = time.perf_counter() + cfg.deadline_s

    def on_chunk(data: np.ndarray, ts_first: float, ts_last: float, t_avail: float) -> None:
        ref = rec.unit(data.shape[0], ts_first, ts_last)
        rec.deliver(work.push(data), ref, t_avail)
        if rec.complete:
            rec.stop_cpu()
            done.set()

    def reader() -> None:
        buf = np.empty((max_samples, cfg.channels), dtype=np.float32)
        got = 0
        t_data = None
        while not stop.is_set():
            data, ts = inlet.pull_chunk(
                timeout=0.1, max_samples=max_samples, dest_obj=buf, min_samples=1, as_numpy=True
            )
            now = time.perf_counter()
            if ts.size:
                loop.call_soon_threadsafe(on_chunk, data.copy(), float(ts[0]), float(ts[-1]), now)
                got += ts.size
                t_data = now
                if got >= cfg.samples_pushed:
                    break
            elif (t_data is not None and now - t_data > IDLE_END_S) or now > t_end:
                loop.call_soon_threadsafe(done.set)
                break

    th = threading.Thread(target=reader, name="peer-baseline-reader", daemon=True)
    th.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=cfg.deadline_s + 1.0)
    except asyncio.TimeoutError:
        rec.notes.append("deadline reached")
    finally:
        stop.set()
        th.join(timeout=1.0)


# --------------------------------------------------------------------------------------------- framework


def _run_framework(cfg: Config) -> dict[str, Any]:
    """closedloop's live session (see bench/closed_loop.py), measured with the same :class:`_Recorder`: its
    LSL source reports each chunk to the recorder; the simulated stimulator's participant reports each
    delivered pulse."""
    import pylsl

    from acquisition.lsl import LSLSource
    from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator, fit_to_pulse_rate
    from closedloop.pipeline import Phase, Session, SessionConfig
    from closedloop.safety import SafetyLayer, SafetyLimits
    from closedloop.stimulators import SimulatedStimulator
    from controllers.proportional import ProportionalAssist

    rec = _Recorder(cfg, pylsl.local_clock)
    name = f"peer-framework-{uuid.uuid4().hex[:10]}"
    last: dict[str, float] = {}

    class _Source(LSLSource):
        async def __anext__(self):  # type: ignore[override]
            if rec.complete:  # all the pusher's data processed: the session ends as a recording would
                raise StopAsyncIteration
            chunk = await super().__anext__()
            last["ref"] = rec.unit(len(chunk), float(chunk.timestamps[0]), float(chunk.timestamps[-1]))
            last["avail"] = chunk.t_arrival
            return chunk

    class _Participant:
        def schedule_pulse(self, t: float, channel: int, amplitude_ma: float, pulse_width_us: float) -> None:
            rec.deliver([amplitude_ma], last["ref"], last["avail"])

    limits = SafetyLimits(
        max_amplitude_ma=30.0, max_charge_uc=12.0, max_step_ma=30.0, max_rate_hz=min(200.0, 2 * cfg.stim_hz)
    )
    # the session ends when the pusher's data are all in (the source stops); the stall timeout catches a
    # pusher that dies, the phase's length a run that never ends
    phases = (Phase("assist", cfg.seconds + CONNECT_TIMEOUT_S, "control"),)
    # windows fitted to the pulse period (at 100 Hz the default 3-20 ms M-wave window would not fit)
    est_cfg = fit_to_pulse_rate(EstimatorConfig(method="nlms", mvc_uv=100.0), cfg.stim_hz, cfg.chunk / cfg.rate_hz)
    pusher = start_pusher(name, cfg.channels, cfg.rate_hz, cfg.seconds, chunk=cfg.chunk)
    try:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="peer-framework-") as tmp:
            session = Session(
                _Source(source_id=name, resolve_timeout_s=CONNECT_TIMEOUT_S, stall_timeout_s=2.0),
                lambda info: IntervalEstimator(info, est_cfg),
                ProportionalAssist(gain_ma_per_pct=0.2, deadband_pct=0.0, offset_ma=5.0, max_ma=25.0),
                SafetyLayer(limits, SimulatedStimulator(_Participant(), pylsl.local_clock)),
                SessionConfig(stim_hz=cfg.stim_hz, phases=phases),
                tmp,
            )
            res = asyncio.run(session.run())
            rec.stop_cpu()
    finally:
        _finish_pusher(pusher, rec)
    rec.counters["session_ok"] = int(res.status == "completed")
    if res.status != "completed":
        rec.notes.append(f"session {res.status}: {res.error}")
    rec.counters["deadline_misses"] = res.deadline_misses
    rec.counters["skipped_pulses"] = res.skipped_pulses
    return rec.result()


# --------------------------------------------------------------------------------------------- mne-lsl


def _mne_connect(cfg: Config, name: str) -> Any:
    import mne_lsl
    from mne_lsl.stream import StreamLSL

    mne_lsl.set_log_level("WARNING")
    stream = StreamLSL(cfg.mne_bufsize_s, name=name, source_id=name)
    stream.connect(
        acquisition_delay=cfg.mne_acquisition_delay_s, processing_flags=["clocksync"], timeout=CONNECT_TIMEOUT_S
    )
    return stream


def _run_mne(cfg: Config) -> dict[str, Any]:
    from mne_lsl.lsl import library_version, local_clock

    rec = _Recorder(cfg, local_clock)
    v = library_version()
    rec.notes.append(f"mne-lsl's liblsl {v // 100}.{v % 100}, LSLAPICFG={os.environ.get('LSLAPICFG')}")
    name = f"peer-mne-{uuid.uuid4().hex[:10]}"
    pusher = start_pusher(name, cfg.channels, cfg.rate_hz, cfg.seconds, chunk=cfg.chunk)
    stream = None
    try:
        stream = _mne_connect(cfg, name)
        if cfg.name == "mne-lsl-cb":
            _mne_callback_loop(cfg, stream, rec)
        else:
            _mne_poll_loop(cfg, stream, rec)
    finally:
        if stream is not None:
            stream.disconnect()
        _finish_pusher(pusher, rec)
    return rec.result()


def _mne_poll_loop(cfg: Config, stream: Any, rec: _Recorder) -> None:
    fs = cfg.rate_hz
    work = PulseWork(cfg.channels, fs, cfg.stim_hz)
    avail: dict[float, float] = {}  # last timestamp of an acquisition window -> perf_counter when pulled

    def stamp(data: np.ndarray, timestamps: np.ndarray, info: Any) -> tuple[np.ndarray, np.ndarray]:
        avail[float(timestamps[-1])] = time.perf_counter()
        return data, timestamps

    stream.add_callback(stamp)
    picks = np.arange(cfg.channels)
    pause: Callable[[], None]
    if cfg.mne_poll == "sleep0":

        def pause() -> None:
            time.sleep(0)

    elif cfg.mne_poll == "sleep100us":

        def pause() -> None:
            time.sleep(100e-6)

    elif cfg.mne_poll == "spin":

        def pause() -> None:
            pass

    else:
        raise ValueError(f"unknown --mne-poll {cfg.mne_poll!r}")
    last_ts: float | None = None
    races = refetch = lost = 0
    t_end = time.perf_counter() + cfg.deadline_s
    while True:
        n = stream.n_new_samples
        if n == 0:
            now = time.perf_counter()
            if rec.idle() or now > t_end:
                break
            pause()
            continue
        want = n + cfg.chunk  # a little more, to find where the last processed sample is
        data, ts = stream.get_data(winsize=(want - 0.5) / fs, picks=picks)
        if last_ts is None:
            start = max(0, ts.size - n)
        else:
            hit = np.flatnonzero(ts == last_ts)
            if hit.size == 0:  # more new samples than we asked for: look in the whole buffer
                refetch += 1
                data, ts = stream.get_data(picks=picks)
                hit = np.flatnonzero(ts == last_ts)
            if hit.size:
                start = int(hit[-1]) + 1
            else:  # the last processed sample has left the buffer: samples were lost
                lost += 1
                start = max(0, ts.size - n)
        if ts.size - start != n:
            races += 1
        if start >= ts.size:
            continue
        samples = data[:, start:].T  # (n_samples, n_channels) view
        ts_last = float(ts[-1])
        ref = rec.unit(samples.shape[0], float(ts[start]), ts_last)
        rec.deliver(work.push(samples), ref, avail.get(ts_last))
        last_ts = ts[-1]
        if rec.complete or time.perf_counter() > t_end:
            break
    rec.stop_cpu()
    rec.counters.update({"n_new races": races, "whole-buffer refetches": refetch, "buffer overruns": lost})
    rec.notes.append(
        f"polling: {cfg.mne_poll}; bufsize {cfg.mne_bufsize_s} s; "
        f"acquisition_delay {cfg.mne_acquisition_delay_s * 1e3:g} ms"
    )


def _mne_callback_loop(cfg: Config, stream: Any, rec: _Recorder) -> None:
    work = PulseWork(cfg.channels, cfg.rate_hz, cfg.stim_hz)

    def on_window(data: np.ndarray, timestamps: np.ndarray, info: Any) -> tuple[np.ndarray, np.ndarray]:
        t_avail = time.perf_counter()
        if rec.t0_lsl is None:
            # connect() returns ~0.6 s after the inlet opened (its time_correction), the pusher starts 0.5 s
            # after it: the windows acquired before the callback existed are in the buffer, counted by
            # n_new_samples (no get_data ever resets it here). Count them as received, not processed.
            early = stream.n_new_samples
            rec.n_samples = early
            rec.counters["samples acquired before add_callback"] = early
        ref = rec.unit(data.shape[0], float(timestamps[0]), float(timestamps[-1]))
        rec.deliver(work.push(data), ref, t_avail)
        if rec.complete:
            rec.stop_cpu()
        return data, timestamps

    stream.add_callback(on_window)
    t_end = time.perf_counter() + cfg.deadline_s
    while not rec.complete and not rec.idle() and time.perf_counter() < t_end:
        time.sleep(0.05)
    rec.stop_cpu()
    rec.notes.append(
        f"PulseWork in an add_callback callback (acquisition thread); bufsize {cfg.mne_bufsize_s} s; "
        f"acquisition_delay {cfg.mne_acquisition_delay_s * 1e3:g} ms"
    )


# --------------------------------------------------------------------------------------------- ezmsg

_EZ_RUNS: dict[str, _EzContext] = {}  # run id -> context; the whole graph runs in this process, one run at a time


def _ez_context() -> _EzContext:
    return next(iter(_EZ_RUNS.values()))


@dataclass
class _EzContext:
    cfg: Config
    rec: _Recorder
    work: PulseWork
    avail: dict[float, float] = field(default_factory=dict)  # message time offset -> perf_counter at pull
    t_end: float = 0.0
    finished: bool = False


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_EZ_CLASSES: dict[str, Any] = {}


def _ezmsg_classes() -> dict[str, Any]:
    """Define the ezmsg units lazily: importing this module must not need ezmsg."""
    if _EZ_CLASSES:
        return _EZ_CLASSES
    import ezmsg.core as ez
    from ezmsg.lsl.inlet import LSLInletProducer, LSLInletUnit
    from ezmsg.util.messages.axisarray import AxisArray

    class StampedInletProducer(LSLInletProducer):
        """ezmsg-lsl's inlet producer, recording when each pull returned a message."""

        def _pull(self, snapshot: Any, timeout: float = 0.0) -> Any:
            msg = super()._pull(snapshot, timeout)
            if msg is not None:
                t = time.perf_counter()
                for ctx in _EZ_RUNS.values():  # empty once the run is over
                    ctx.avail[float(msg.axes["time"].offset)] = t
            return msg

    class StampedInletUnit(LSLInletUnit):
        def create_producer(self) -> None:
            if getattr(self, "producer", None) is not None:
                self.producer.shutdown()
            self.producer = StampedInletProducer(settings=self.SETTINGS)

    class PulseRuleUnit(ez.Unit):
        """Per-pulse intervals/RMS/rule (or the whole PulseWork) on each AxisArray; ends the run."""

        INPUT_SIGNAL = ez.InputStream(AxisArray)

        @ez.subscriber(INPUT_SIGNAL)
        async def on_signal(self, msg: AxisArray) -> None:
            ctx = _ez_context()
            data = msg.data
            n = data.shape[0]
            if n == 0:
                return
            ax = msg.axes["time"]
            ts_first = float(ax.offset)
            ts_last = ts_first + (n - 1) * float(ax.gain)
            ref = ctx.rec.unit(n, ts_first, ts_last)
            ctx.rec.deliver(ctx.work.push(data), ref, ctx.avail.pop(ts_first, None))
            if ctx.rec.complete:
                ctx.rec.stop_cpu()
                ctx.finished = True
                raise ez.NormalTermination

        @ez.task
        async def watchdog(self) -> None:
            ctx = _ez_context()
            while True:
                await asyncio.sleep(0.05)
                if ctx.finished or ctx.rec.idle() or time.perf_counter() > ctx.t_end:
                    if time.perf_counter() > ctx.t_end:
                        ctx.rec.notes.append("deadline reached")
                    raise ez.NormalTermination

    _EZ_CLASSES.update(StampedInletUnit=StampedInletUnit, PulseRuleUnit=PulseRuleUnit)
    return _EZ_CLASSES


def _run_ezmsg(cfg: Config) -> dict[str, Any]:
    import logging

    import ezmsg.core as ez
    import pylsl
    from ezmsg.lsl.inlet import LSLInfo, LSLInletSettings
    from ezmsg.sigproc.butterworthfilter import ButterworthFilter, ButterworthFilterSettings
    from ezmsg.sigproc.filter import Filter, FilterSettings
    from scipy import signal

    ez.logger.setLevel(logging.WARNING)
    classes = _ezmsg_classes()
    name = f"peer-ezmsg-{uuid.uuid4().hex[:10]}"
    run_id = uuid.uuid4().hex
    rec = _Recorder(cfg, pylsl.local_clock)
    reference = PulseWork(cfg.channels, cfg.rate_hz, cfg.stim_hz)
    if cfg.ezmsg_chain == "unit":
        work: PulseWork = reference
    elif cfg.ezmsg_chain in ("filter", "butter"):
        work = _PrefilteredPulseWork(cfg.channels, cfg.rate_hz, cfg.stim_hz)
    else:
        raise ValueError(f"unknown --ezmsg-chain {cfg.ezmsg_chain!r}")
    ctx = _EzContext(cfg, rec, work)
    _EZ_RUNS[run_id] = ctx

    inlet = classes["StampedInletUnit"](
        LSLInletSettings(
            info=LSLInfo(name=name, type="EMG"),
            processing_flags=pylsl.proc_clocksync,
            use_lsl_clock=True,
        )
    )
    rule = classes["PulseRuleUnit"]()
    components: dict[str, Any] = {"INLET": inlet}
    sos = reference._sos  # notch section + band-pass sections, exactly PulseWork's
    if cfg.ezmsg_chain == "filter":
        filt = Filter(FilterSettings(coefs=sos, coef_type="sos"))
        components["FILTER"] = filt
        connections: tuple = ((inlet.OUTPUT_SIGNAL, filt.INPUT_SIGNAL), (filt.OUTPUT_SIGNAL, rule.INPUT_SIGNAL))
        rec.notes.append("chain: LSLInletUnit -> sigproc Filter(PulseWork's sos) -> intervals/RMS/rule unit")
    elif cfg.ezmsg_chain == "butter":
        band = ButterworthFilter(
            ButterworthFilterSettings(order=4, cuton=20.0, cutoff=min(450.0, 0.45 * cfg.rate_hz), coef_type="sos")
        )
        notch = Filter(
            FilterSettings(coefs=signal.tf2sos(*signal.iirnotch(50.0, 30.0, fs=cfg.rate_hz)), coef_type="sos")
        )
        components.update(BAND=band, NOTCH=notch)
        connections = (
            (inlet.OUTPUT_SIGNAL, band.INPUT_SIGNAL),
            (band.OUTPUT_SIGNAL, notch.INPUT_SIGNAL),
            (notch.OUTPUT_SIGNAL, rule.INPUT_SIGNAL),
        )
        rec.notes.append("chain: LSLInletUnit -> sigproc ButterworthFilter -> sigproc Filter(notch) -> rule unit")
    else:
        connections = ((inlet.OUTPUT_SIGNAL, rule.INPUT_SIGNAL),)
        rec.notes.append("chain: LSLInletUnit -> one custom unit calling PulseWork.push")
    components["RULE"] = rule

    pusher = start_pusher(name, cfg.channels, cfg.rate_hz, cfg.seconds, chunk=cfg.chunk)
    ctx.t_end = time.perf_counter() + cfg.deadline_s
    try:
        ez.run(
            components=components,
            connections=connections,
            force_single_process=True,
            graph_address=("127.0.0.1", _free_loopback_port()),
            auto_start=True,
        )
    finally:
        _EZ_RUNS.pop(run_id, None)
        _finish_pusher(pusher, rec)
    rec.notes.append(
        f"ezmsg {_version('ezmsg')}, ezmsg-lsl {_version('ezmsg-lsl')}, "
        f"ezmsg-sigproc {_version('ezmsg-sigproc')}; single process"
    )
    return rec.result()


# --------------------------------------------------------------------------------------------- driver

_RUNNERS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "baseline": _run_baseline,
    "framework": _run_framework,
    "mne-lsl": _run_mne,
    "mne-lsl-cb": _run_mne,
    "ezmsg": _run_ezmsg,
}
_NEEDS: dict[str, tuple[str, ...]] = {
    "baseline": ("pylsl",),
    "framework": ("pylsl", "closedloop.pipeline"),
    "mne-lsl": ("mne_lsl.stream",),
    "mne-lsl-cb": ("mne_lsl.stream",),
    "ezmsg": ("ezmsg.core", "ezmsg.lsl.inlet", "ezmsg.sigproc.filter", "pylsl"),
}
_DISTS: dict[str, tuple[str, ...]] = {
    "baseline": ("pylsl",),
    "framework": ("closedloop", "pylsl"),
    "mne-lsl": ("mne-lsl",),
    "mne-lsl-cb": ("mne-lsl",),
    "ezmsg": ("ezmsg", "ezmsg-lsl", "ezmsg-sigproc"),
}


def _unavailable(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "status": "unavailable", "reason": reason}


def _run_here(cfg: Config) -> dict[str, Any]:
    """Run one contender in this process (what the child process does)."""
    import importlib

    if cfg.name not in _RUNNERS:
        return _unavailable(cfg.name, f"unknown contender (known: {', '.join(_RUNNERS)})")
    for mod in _NEEDS[cfg.name]:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # ImportError, or a liblsl that does not load
            return _unavailable(cfg.name, f"cannot import {mod}: {type(exc).__name__}: {exc}")
    try:
        res = _RUNNERS[cfg.name](cfg)
    except Exception as exc:
        return _unavailable(cfg.name, f"{type(exc).__name__}: {exc}")
    res["versions"] = {d: _version(d) for d in _DISTS[cfg.name]}
    return res


def run_contender(
    name: str,
    *,
    channels: int = 64,
    rate_hz: float = 2048.0,
    stim_hz: float = 50.0,
    seconds: float = 20.0,
    chunk: int = 8,
    isolate: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run contender ``name`` (one of :data:`CONTENDERS` or :data:`EXTRA_CONTENDERS`) and return its results.

    The dict has ``status`` ``"ok"`` (with ``e2e`` and ``decision`` summaries in ms from
    :func:`bench._lsl.latency_summary`, ``pulses``, ``pulses_expected``, ``pulses_kept``, ``samples_*``,
    ``batched_units``, ``cpu_percent``, ``counters``, ``notes``) or ``"unavailable"`` with a ``reason``.
    ``isolate`` (default) runs it in a child process; ``options`` are :class:`Config` fields
    (``mne_poll``, ``mne_bufsize_s``, ``mne_acquisition_delay_s``, ``ezmsg_chain``).
    """
    cfg = Config(name, channels, rate_hz, stim_hz, seconds, chunk, **options)
    if not isolate:
        return _run_here(cfg)
    cmd = [sys.executable, "-m", "bench.peer", "--worker", json.dumps(asdict(cfg))]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["LSLAPICFG"] = str(LOOPBACK_CFG)
    timeout = cfg.deadline_s + 60.0  # imports, ezmsg start-up and shutdown, the pusher's own exit
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _unavailable(name, f"did not finish within {timeout:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    return _unavailable(name, f"worker exited {proc.returncode} without a result: {tail}")


def _fmt_pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the results, then each peer's median e2e over the baseline's."""
    head = (
        "| contender | e2e ms (median / p99 / max) | decision ms (median / p99 / max) | pulses kept / total "
        "(expected) | samples lost | units: partial / batched / all | CPU % |\n|---|---|---|---|---|---|---|"
    )
    rows = [head]
    lines: list[str] = []
    for r in results:
        if r.get("status") != "ok":
            rows.append(f"| {r['name']} | unavailable: {r.get('reason', '?')} | | | | | |")
            continue
        rows.append(
            f"| {r['name']} | {fmt_ms(r['e2e'])} | {fmt_ms(r['decision'])} | "
            f"{r['pulses_kept']} / {r['pulses']} ({r['pulses_expected']}) | {r['samples_lost']} | "
            f"{r['partial_units']} / {r['batched_units']} / {r['units']} | {_fmt_pct(r['cpu_percent'])} |"
        )
    base = next((r for r in results if r["name"] == "baseline" and r.get("status") == "ok"), None)
    base_med = base["e2e"]["median"] if base else None
    for r in results:
        if r["name"] == "baseline" or r.get("status") != "ok":
            continue
        med = r["e2e"]["median"]
        if base_med and med is not None:
            lines.append(
                f"- {r['name']}: median e2e {med:.3f} ms = {med / base_med:.2f} x baseline ({base_med:.3f} ms)"
            )
    for r in results:
        extra = [f"{k}={v}" for k, v in (r.get("counters") or {}).items()] + list(r.get("notes") or [])
        if extra:
            lines.append(f"- {r['name']} notes: " + "; ".join(extra))
    return "\n".join(rows) + ("\n\n" + "\n".join(lines) if lines else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--rate", type=float, default=2048.0)
    p.add_argument("--stim-hz", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of data per contender (default 20)")
    p.add_argument("--quick", action="store_true", help="5 s per contender")
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, from {', '.join(CONTENDERS + EXTRA_CONTENDERS)}",
    )
    p.add_argument("--mne-poll", choices=("sleep0", "sleep100us", "spin"), default="sleep0")
    p.add_argument("--mne-bufsize", type=float, default=1.0, help="StreamLSL bufsize in s (default 1)")
    p.add_argument("--mne-acquisition-delay", type=float, default=0.001, help="s (mne-lsl's default 0.001)")
    p.add_argument("--ezmsg-chain", choices=("filter", "butter", "unit"), default="filter")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result dicts as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # child process: run one contender, print its dict on one line
        res = _run_here(Config(**json.loads(args.worker)))
        sys.stdout.flush()
        print(RESULT_PREFIX + json.dumps(res), flush=True)
        return 0

    seconds = 5.0 if args.quick else args.seconds
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    opts = {
        "mne_poll": args.mne_poll,
        "mne_bufsize_s": args.mne_bufsize,
        "mne_acquisition_delay_s": args.mne_acquisition_delay,
        "ezmsg_chain": args.ezmsg_chain,
    }
    print(
        f"# peers: {args.channels} ch x {args.rate:g} Hz, chunks of 8, {args.stim_hz:g} Hz pulses, "
        f"{seconds:g} s per contender, first {WARMUP_S:g} s of decisions dropped",
        flush=True,
    )
    skip_ms, interval_ms = round(PulseWork.mwave_end_s * args.rate) / args.rate * 1e3, 1e3 / args.stim_hz
    if skip_ms >= interval_ms:
        print(
            f"# note: the {interval_ms:g}-ms interval is not longer than PulseWork's {skip_ms:.1f}-ms M-wave skip: "
            "the RMS window is empty, the rule always sees RMS 0 (the work is filtering + interval bookkeeping)"
        )
    results = []
    for n in names:
        print(f"running {n} ...", file=sys.stderr, flush=True)
        results.append(
            run_contender(n, channels=args.channels, rate_hz=args.rate, stim_hz=args.stim_hz, seconds=seconds, **opts)
        )
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {**vars(args), "seconds": seconds}, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
