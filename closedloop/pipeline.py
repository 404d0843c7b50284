"""The orchestrator: the one asyncio component that owns time, deadlines and tasks.

Pulse-synchronous operation. The EMG stream is cut into intervals of ``1 / stim_hz`` seconds on its
sample grid (absolute boundaries, no drift). When the last sample of interval ``k`` has arrived:

1. the estimator measures interval ``k`` (artifact blanked, M-wave window, volitional EMG in the rest),
   locating the pulse that opened it by its delivery time;
2. the current phase decides what happens: ``rest`` (no pulse), ``calibrate`` (collect MVC effort, no
   pulse) or ``control`` (ask the controller for the amplitude of the next pulse);
3. the pulse goes through the safety layer, which alone calls the stimulator; it lands at the start of
   interval ``k + 1``.

Decision latency is measured per pulse from the arrival of the chunk holding the interval's last sample
(``Chunk.t_arrival``) to the return of the stimulator driver; a decision later than ``deadline_s`` is a
deadline miss (policy: skip the pulse, or stop). Any exception, a stalled stream, a signal (SIGINT,
SIGTERM) or the end of the session turns output off first, then surfaces in the result and summary.json.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import datetime as _dt
import gc
import json
import math
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from closedloop.errors import BadSamples, ClosedLoopError, ConfigError, SafetyError, StreamMismatch
from closedloop.estimation.interval import IntervalEstimator, mvc_from_efforts
from closedloop.estimation.segmenter import Interval, IntervalSegmenter, PulseSegmenter
from closedloop.recording.session import SessionRecorder
from closedloop.safety import SafetyLayer
from closedloop.types import Burst, Chunk, ControlContext, Estimate, PulseCommand, StreamInfo

__all__ = [
    "ESTIMATE_HEAD",
    "ESTIMATE_PER_CHANNEL",
    "Phase",
    "Session",
    "SessionConfig",
    "SessionObserver",
    "SessionResult",
    "latency_stats",
]

PhaseMode = Literal["rest", "calibrate", "control"]

#: Channels of the Estimates stream: these (control channel), then ESTIMATE_PER_CHANNEL per EMG channel.
ESTIMATE_HEAD = (
    "effort",
    "effort_smooth",
    "effort_pct_mvc",
    "mwave_ptp",
    "mwave_ptp_rel",
    "mwave_area_rel",
    "mdf_hz",
    "mnf_hz",
    "fi_nsm5",
    "amplitude_ma",
    "next_amplitude_ma",
    "decision_latency_ms",
)
#: Longest the recorder's writer waits for items while no decision is made (s); see Session._hand_over.
HAND_OVER_S = 0.05

ESTIMATE_HEAD_UNITS = ("uV", "uV", "percent", "uV", "ratio", "ratio", "Hz", "Hz", "Hz^-6", "mA", "mA", "ms")
ESTIMATE_PER_CHANNEL = ("effort", "mwave_ptp", "mdf_hz")
ESTIMATE_PER_CHANNEL_UNITS = ("uV", "uV", "Hz")


def _head_row(est: Estimate, c: int, next_amp: float, latency_ms: float) -> tuple[float, ...]:
    """The :data:`ESTIMATE_HEAD` values of an interval (control channel ``c``)."""
    return (
        est.effort_uv,
        est.effort_smooth_uv,
        est.effort_pct_mvc,
        est.mwave_ptp_uv,
        est.channel_mwave_ptp_rel[c],
        est.channel_mwave_area_rel[c],
        est.channel_mdf_hz[c],
        est.channel_mnf_hz[c],
        est.channel_fi_nsm5[c],
        est.amplitude_ma,
        next_amp,
        latency_ms,
    )


@dataclass(frozen=True)
class Phase:
    """A stretch of a session: ``rest`` (no pulses), ``calibrate`` (MVC, no pulses) or ``control``.

    ``controller`` names the controller of a control phase among the session's ``phase_controllers``
    (None: the session's main controller). A controller is reset when a phase that uses it begins.
    """

    name: str
    duration_s: float
    mode: PhaseMode = "control"
    controller: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("rest", "calibrate", "control"):
            raise ConfigError(f"phase {self.name!r}: mode {self.mode!r} not allowed; use rest, calibrate or control")
        if not self.duration_s > 0:
            raise ConfigError(f"phase {self.name!r}: duration_s = {self.duration_s!r} must be > 0")


def _chunk_head(chunk: Chunk, n: int, rate_hz: float) -> Chunk:
    """The first ``n`` samples of ``chunk``, with the pulses whose sample is among them."""
    ts = chunk.timestamps[:n]
    change: dict = {"samples": chunk.samples[:n], "timestamps": ts}
    if chunk.pulse_times is not None:
        keep = np.searchsorted(chunk.timestamps, np.asarray(chunk.pulse_times) - 0.5 / rate_hz) < n
        change["pulse_times"] = np.asarray(chunk.pulse_times)[keep]
        amps = getattr(chunk, "pulse_amplitudes_ma", None)
        if amps is not None:
            change["pulse_amplitudes_ma"] = np.asarray(amps)[keep]
    return replace(chunk, **change)


@dataclass(frozen=True)
class SessionConfig:
    """How a session runs.

    Parameters
    ----------
    stim_hz:
        Pulse rate (Hz); the interval length is ``1 / stim_hz``.
    pulse_width_us:
        Pulse width of every pulse (us).
    stim_channel:
        Stimulator channel (0-based).
    phases:
        The session's phases in order; the session ends after the last (or at ``duration_s``).
    duration_s:
        Optional cap on the session length (s).
    start_time:
        LSL time at which phase time 0 begins (default: when the session has connected everything and
        starts its loop). Samples before it are recorded; nothing is delivered.
    deadline_s:
        Longest allowed decision latency (s), from the arrival of the interval's last sample to delivery.
    deadline_policy:
        On a miss: ``"skip"`` the pulse, or ``"stop"`` the session with output off.
    nonfinite_policy:
        NaN/inf EMG samples: ``"stop"`` the session with output off (default), or ``"skip"`` the pulses of
        the affected intervals and go on.
    rate_tolerance:
        Largest relative difference between the measured and the nominal sampling rate.
    stimulator_latency_s:
        Known delay from delivery to the pulse reaching the muscle (s), to locate the artifact in the EMG.
    calibration_window_s:
        MVC = largest mean effort over this window during calibrate phases (s).
    pulses_from:
        ``"delivered"``: the pulses in the EMG are the ones this session delivers (live). ``"source"``: they
        come with the chunks (``Chunk.pulse_times``, a replayed recording); the controller then runs in
        shadow: what it would have commanded is checked by the safety layer, given to the (shadow)
        stimulator and recorded as ``ShadowPulses``, and the recording's pulses are recorded as ``Pulses``.
    segmentation:
        ``"grid"``: intervals of ``1/stim_hz`` on the sample grid (live, and replays of closedloop's own
        sessions); ``"pulses"``: from each pulse to the next, windows of ``window_s`` without pulses
        (replays of other recordings).
    window_s:
        Window length without pulses for ``segmentation="pulses"`` (s).
    pulse_lead_s:
        ``segmentation="pulses"``: each interval begins this long before its pulse (s), for pulse markers that
        may be late; give the estimator the same (``EstimatorConfig.pulse_lead_s``) so that it looks for the
        artifact there.
    record_emg:
        Record the EMG stream in session.xdf (replays leave it in the original file).
    nan_tolerance_s:
        In a control phase, output goes off when the estimator has given no finite effort for longer than
        this (s); None disables the check. An infinite estimate always turns output off.
    """

    stim_hz: float = 25.0
    pulse_width_us: float = 300.0
    stim_channel: int = 0
    phases: tuple[Phase, ...] = (Phase("control", math.inf, "control"),)
    duration_s: float | None = None
    start_time: float | None = None
    deadline_s: float = 0.005
    deadline_policy: Literal["skip", "stop"] = "skip"
    nonfinite_policy: Literal["stop", "skip"] = "stop"
    rate_tolerance: float = 0.02
    stimulator_latency_s: float = 0.0
    calibration_window_s: float = 0.5
    pulses_from: Literal["delivered", "source"] = "delivered"
    segmentation: Literal["grid", "pulses"] = "grid"
    window_s: float = 0.1
    pulse_lead_s: float = 0.0
    record_emg: bool = True
    nan_tolerance_s: float | None = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        if self.pulses_from not in ("delivered", "source"):
            raise ConfigError(f"pulses_from = {self.pulses_from!r}: allowed 'delivered' or 'source'")
        if self.segmentation not in ("grid", "pulses"):
            raise ConfigError(f"segmentation = {self.segmentation!r}: allowed 'grid' or 'pulses'")
        if not (math.isfinite(self.stim_hz) and self.stim_hz > 0):
            raise ConfigError(f"stim_hz = {self.stim_hz!r}: must be a positive number of Hz")
        if not self.phases:
            raise ConfigError("a session needs at least one phase")
        if self.deadline_policy not in ("skip", "stop"):
            raise ConfigError(f"deadline_policy = {self.deadline_policy!r}: allowed 'skip' or 'stop'")
        if self.nonfinite_policy not in ("skip", "stop"):
            raise ConfigError(f"nonfinite_policy = {self.nonfinite_policy!r}: allowed 'skip' or 'stop'")
        if not self.deadline_s > 0:
            raise ConfigError(f"deadline_s = {self.deadline_s!r}: must be > 0")
        if self.total_duration_s == math.inf:
            raise ConfigError("the session never ends: give duration_s or a finite last phase")

    @property
    def total_duration_s(self) -> float:
        total = sum(p.duration_s for p in self.phases)
        return min(total, self.duration_s) if self.duration_s is not None else total

    def as_dict(self) -> dict:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d


class SessionObserver(Protocol):
    """What a :class:`Session` tells its observers (all optional), in the loop's thread: keep them quick and
    never blocking (hand the data to another thread); one that raises is dropped, the session goes on."""

    def on_waiting(self) -> None:
        """Connected and recording; the phases wait for :meth:`Session.start_threadsafe`."""

    def on_start(self, t_start: float) -> None:
        """The phases begin at LSL time ``t_start``."""

    def on_interval(self, t_rel: float, phase: str, estimate: Estimate, next_amplitude_ma: float) -> None:
        """An interval was estimated (``t_rel``: session time of its end, s) and the next pulse decided (mA)."""

    def on_event(self, event: dict) -> None:
        """A session or safety event: ``{"t", "kind", "reason"}``."""

    def on_end(self, result: SessionResult) -> None:
        """The session is over (output off, summary.json written)."""


def latency_stats(values_s: Sequence[float]) -> dict:
    """Median, 99th percentile and maximum of latencies given in seconds, in milliseconds."""
    a = np.asarray(values_s, dtype=float) * 1e3
    if a.size == 0:
        return {"median": None, "p99": None, "max": None, "n": 0}
    return {
        "median": float(np.median(a)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "n": int(a.size),
    }


@contextlib.contextmanager
def collector_frozen():
    """Leave the objects that exist now out of the garbage collector's scans until the block ends: the modules
    and libraries loaded before a session (~160 000 objects with MNE and numba) make a full collection take
    ~0.1 s, a pause in the middle of the pulse loop (measured: MNE opening a file took 210 ms instead of
    80 ms when one came). Objects made inside the block are collected as usual. Blocks may nest (and run in
    several threads): the outermost one's end unfreezes."""
    global _frozen_depth
    with _frozen_lock:
        if _frozen_depth == 0:
            gc.freeze()
        _frozen_depth += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen_depth -= 1
            if _frozen_depth == 0:
                gc.unfreeze()


_frozen_lock = threading.Lock()
_frozen_depth = 0


@dataclass
class SessionResult:
    """What happened in a session (also written to summary.json)."""

    status: str = "not started"
    error: str | None = None
    out_dir: Path | None = None
    n_intervals: int = 0
    n_pulses: int = 0
    decision_latency_s: list[float] = field(default_factory=list)
    e2e_latency_s: list[float] = field(default_factory=list)
    deadline_misses: int = 0
    skipped_pulses: int = 0
    mvc_uv: list[float] | None = None
    summary: dict = field(default_factory=dict)
    estimates: np.ndarray | None = None
    """``(n_intervals, len(ESTIMATE_HEAD))``: the control-channel columns of the Estimates stream, row for row
    as in session.xdf, when the session was made with ``keep_estimates=True`` (else None)."""
    exception: Exception | None = field(default=None, repr=False)
    """The exception that ended a faulted session (``error`` is its text), None otherwise."""

    @property
    def ok(self) -> bool:
        return self.status == "completed"


ProgressCallback = Callable[[float, str, Estimate, float], None]


_blas_controller: tuple[int, object] | None = None  # (len(sys.modules) when made, ThreadpoolController)


def _one_blas_thread():
    """Run BLAS single-threaded for the session (a context manager). Per-pulse linear algebra is tiny; BLAS
    worker threads only add wake-up latency and, after every call, spin-wait on a core that the LSL reader
    and the amplifier's software need (measured at 64 ch x 2048 Hz: 52 % -> 11 % CPU, p99 decision latency
    3.8 -> 1.6 ms, bench/closed_loop.py).

    Finding the BLAS libraries scans every loaded shared library (~2.5 ms once numba is loaded): the scan is
    reused by the next sessions of the process (replays of a batch) until a module has been imported since."""
    global _blas_controller
    from threadpoolctl import ThreadpoolController

    n_modules = len(sys.modules)
    if _blas_controller is None or _blas_controller[0] != n_modules:
        _blas_controller = (n_modules, ThreadpoolController())
    return _blas_controller[1].limit(limits=1, user_api="blas")


class _Watchdog:
    """A thread of its own that turns output off when the event loop cannot: a decision that hangs (a
    controller or estimator that does not return) or EMG that stops arriving. It checks every
    ``check_s`` (a quarter of a pulse period, at most 5 ms), so output goes off within one pulse period of
    the limit being passed, whatever the loop is doing."""

    def __init__(self, session: Session, hang_s: float, stall_s: float | None, check_s: float) -> None:
        self.session = session
        self.hang_s = hang_s
        self.stall_s = stall_s
        self.check_s = check_s
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="closedloop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        s = self.session
        while not self._stop.wait(self.check_s):
            now = time.perf_counter()
            busy = s._busy_since
            if busy is not None and now - busy > self.hang_s:
                self._trip(f"decision hung: no answer for {(now - busy) * 1e3:.1f} ms (limit {self.hang_s * 1e3:g} ms)")
            last = s._last_arrival
            if self.stall_s is not None and last is not None and now - last > self.stall_s:
                self._trip(f"EMG stalled: no samples for {now - last:.2f} s (limit {self.stall_s:g} s)")

    def _trip(self, reason: str) -> None:
        self.reason = reason
        self._stop.set()
        s = self.session
        s.safety.output_off(s._now(), f"watchdog: {reason}")  # from this thread: at once
        s.stop_threadsafe(f"watchdog: {reason}", fault=True)


class Session:
    """One closed-loop session: source -> estimator -> controller -> safety -> stimulator, recorded.

    Parameters
    ----------
    source:
        The EMG :class:`~acquisition.base.Source` driving the loop.
    estimator_factory:
        Builds the per-interval estimator for the stream (``step(interval, pulse_times, amplitude_ma)``,
        ``step_many``, ``set_mvc``, ``mvc_uv``: :class:`IntervalEstimator`). Optional methods are used when
        present: ``lookahead(interval, n_received, pulse_times)`` after each chunk, with the interval being
        filled (on the pulse grid), and ``settle()`` after a chunk's pulses are out, for deferred work.
    controller:
        The main per-pulse controller (``step(estimate, ctx) -> amplitude_ma | Burst``,
        :class:`controllers.base.Controller`).
    safety:
        The safety layer wrapping the stimulator.
    config:
        Session settings.
    out_dir:
        Where session.xdf, estimates.csv and summary.json go.
    aux_sources:
        Further sources recorded alongside (e.g. Force, GroundTruth), keyed by their name in the recording.
    clock:
        Time base of pulse timestamps (default: the source's ``clock``).
    progress:
        Optional callback ``(t_session_s, phase, estimate, amplitude_ma)`` after each interval.
    extra_summary:
        Merged into summary.json (e.g. the simulator's parameters).
    on_start:
        Called once with the session's time zero (LSL time) just before the loop starts.
    csv_relative_time:
        ``t_s`` in estimates.csv in seconds from the first sample (replays) instead of the LSL clock.
    phase_controllers:
        Further controllers by name, for phases that name one (:attr:`Phase.controller`).
    force_source:
        Key of the aux source whose newest value is the controllers' ``ctx.force_n`` (N), if present.
    observers:
        Objects told what happens (:class:`SessionObserver`; e.g. the MQTT bridge), in the loop's thread.
    wait_for_start:
        Connect, record and estimate, but begin the phases only when :meth:`start_threadsafe` is called.
    keep_estimates:
        Also keep the control-channel columns of the Estimates stream in memory (``result.estimates``), e.g.
        for a replay's summary (96 bytes per interval).
    """

    def __init__(
        self,
        source,
        estimator_factory: Callable[[StreamInfo], IntervalEstimator],
        controller,
        safety: SafetyLayer,
        config: SessionConfig,
        out_dir: str | Path,
        aux_sources: dict[str, object] | None = None,
        clock: Callable[[], float] | None = None,
        progress: ProgressCallback | None = None,
        extra_summary: dict | None = None,
        on_start: Callable[[float], None] | None = None,
        csv_relative_time: bool = False,
        phase_controllers: dict[str, object] | None = None,
        force_source: str = "Force",
        observers: Sequence[object] = (),
        wait_for_start: bool = False,
        keep_estimates: bool = False,
    ) -> None:
        self.source = source
        self.estimator_factory = estimator_factory
        self.estimator: IntervalEstimator | None = None
        self.controller = controller
        self.phase_controllers = dict(phase_controllers or {})
        for ph in config.phases:
            if ph.controller is not None and ph.controller not in self.phase_controllers:
                raise ConfigError(
                    f"phase {ph.name!r} names controller {ph.controller!r}, which the session does not have "
                    f"(it has: {', '.join(self.phase_controllers) or 'none'})"
                )
        self.force_source = force_source
        self.observers = list(observers)
        self.wait_for_start = wait_for_start
        self.started = threading.Event()  # set when the phases begin
        self._force_n = math.nan
        self._ctrl_phase: int | None = None
        self._ctrl_t0 = 0.0  # session time (s) of the current control phase's first decision
        self.safety = safety
        self.config = config
        self.out_dir = Path(out_dir)
        self.aux_sources = dict(aux_sources or {})
        self._clock = clock
        self.progress = progress
        self.extra_summary = dict(extra_summary or {})
        self.on_start = on_start
        self.csv_relative_time = csv_relative_time
        self.result = SessionResult(out_dir=self.out_dir)
        self._stop_reason: str | None = None
        self._requested_stop: tuple[str, bool] | None = None  # set first, from any thread
        self._stop_is_fault = False
        self._main_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: _Watchdog | None = None
        self._busy_since: float | None = None
        self._handed_at = 0.0  # perf_counter of the last hand-over to the recorder's writer
        self._last_arrival: float | None = None
        self.recorder: SessionRecorder | None = None
        self.warning_counts: Counter[str] = Counter()
        self.events: list[dict] = []
        self._kept: list[np.ndarray] | None = [] if keep_estimates else None

    # -- public -------------------------------------------------------------------------------------
    def request_stop(self, reason: str, fault: bool = False) -> None:
        """Turn output off now and end the session (signals, e-stops; ``fault``: a watchdog). Loop thread."""
        if self._requested_stop is None:
            self._requested_stop = (reason, fault)
        self.safety.output_off(self._now(), reason)
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_is_fault = fault
        if self._main_task is not None and not self._main_task.done():
            self._main_task.cancel()

    def _first_cause(self, error: str) -> str:
        """The watchdog's reason when it cut the loop off first (the loop's own error follows from it)."""
        wd = self._watchdog
        return f"watchdog: {wd.reason}" if wd is not None and wd.reason else error

    def stop_threadsafe(self, reason: str, fault: bool = False) -> None:
        """:meth:`request_stop` from any thread (keyboard, MQTT, watchdog): output goes off in the calling
        thread at once, the session ends in its own."""
        if self._requested_stop is None:  # before output goes off: a delivery it interrupts is this stop
            self._requested_stop = (reason, fault)
        self.safety.output_off(self._now(), reason)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.request_stop, reason, fault)
            except RuntimeError:  # the loop closed meanwhile: the session is over anyway
                pass

    def clock(self) -> float:
        return (self._clock or self.source.clock)()

    def record_event(self, kind: str, reason: str) -> None:
        """Record an event (session.xdf, summary.json, observers); call it in the loop thread (e.g. through
        :meth:`call_threadsafe`)."""
        self._event(kind, reason)

    def start_threadsafe(self) -> bool:
        """Begin the phases of a session made with ``wait_for_start`` (from any thread); False if it has
        already begun or cannot (it is not running)."""
        loop = self._loop
        if not self.wait_for_start or self.started.is_set() or loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(self._begin, None)
        except RuntimeError:
            return False
        return True

    def call_threadsafe(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run ``fn`` in the session's loop thread between two chunks (e.g. to change a controller parameter);
        the returned future holds its result or exception."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller, never raised in the loop
                fut.set_exception(exc)

        loop = self._loop
        if loop is None or loop.is_closed():
            fut.set_exception(RuntimeError("the session is not running"))
            return fut
        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:
            fut.set_exception(RuntimeError("the session is not running"))
        return fut

    def controllers(self) -> dict[str, object]:
        """The session's controllers by name: ``"controller"`` (the main one) and the phase controllers."""
        out = {} if self.controller is None else {"controller": self.controller}
        out.update(self.phase_controllers)
        return out

    def _begin(self, t_start: float | None) -> None:
        """The phases begin (at ``t_start``, default now)."""
        if self.started.is_set() or self._stop_reason is not None:  # once, and never after a stop
            return
        self._t_start = self.clock() if t_start is None else t_start
        self.started.set()
        if self.on_start is not None:
            self.on_start(self._t_start)
        if self.wait_for_start:
            self._event("started", "phases begin")
        self._notify("on_start", self._t_start)

    def _notify(self, method: str, *args) -> None:
        """Tell the observers; an observer that fails is dropped with a warning, the session goes on."""
        for obs in list(self.observers):
            fn = getattr(obs, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:
                self.observers.remove(obs)
                self.warning_counts[f"observer {type(obs).__name__} failed and was dropped: {exc!r}"] += 1

    async def run(self) -> SessionResult:
        """Run the session to its end; never leaves output on. Returns the result (see ``status``)."""
        loop = self._loop = asyncio.get_running_loop()
        res = self.result
        installed = self._install_signals(loop)
        self._t_wall_start = _dt.datetime.now(_dt.timezone.utc)
        self._main_task = asyncio.current_task()  # a stop while the sources are opening cancels it too
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.enter_context(_one_blas_thread())
                await self._open_sources(stack)
                self._prepare()
                stack.enter_context(collector_frozen())
                self.safety.stimulator.open()
                if self.wait_for_start:
                    self._t_start = math.inf  # no phase until start_threadsafe()
                    self._notify("on_waiting")
                else:
                    self._begin(self._t_start)
                aux_tasks = [
                    asyncio.create_task(self._record_aux(key, src), name=f"record[{key}]")
                    for key, src in self.aux_sources.items()
                ]
                try:
                    await self._pipeline()
                finally:
                    for t in aux_tasks:
                        t.cancel()
                    await asyncio.gather(*aux_tasks, return_exceptions=True)
            res.status = "completed"
        except asyncio.CancelledError:
            if self._stop_reason is None:
                self.safety.output_off(self._now(), "session cancelled")
                raise
            res.status = "faulted" if self._stop_is_fault else "stopped"
            res.error = self._stop_reason
        except ClosedLoopError as exc:
            req = self._requested_stop
            if req is not None and self.safety.tripped == req[0]:
                # a stop from another thread turned output off while a pulse was being delivered: that
                # stop, not the refused delivery, is what ended the session
                res.status = "faulted" if req[1] else "stopped"
                res.error = req[0]
            else:
                self.safety.output_off(self._now(), f"{type(exc).__name__}: {exc}")
                res.status = "faulted"
                res.error = self._first_cause(f"{type(exc).__name__}: {exc}")
                res.exception = exc
        except Exception as exc:
            self.safety.output_off(self._now(), f"unexpected {type(exc).__name__}: {exc}")
            res.status = "faulted"
            res.error = self._first_cause(f"unexpected {type(exc).__name__}: {exc}")
            res.exception = exc
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            self.safety.output_off(self._now(), "session ended")
            with contextlib.suppress(Exception):
                self.safety.stimulator.close()
            try:
                self._finish()  # a signal now only queues a stop: the session's files are written whole
            finally:
                self._remove_signals(loop, installed)
        return res

    # -- setup ----------------------------------------------------------------------------------------
    async def _open_sources(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the EMG source and the recorded sources concurrently (each may take a while to connect)."""
        sources = [self.source, *self.aux_sources.values()]
        results = await asyncio.gather(*(src.__aenter__() for src in sources), return_exceptions=True)
        for src, r in zip(sources, results, strict=True):
            if not isinstance(r, BaseException):
                stack.push_async_exit(src.__aexit__)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _now(self) -> float:
        try:
            return self.clock()
        except Exception:
            return math.nan

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[tuple[int, Any]]:
        """SIGINT and SIGTERM stop the session; returns each signal installed with the handler it replaced."""
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                before = signal.getsignal(sig)
                loop.add_signal_handler(sig, self.request_stop, f"received {sig.name}")
                installed.append((sig, before))
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                pass
        return installed

    @staticmethod
    def _remove_signals(loop: asyncio.AbstractEventLoop, installed: list[tuple[int, Any]]) -> None:
        """Put back the handlers the session replaced (asyncio's removal would leave Python's defaults)."""
        for sig, before in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
                if before is not None:
                    signal.signal(sig, before)

    def _prepare(self) -> None:
        info: StreamInfo = self.source.info
        cfg = self.config
        if info.rate_hz <= 0:
            raise StreamMismatch(f"EMG stream {info.name!r} has no regular sampling rate")
        self.estimator = self.estimator_factory(info)
        if cfg.segmentation == "pulses":
            self.segmenter = PulseSegmenter(
                info.n_channels, info.rate_hz, cfg.window_s, max(cfg.window_s, 0.5), lead_s=cfg.pulse_lead_s
            )
        else:
            self.segmenter = IntervalSegmenter(info.n_channels, info.rate_hz, 1.0 / cfg.stim_hz)
        # on the pulse grid the estimator starts on each interval as its chunks arrive (see
        # IntervalEstimator.lookahead): the work left when the last one comes is what delays the pulse
        self._lookahead = getattr(self.estimator, "lookahead", None) if cfg.segmentation == "grid" else None
        self._replay = cfg.pulses_from == "source"
        self._n_source_pulses = 0
        # replays as fast as possible write in this thread: no writer thread to hand the GIL to per item; their
        # estimates.csv rows are laid out by compiled code where the estimator runs compiled code too
        threaded = not (self._replay and getattr(self.source, "speed", 1.0) is None)
        compiled = not threaded and getattr(self.estimator, "kernels", None) is not None
        self.recorder = rec = SessionRecorder(self.out_dir, threaded=threaded, compiled=compiled)
        if cfg.record_emg:
            emg_fmt = "float32" if np.dtype(getattr(self.source, "dtype", np.float32)) == np.float32 else "double64"
            rec.add_stream(
                "EMG",
                StreamInfo("EMG", "EMG", info.rate_hz, info.channel_names, info.units, info.source_id),
                emg_fmt,
                desc={"original_name": info.name},
            )
        pulse_info = StreamInfo(
            "Pulses",
            "Pulses",
            0.0,
            ("channel", "amplitude_ma", "pulse_width_us", "charge_uc", "requested_ma"),
            ("index", "mA", "us", "uC", "mA"),
        )
        # live: the delivered pulses; replay: the recording's pulses, and what the controller would have sent
        rec.add_stream("Pulses", pulse_info, "double64")
        if self._replay:
            rec.add_stream(
                "ShadowPulses",
                StreamInfo("ShadowPulses", "Pulses", 0.0, pulse_info.channel_names, pulse_info.units),
                "double64",
            )
        est_names = list(ESTIMATE_HEAD)
        est_units = list(ESTIMATE_HEAD_UNITS)
        for ch in info.channel_names:
            est_names += [f"{name}:{ch}" for name in ESTIMATE_PER_CHANNEL]
            est_units += list(ESTIMATE_PER_CHANNEL_UNITS)
        rec.add_stream(
            "Estimates", StreamInfo("Estimates", "Estimates", 0.0, tuple(est_names), tuple(est_units)), "double64"
        )
        for key, src in self.aux_sources.items():
            a = src.info
            rec.add_stream(
                key,
                StreamInfo(key, a.type, a.rate_hz, a.channel_names, a.units, a.source_id),
                "double64",
                desc={"original_name": a.name},
            )
        rec.add_stream("Events", StreamInfo("Events", "Markers", 0.0, ("event",), ("text",)), "string")
        rec.set_estimate_channels(info.channel_names)
        rec.start()
        self.safety.on_event = self._on_safety_event
        self._pending: deque[tuple[float, float]] = deque()
        self._calib: list[np.ndarray] = []
        self._nan_s = 0.0
        self._in_calibration = False
        self._t_start = cfg.start_time
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._n_samples = 0
        self._next_rate_check = 2.0
        self._phase_ends = np.cumsum([p.duration_s for p in cfg.phases]).tolist()  # bisect: ~10x faster per call
        self._phase_ends_a = np.asarray(self._phase_ends)  # searchsorted: all the intervals of a chunk at once
        self._n_channels = info.n_channels
        self._fs = info.rate_hz
        if (
            not any(p.mode == "calibrate" for p in cfg.phases)
            and self.estimator.mvc_uv is None
            and any(p.mode == "control" for p in cfg.phases)
        ):
            self._event("warning", "control phases without MVC calibration: effort in % MVC is undefined")

    def _event(self, kind: str, reason: str, t: float | None = None) -> None:
        t = self._now() if t is None else t
        ev = {"t": t, "kind": kind, "reason": reason}
        self.events.append(ev)
        self._record_event(t, kind, reason)
        self._notify("on_event", ev)

    def _record_event(self, t: float, kind: str, reason: str) -> None:
        """Put an event into session.xdf's Events stream (safety events and session events)."""
        rec = self.recorder
        if rec is not None and rec.started and not rec.closed and math.isfinite(t):
            rec.push("Events", [[f"{kind}: {reason}"]], np.array([t]))

    def _on_safety_event(self, ev) -> None:
        self._record_event(ev.t, ev.kind, ev.reason)
        self._notify("on_event", ev.as_dict())

    # -- the loop ---------------------------------------------------------------------------------------
    def _phase_at(self, t_rel: float) -> Phase | None:
        i = self._phase_index(t_rel)
        return None if i is None else self.config.phases[i]

    def _phase_index(self, t_rel: float) -> int | None:
        if t_rel < 0:
            return None
        i = bisect.bisect_right(self._phase_ends, t_rel)
        return i if i < len(self.config.phases) else None

    def _check_chunk(self, chunk: Chunk) -> None:
        x = chunk.samples
        if x.ndim != 2 or x.shape[1] != self._n_channels:
            raise StreamMismatch(
                f"EMG chunk has shape {x.shape}, expected (n, {self._n_channels}): the channel count changed"
            )
        if x.shape[0] != chunk.timestamps.shape[0]:
            raise StreamMismatch(f"EMG chunk has {x.shape[0]} samples but {chunk.timestamps.shape[0]} timestamps")

    def _nonfinite(self, chunk: Chunk) -> tuple[int, str] | None:
        """Where a chunk's first non-finite sample is (its row) and what to say of them; None if there are none."""
        x = chunk.samples
        if np.isfinite(x).all():
            return None
        bad = ~np.isfinite(x)
        chans = [self.source.info.channel_names[i] for i in np.flatnonzero(bad.any(axis=0))]
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        t_bad = float(chunk.timestamps[row])
        what = f"{int(bad.sum())} non-finite EMG samples (NaN/inf) in channel(s) {', '.join(chans)} at t={t_bad:.4f}"
        return row, what

    def _check_rate(self) -> None:
        span = self._t_last - self._t_first
        if span < self._next_rate_check:
            return
        self._next_rate_check = span + 2.0
        measured = (self._n_samples - 1) / span
        nominal = self._fs
        if abs(measured / nominal - 1.0) > self.config.rate_tolerance:
            raise StreamMismatch(
                f"EMG stream delivers {measured:.1f} samples/s but declares {nominal:g} Hz (more than "
                f"{self.config.rate_tolerance:.0%} off): wrong rate setting or samples being lost"
            )

    async def _pipeline(self) -> None:
        cfg = self.config
        chunk = None
        async for chunk in self.source:
            if chunk.t_arrival is not None:
                self._last_arrival = chunk.t_arrival
                if self._watchdog is None:
                    self._start_watchdog()
            self._busy_since = time.perf_counter()
            n_before = self.result.n_intervals
            try:
                if self._process_chunk(chunk):
                    return
            finally:
                self._busy_since = None
                self._hand_over(self.result.n_intervals != n_before)
        if chunk is not None and cfg.segmentation == "pulses":  # the end of a recording
            rest = self.segmenter.flush()
            if rest:
                self._handle(rest, chunk)

    def _hand_over(self, decided: bool) -> None:
        """Give the recorder's writer thread what was pushed, right after a chunk's decisions (the writer then
        formats and writes while the loop waits the longest for its next decision), or once
        :data:`HAND_OVER_S` has passed without one. Woken for every chunk, the writer would compete with the
        loop for the GIL a thousand times a second at high rates (measured at 64 ch x 2048 Hz: p99
        end-to-end 1.2-1.5 -> 1.0 ms, CPU -2 % of a core)."""
        now = time.perf_counter()
        if decided or now - self._handed_at >= HAND_OVER_S:
            self._handed_at = now
            self.recorder.hand_over()

    def _start_watchdog(self) -> None:
        cfg = self.config
        period = 1.0 / cfg.stim_hz
        hang = cfg.deadline_s if cfg.deadline_policy == "stop" else period
        self._watchdog = _Watchdog(self, hang, getattr(self.source, "stall_timeout_s", None), min(period / 4, 0.005))
        self._watchdog.start()

    def _process_chunk(self, chunk: Chunk) -> bool:
        """Record, segment and handle one chunk; True when the session's time is up."""
        cfg = self.config
        rec = self.recorder
        self._check_chunk(chunk)
        bad = self._nonfinite(chunk)
        if bad is not None:
            row, msg = bad
            if cfg.nonfinite_policy == "stop":
                # the samples before the first bad one are good: they count, whatever the chunk size (a replay's
                # chunk may hold minutes)
                if row and self._process_chunk(_chunk_head(chunk, row, self._fs)):
                    return True
                raise BadSamples(msg)
            self._event("bad_samples", msg, float(chunk.timestamps[row]))
        if cfg.record_emg:
            rec.push("EMG", chunk.samples, chunk.timestamps)
        n = len(chunk)
        if n == 0:
            return False
        if self._t_first is None:
            self._t_first = float(chunk.timestamps[0])
            if self.csv_relative_time:
                rec.t_zero = self._t_first
        self._t_last = float(chunk.timestamps[-1])
        seen = self._n_samples
        self._n_samples += n
        self._check_rate()
        pulse_times = self._source_pulses(chunk) if self._replay else ()
        if cfg.segmentation == "pulses":
            idx = seen + np.searchsorted(chunk.timestamps, np.asarray(pulse_times) - 0.5 / self._fs)
            intervals = self.segmenter.push(chunk.samples, chunk.timestamps, idx)
        else:
            intervals = [(iv, None) for iv in self.segmenter.push(chunk.samples, chunk.timestamps)]
        if intervals:
            self._handle(intervals, chunk)
            self._settle_estimator()
        if self._lookahead is not None:
            self._look_ahead()
        return self._t_last + 1.0 / self._fs - self._t_start >= cfg.total_duration_s

    def _source_pulses(self, chunk: Chunk) -> list[float]:
        """Replay: the recording's pulses in this chunk, recorded as ``Pulses`` and queued for the estimator."""
        times = getattr(chunk, "pulse_times", None)
        if times is None or len(times) == 0:
            return []
        times = np.asarray(times, dtype=float)
        rows = np.full((len(times), 5), np.nan)
        amps = getattr(chunk, "pulse_amplitudes_ma", None)
        if amps is not None:
            rows[:, 1] = amps
        self.recorder.push("Pulses", rows, times)
        self._n_source_pulses += len(times)
        out = times.tolist()
        self._pending.extend(zip(out, rows[:, 1].tolist(), strict=True))
        return out

    def _take_pulses(self, interval: Interval) -> tuple[list[float], float]:
        """Delivered pulses that fall in ``interval``: their times and the first one's amplitude."""
        t_end = float(interval.timestamps[-1]) + 0.5 / self._fs
        times: list[float] = []
        amp = math.nan
        while self._pending and self._pending[0][0] <= t_end:
            t, a = self._pending.popleft()
            if not times:
                amp = a
            times.append(t)
        return times, amp

    def _handle(self, intervals: list[tuple[Interval, list[float] | None]], chunk: Chunk) -> None:
        """Estimate the intervals a chunk completed and decide after each, in order. Several go to the estimator
        in one call where that changes nothing: a run ends with the interval that ends a calibration, whose
        decision sets the MVC that applies from the next interval on (as when intervals arrive one by one).
        A replay's chunk completes many intervals: their bookkeeping and recording go run by run (decisions
        still one interval at a time); live, an interval is recorded as it is decided."""
        n = len(intervals)
        batch = self._replay and n > 1 and not self.observers
        phases = self._phases_of(intervals) if batch else None
        for a, b in self._runs(intervals, phases[2] if phases is not None else None):
            ests = self._estimate(intervals[a:b])
            if phases is not None:
                self._on_intervals(intervals[a:b], chunk, ests, tuple(p[a:b] for p in phases), b == n)
            else:
                for j, ((interval, _), est) in enumerate(zip(intervals[a:b], ests, strict=True)):
                    self._on_interval(interval, chunk, a + j == n - 1, est)

    def _runs(self, intervals: list, phases: list[Phase | None] | None) -> list[tuple[int, int]]:
        """``(start, stop)`` runs of the intervals, each ending with the interval that ends a calibration (or
        with the last). ``phases``: the intervals' phases if known (:meth:`_phases_of`)."""
        if len(intervals) == 1:  # the live loop's usual case: nothing to split
            return [(0, 1)]
        runs: list[tuple[int, int]] = []
        calibrating = self._in_calibration
        start = 0
        for j, (interval, _) in enumerate(intervals):
            if phases is None:
                mode = self._mode_at(float(interval.timestamps[-1]) + 1.0 / self._fs - self._t_start)
            else:
                mode = phases[j].mode if phases[j] is not None else "rest"
            if mode == "calibrate":
                calibrating = True
            elif calibrating:
                runs.append((start, j + 1))
                start, calibrating = j + 1, False
        if start < len(intervals):
            runs.append((start, len(intervals)))
        return runs

    def _estimate(self, intervals: list[tuple[Interval, list[float] | None]]) -> list[Estimate]:
        """Estimates of consecutive intervals, with the pulses delivered into each; one estimator call."""
        args = []
        for interval, given in intervals:
            times, amp = self._take_pulses(interval)  # the pulses that fall in this interval (and their amplitude)
            args.append((interval, times if given is None else given, amp))
        with self._estimator_faults():
            if len(args) == 1:
                return [self.estimator.step(*args[0])]
            return self._step_many(args)

    @contextlib.contextmanager
    def _estimator_faults(self):
        """Any exception of the estimator turns output off and ends the session as a SafetyError."""
        try:
            yield
        except Exception as exc:
            reason = f"estimator raised {type(exc).__name__}: {exc}"
            self.safety.output_off(self._now(), reason)
            raise SafetyError(reason) from exc

    def _look_ahead(self) -> None:
        """Hand the estimator the interval being filled, with the pulses delivered into it so far, so that
        little is left to do when its last chunk arrives."""
        current = self.segmenter.current()
        if current is None:
            return
        interval, n_in = current
        t_end = float(interval.timestamps[0]) + (interval.timestamps.shape[0] - 0.5) / self._fs
        times = [t for t, _ in self._pending if t <= t_end]
        with self._estimator_faults():
            self._lookahead(interval, n_in, times)

    def _settle_estimator(self) -> None:
        """The estimator's deferred work (its spectral update), now that the chunk's pulses are out."""
        settle = getattr(self.estimator, "settle", None)
        if settle is None:
            return
        with self._estimator_faults():
            settle()

    def _step_many(self, args: list) -> list[Estimate]:
        if not args:
            return []
        ivs, times, amps = zip(*args, strict=True)
        return self.estimator.step_many(list(ivs), list(times), list(amps))

    def _mode_at(self, t_rel: float) -> str:
        phase = self._phase_at(t_rel)
        return phase.mode if phase is not None else "rest"

    def _on_interval(self, interval: Interval, chunk: Chunk, last_in_chunk: bool, est: Estimate) -> None:
        res = self.result
        res.n_intervals += 1
        for w in est.warnings:
            self.warning_counts[w.split(":")[0]] += 1
        t_next = float(interval.timestamps[-1]) + 1.0 / self._fs
        t_rel = t_next - self._t_start
        phase = self._phase_at(t_rel)
        next_amp, latency = self._next_pulse(interval, chunk, last_in_chunk, est, t_next, t_rel, phase)
        self._record_estimates([est], [next_amp], [latency * 1e3])
        if self.progress is not None:
            self.progress(t_rel, phase.name if phase else "waiting", est, next_amp)
        if self.observers:
            self._notify("on_interval", t_rel, phase.name if phase else "waiting", est, next_amp)

    def _phases_of(self, intervals: list) -> tuple[list[float], list[float], list[Phase | None]]:
        """Of each interval: the time of the sample after it (the next pulse's due time), that time in the
        session (s) and its phase; one vectorised lookup for all (the same values as :meth:`_phase_at`)."""
        t_next = np.array([iv.timestamps[-1] for iv, _ in intervals], dtype=np.float64) + 1.0 / self._fs
        t_rel = t_next - self._t_start
        where = np.searchsorted(self._phase_ends_a, t_rel, side="right").tolist()
        ph, n_ph = self.config.phases, len(self.config.phases)
        t_rel_l = t_rel.tolist()
        return (
            t_next.tolist(),
            t_rel_l,
            [ph[i] if t >= 0 and i < n_ph else None for t, i in zip(t_rel_l, where, strict=True)],
        )

    def _on_intervals(
        self,
        intervals: list,
        chunk: Chunk,
        ests: list[Estimate],
        phases: tuple[list[float], list[float], list[Phase | None]],
        ends_chunk: bool = True,
    ) -> None:
        """:meth:`_on_interval` for consecutive intervals of a replay's chunk (``ends_chunk``: the last of them is
        the chunk's last): the same decisions, one interval after the other; then their Estimates rows as one
        array and one recorder push (those decided before an interval that raises are recorded, as one by
        one)."""
        res = self.result
        t_next, t_rel, phase = phases
        last = len(ests) - 1 if ends_chunk else -1
        next_amps: list[float] = []
        latency_ms: list[float] = []
        try:
            for j, ((interval, _), est) in enumerate(zip(intervals, ests, strict=True)):
                res.n_intervals += 1
                for w in est.warnings:
                    self.warning_counts[w.split(":")[0]] += 1
                amp, latency = self._next_pulse(interval, chunk, j == last, est, t_next[j], t_rel[j], phase[j])
                next_amps.append(amp)
                latency_ms.append(latency * 1e3)
        except BaseException:
            with contextlib.suppress(Exception):  # the decision's error is what ends the session
                self._record_estimates(ests[: len(next_amps)], next_amps, latency_ms)
            raise
        self._record_estimates(ests, next_amps, latency_ms)
        if self.progress is not None:
            for j, est in enumerate(ests):
                self.progress(t_rel[j], phase[j].name if phase[j] else "waiting", est, next_amps[j])

    def _next_pulse(
        self,
        interval: Interval,
        chunk: Chunk,
        last_in_chunk: bool,
        est: Estimate,
        t_next: float,
        t_rel: float,
        phase: Phase | None,
    ) -> tuple[float, float]:
        """After interval ``est``: calibration bookkeeping, and in a control phase the next pulse decided and
        delivered. Returns its amplitude (mA; 0: none) and the decision latency (s; NaN: none measured)."""
        mode = phase.mode if phase is not None else "rest"
        if mode == "calibrate":
            self._in_calibration = True
            self._calib.append(est.channel_effort_uv)
        elif self._in_calibration:
            self._finish_calibration()
        next_amp = 0.0
        latency = math.nan
        if mode == "control":
            self._check_estimate(est, interval)
            amps, burst_s = self._decide(est, t_rel)
            next_amp = amps[0]
            if "non-finite samples in interval" in est.warnings:
                next_amp = 0.0  # nonfinite_policy == "skip": no pulse on unusable data
            if next_amp > 0.0:
                latency = self._deliver(next_amp, chunk, last_in_chunk, t_next, amps[1:], burst_s)
        if next_amp <= 0.0:
            self.safety.no_pulse(self.config.stim_channel)  # a deliberate stop: the ramp restarts from 0 mA
        return next_amp, latency

    def _record_estimates(self, ests: list[Estimate], next_amps: list[float], latency_ms: list[float]) -> None:
        """Record intervals: their rows of the Estimates stream (:data:`ESTIMATE_HEAD`, then
        :data:`ESTIMATE_PER_CHANNEL` of each channel) in one push, and their estimates.csv rows."""
        if not ests:
            return
        c = self.estimator.config.control_channel
        n_head = len(ESTIMATE_HEAD)
        rec = self.recorder
        rows = np.empty((len(ests), n_head + len(ESTIMATE_PER_CHANNEL) * self._n_channels))
        if len(ests) == 1:  # live: one interval at a time, nothing to gather
            est = ests[0]
            rows[0, :n_head] = _head_row(est, c, next_amps[0], latency_ms[0])
            rows[0, n_head::3] = est.channel_effort_uv  # then effort, mwave_ptp, mdf_hz of each channel
            rows[0, n_head + 1 :: 3] = est.channel_mwave_ptp_uv
            rows[0, n_head + 2 :: 3] = est.channel_mdf_hz
            rec.push("Estimates", rows, np.array([est.t_start]))
            rec.push_estimate(est)
        else:
            rows[:, :n_head] = [
                _head_row(est, c, amp, lat) for est, amp, lat in zip(ests, next_amps, latency_ms, strict=True)
            ]
            rows[:, n_head::3] = [est.channel_effort_uv for est in ests]
            rows[:, n_head + 1 :: 3] = [est.channel_mwave_ptp_uv for est in ests]
            rows[:, n_head + 2 :: 3] = [est.channel_mdf_hz for est in ests]
            rec.push("Estimates", rows, np.array([est.t_start for est in ests]))
            rec.push_estimates(ests)
        if self._kept is not None:
            self._kept.append(rows[:, :n_head].copy())

    def _decide(self, est: Estimate, t_rel: float) -> tuple[tuple[float, ...], float]:
        """Ask the phase's controller for the next pulse(s): amplitudes (mA) and the spacing within a burst (s).

        Anything but finite amplitudes (a raise, NaN, inf, a wrong type) turns output off and ends the session."""
        i = self._phase_index(t_rel)
        phase = self.config.phases[i]
        ctrl = self.controller if phase.controller is None else self.phase_controllers[phase.controller]
        try:
            if i != self._ctrl_phase:
                self._ctrl_phase, self._ctrl_t0 = i, t_rel
                ctrl.reset()  # a phase starts its controller afresh, its time counted from this first decision
            ctx = ControlContext(t_rel - self._ctrl_t0, 1.0 / self.config.stim_hz, phase.name, self._force_n)
            out = ctrl.step(est, ctx)
            if isinstance(out, Burst):
                amps, spacing = out.amplitudes_ma, out.interval_s
                if (len(amps) - 1) * spacing >= ctx.period_s:
                    raise ValueError(
                        f"a burst of {len(amps)} pulses {spacing * 1e3:g} ms apart does not fit in one pulse period "
                        f"({ctx.period_s * 1e3:g} ms)"
                    )
            else:
                amps, spacing = (float(out),), 0.0
        except Exception as exc:
            self.safety.output_off(self._now(), f"controller raised {type(exc).__name__}: {exc}")
            raise SafetyError(f"controller raised {type(exc).__name__}: {exc}") from exc
        if not all(math.isfinite(a) for a in amps):
            self.safety.output_off(self._now(), f"controller returned {out!r}")
            raise SafetyError(f"controller returned a non-finite amplitude ({out!r})")
        return amps, spacing

    def _check_estimate(self, est: Estimate, interval: Interval) -> None:
        """Watchdog on the estimator: inf anywhere stops at once; no finite effort for longer than
        ``nan_tolerance_s`` in a control phase stops too (unusable EMG must not steer stimulation)."""
        values = (est.effort_uv, est.effort_smooth_uv, est.effort_pct_mvc, est.mwave_ptp_uv)
        if any(math.isinf(v) for v in values):
            reason = f"estimator returned inf (effort {est.effort_uv}, % MVC {est.effort_pct_mvc})"
            self.safety.output_off(self._now(), reason)
            raise SafetyError(reason)
        tol = self.config.nan_tolerance_s
        if tol is None or "non-finite samples in interval" in est.warnings:
            return  # bad input samples are nonfinite_policy's business (no pulse is given on them anyway)
        if math.isnan(est.effort_uv):
            self._nan_s += len(interval.timestamps) / self._fs
            if self._nan_s > tol:
                reason = f"estimator returned no finite effort for {self._nan_s:.2f} s in a control phase"
                self.safety.output_off(self._now(), reason)
                raise SafetyError(reason)
        else:
            self._nan_s = 0.0

    def _finish_calibration(self) -> None:
        self._in_calibration = False
        mvc = mvc_from_efforts(np.array(self._calib), 1.0 / self.config.stim_hz, self.config.calibration_window_s)
        self._calib = []
        names = self.source.info.channel_names
        none = ~(np.isfinite(mvc) & (mvc > 0))  # a channel without EMG (flat, disconnected): no % MVC for it
        control = self.estimator.config.control_channel
        if none[control]:
            raise BadSamples(
                f"calibration: no EMG on the control channel {names[control]} (MVC {mvc[control]:g} uV): check its "
                "electrodes"
            )
        mvc = np.where(none, np.nan, mvc)
        self.estimator.set_mvc(mvc)
        self.result.mvc_uv = [float(v) for v in mvc]
        text = "MVC reference (uV) per channel: " + ", ".join(f"{v:.1f}" for v in mvc)
        if none.any():
            text += f"; none for {', '.join(names[i] for i in np.flatnonzero(none))} (no EMG during the calibration)"
        self._event("calibrated", text)

    def _deliver(
        self,
        amplitude_ma: float,
        chunk: Chunk,
        last_in_chunk: bool,
        t_due: float,
        more_ma: tuple[float, ...] = (),
        spacing_s: float = 0.0,
    ) -> float:
        """Deliver the next pulse now, unless late; return the decision latency (s), NaN if none was delivered.

        ``t_due`` is when the pulse belongs (the sample after the interval): a replay's shadow pulses are
        stamped with it; live pulses with the clock at delivery. ``more_ma``: the rest of a burst, each
        ``spacing_s`` after the previous, handed to the stimulator now with their due times (each checked by
        the safety layer on its own)."""
        cfg = self.config
        res = self.result
        if not last_in_chunk and chunk.t_arrival is not None:  # live: its time has passed (virtual time: no)
            res.deadline_misses += 1
            res.skipped_pulses += 1
            self.warning_counts["pulse skipped: its interval's data arrived late"] += 1
            return math.nan
        if chunk.t_arrival is not None and time.perf_counter() - chunk.t_arrival > cfg.deadline_s:
            res.deadline_misses += 1
            late_ms = (time.perf_counter() - chunk.t_arrival) * 1e3
            if cfg.deadline_policy == "stop":
                raise SafetyError(f"decision missed its deadline ({late_ms:.2f} ms > {cfg.deadline_s * 1e3:g} ms)")
            res.skipped_pulses += 1
            return math.nan
        if more_ma and not getattr(self.safety.stimulator, "can_schedule", False):
            raise SafetyError(
                f"{getattr(self.safety.stimulator, 'name', 'the stimulator')} cannot time the pulses of a burst "
                f"({len(more_ma) + 1} pulses {spacing_s * 1e3:g} ms apart); use a stimulator that schedules pulses"
            )
        cmd = PulseCommand(t_due if self._replay else self.clock(), cfg.stim_channel, amplitude_ma, cfg.pulse_width_us)
        pulse = self.safety.deliver(cmd)
        if self.safety.tripped is not None:
            raise SafetyError(f"output off: {self.safety.tripped}")
        if pulse is None:
            return math.nan
        t_done = time.perf_counter()
        latency = (t_done - chunk.t_arrival) if chunk.t_arrival is not None else math.nan
        if chunk.t_arrival is not None:
            res.decision_latency_s.append(latency)
            res.e2e_latency_s.append(pulse.t - float(chunk.timestamps[-1]))
        self._record_pulse(pulse)
        t_next = pulse.t
        for amp in more_ma:
            t_next += spacing_s
            if amp <= 0.0:
                continue
            cmd = PulseCommand(t_next, cfg.stim_channel, amp, cfg.pulse_width_us)
            more = self.safety.deliver(cmd)
            if self.safety.tripped is not None:
                raise SafetyError(f"output off: {self.safety.tripped}")
            if more is not None:
                self._record_pulse(more)
        return latency

    def _record_pulse(self, pulse) -> None:
        """Count a delivered pulse, queue it for the estimator (live) and record it."""
        self.result.n_pulses += 1
        if not self._replay:
            self._pending.append((pulse.t + self.config.stimulator_latency_s, pulse.amplitude_ma))
        self.recorder.push(
            "ShadowPulses" if self._replay else "Pulses",
            np.array(
                [
                    [
                        pulse.channel,
                        pulse.amplitude_ma,
                        pulse.pulse_width_us,
                        pulse.charge_uc,
                        pulse.requested.amplitude_ma,
                    ]
                ]
            ),
            np.array([pulse.t]),
        )

    async def _record_aux(self, key: str, src) -> None:
        force = key == self.force_source
        try:
            async for chunk in src:
                self.recorder.push(key, chunk.samples, chunk.timestamps)
                self._hand_over(False)
                if force and len(chunk):
                    self._force_n = float(np.mean(chunk.samples[:, 0]))
        except asyncio.CancelledError:
            raise
        except ClosedLoopError as exc:  # recording-only streams never stop the session
            self._event("warning", f"recording of {key} stopped: {exc}")

    # -- end ----------------------------------------------------------------------------------------------
    def _session_seconds(self) -> float:
        """Seconds of EMG from the session's time zero to the last sample."""
        t_start, t_last = getattr(self, "_t_start", None), getattr(self, "_t_last", None)
        if t_start is None or t_last is None:
            return 0.0
        return max(0.0, t_last + 1.0 / self._fs - t_start)

    def _finish(self) -> None:
        res = self.result
        if self._kept is not None:
            res.estimates = np.concatenate(self._kept) if self._kept else np.empty((0, len(ESTIMATE_HEAD)))
        if self.recorder is not None:
            try:
                self.recorder.close()
            except ClosedLoopError as exc:
                res.status = "faulted"
                res.error = (res.error + "; " if res.error else "") + str(exc)
        info = getattr(self.source, "_info", None)
        s = {
            "version": _version(),
            "status": res.status,
            "error": res.error,
            "started_at": self._t_wall_start.isoformat(timespec="seconds"),
            "stream": None
            if info is None
            else {
                "name": info.name,
                "source_id": info.source_id,
                "channels": list(info.channel_names),
                "units": list(info.units),
                "rate_hz": info.rate_hz,
            },
            "t_start_lsl": getattr(self, "_t_start", None),
            "duration_s": self._session_seconds(),
            "recorded_s": (self._t_last - self._t_first) if getattr(self, "_t_first", None) is not None else 0.0,
            "intervals": res.n_intervals,
            "pulses": getattr(self, "_n_source_pulses", 0) if getattr(self, "_replay", False) else res.n_pulses,
            "shadow_pulses": res.n_pulses if getattr(self, "_replay", False) else None,
            "max_amplitude_ma": self.safety.max_delivered_ma,
            "limits": self.safety.limits.as_dict(),
            "decision_latency_ms": latency_stats(res.decision_latency_s),
            "e2e_latency_ms": latency_stats(res.e2e_latency_s),
            "deadline_s": self.config.deadline_s,
            "deadline_misses": res.deadline_misses,
            "skipped_pulses": res.skipped_pulses,
            "safety_events": [e.as_dict() for e in self.safety.events],
            "output_off": _first_off(self.safety),
            "safety_counts": dict(self.safety.counts),
            "events": self.events,
            "estimator_warnings": dict(self.warning_counts),
            "mvc_uv": res.mvc_uv,
            "config": self.config.as_dict(),
            "estimator": None if self.estimator is None else asdict(self.estimator.config),
            "controller": {"type": type(self.controller).__name__, **_params(self.controller)},
            "phase_controllers": {
                name: {"type": type(c).__name__, **_params(c)} for name, c in self.phase_controllers.items()
            },
            "files": {"xdf": "session.xdf", "estimates": "estimates.csv", "summary": "summary.json"},
        }
        s.update(self.extra_summary)
        res.summary = s
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_summary(self.out_dir / "summary.json", s)
        self._notify("on_end", res)


def _first_off(safety: SafetyLayer) -> dict | None:
    """The first output-off: why, when on the session clock, and when on the monotonic clock (stimulator)."""
    off = next((e for e in safety.events if e.kind == "output_off"), None)
    if off is None:
        return None
    return {"reason": off.reason, "t": off.t, "monotonic": getattr(safety.stimulator, "stopped_at", None)}


def write_summary(path: Path, summary: dict) -> None:
    """Write summary.json (NaN and inf become null)."""
    path.write_text(json.dumps(_jsonable(summary), indent=2) + "\n", encoding="utf-8")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _params(obj) -> dict:
    try:
        return {k: v for k, v in asdict(obj).items() if isinstance(v, (int, float, str, bool))}
    except TypeError:
        return {}


def _version() -> str:
    from closedloop import __version__

    return __version__
