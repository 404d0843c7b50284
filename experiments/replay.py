"""``closedloop replay``: recorded EMG through the same pipeline, in batch, or republished as a live device.

One file is one :class:`~closedloop.pipeline.Session` whose source is a
:class:`~acquisition.files.FileSource`: the same orchestrator and estimators as a live session. The
recording's pulses (annotations, a marker or Pulses stream, or detected from the artifacts) drive the
estimator; a controller, if a protocol gives one, runs in *shadow*: every command it would have sent goes
through the safety layer into a stimulator that delivers nothing, and is recorded as ``ShadowPulses``.

A recording made by ``closedloop demo``/``run`` (``session.xdf`` beside its ``summary.json``) replays with
the session's own configuration (pulse rate grid, phases, time zero, estimator, controller), so its
estimates come out as they were computed live.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError, ConfigError
from closedloop.estimation import kernels
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.pipeline import ESTIMATE_HEAD, Phase, Session, SessionConfig, collector_frozen
from closedloop.recording import csvkernel
from closedloop.safety import SafetyLayer, SafetyLimits
from closedloop.stimulators import ShadowStimulator

__all__ = [
    "SESSION_FILES",
    "SUMMARY_COLUMNS",
    "BatchInterrupted",
    "ReplayOptions",
    "ReplayResult",
    "dask_client",
    "make_out_root",
    "publish_file",
    "replay_batch",
    "replay_file",
    "signals_interrupt",
]

#: Columns of replay_summary.csv (one row per file).
SUMMARY_COLUMNS = (
    "file",
    "status",
    "error",
    "format",
    "channels",
    "rate_hz",
    "duration_s",
    "replayed_s",
    "pulses",
    "pulse_source",
    "shadow_pulses",
    "intervals",
    "effort_median_uv",
    "mdf_first_hz",
    "mdf_last_hz",
    "mwave_ptp_median_uv",
    "elapsed_s",
    "x_real_time",
    "out_dir",
)


#: How long before each pulse a file replay's intervals begin, and the artifact is looked for (s): pulse markers
#: up to this late (software triggers, some amplifiers' event channels) leave the artifact out of the volitional
#: EMG. 2 ms: 4 samples at 2048 Hz; the pulses' own samples before it belong to no interval's volitional EMG.
PULSE_LEAD_S = 0.002


@dataclass(frozen=True)
class ReplayOptions:
    """How files are replayed (the CLI flags).

    Parameters
    ----------
    speed:
        None: as fast as possible; else the pace as a multiple of real time (1.0 = real time).
    chunk_size:
        Samples per chunk; None (default): as fast as possible about 2**18 channel-samples (4096 samples at 64
        channels, more with fewer: the estimator then batches many pulse intervals per call), 256 when paced
        or republished (smooth real-time pacing).
    channels, stream, rate_hz, units:
        Channel picks by name, XDF stream name/type, rate for files without one (Hz), unit for files
        without one.
    protocol:
        A protocol file: its estimator, safety limits and controller (run in shadow) and phases.
    pulse_marker:
        Regular expression for the annotation or marker texts that are stimulation pulses (None: the
        default, ``(?i)stim|pulse|trigger``; GDF event codes, e.g. ``^768$``; BrainVision, e.g. ``S  1``).
    detect_pulses:
        Find pulses from artifacts when the file has none ("auto"), always, or never.
    report:
        Write report.html.
    window_s:
        Window length where there are no pulses (s).
    progress:
        Show a progress line (only on a terminal).
    compiled:
        Estimate with the compiled kernels where numba is there (the same numbers, faster); False: numpy only.
    """

    speed: float | None = None
    chunk_size: int | None = None
    channels: tuple[str, ...] | None = None
    stream: str | None = None
    rate_hz: float | None = None
    units: str | None = None
    protocol: str | None = None
    pulse_marker: str | None = None
    detect_pulses: str | bool = "auto"
    report: bool = True
    window_s: float = 0.1
    progress: bool = False
    compiled: bool = True

    def chunk(self, speed: float | None) -> int | None:
        """Samples per chunk at pace ``speed`` (None: as fast as possible, where None means the FileSource
        chooses by the number of channels)."""
        if self.chunk_size is not None:
            return self.chunk_size
        if speed is None:
            return None
        # paced: 256 samples a chunk, more above 8x (a chunk every ~15 ms of wall time at 2 kHz: small chunks at a
        # high pace would be due faster than a chunk's work takes, and the pace would fall short)
        return max(256, round(32 * speed))


@dataclass
class ReplayResult:
    """The outcome of one file (a row of replay_summary.csv)."""

    file: str
    status: str = "failed"
    error: str = ""
    out_dir: str = ""
    values: dict = field(default_factory=dict)
    #: Advice for the user about this file (e.g. annotations that were not taken as pulses), or "".
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def row(self) -> dict:
        r = {"file": self.file, "status": self.status, "error": self.error, "out_dir": self.out_dir}
        r.update(self.values)
        return {k: r.get(k, "") for k in SUMMARY_COLUMNS}


def _session_config_of(xdf: Path) -> dict | None:
    """summary.json of a closedloop session recorded in ``xdf``, if that is what it is."""
    summary = xdf.with_name("summary.json")
    if xdf.name != "session.xdf" or not summary.exists():
        return None
    try:
        s = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return s if isinstance(s.get("config"), dict) else None


def _estimator_config(d: dict) -> EstimatorConfig:
    names = {f.name for f in dataclasses.fields(EstimatorConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return EstimatorConfig(**kw)


def _controller_from_summary(d: dict):
    from experiments.protocol import CONTROLLERS

    by_class = {cls.__name__: cls for cls in CONTROLLERS.values()}
    cls = by_class.get(d.get("type", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def _build(path: Path, options: ReplayOptions, source, out_dir: Path) -> Session:
    """The replay session for an opened source."""
    rec = source.recording
    duration = rec.n_samples / rec.rate_hz
    live = _session_config_of(path) if rec.format.lower() == "xdf" else None
    controller = None
    phase_controllers: dict = {}
    limits = SafetyLimits()
    est_cfg = EstimatorConfig()
    phases: tuple[Phase, ...] = (Phase("replay", duration + 1.0, "rest"),)
    cfg_kw: dict = {
        "segmentation": "pulses",
        "pulses_from": "source",
        "record_emg": False,
        "window_s": options.window_s,
        "start_time": None,
        "stim_hz": 25.0,
        # NaN/inf samples: a recording's bad stretch gives intervals flagged and without values, and the rest of
        # the file is still analysed (a live session stops: it stimulates). A protocol or a live session's own
        # setting applies where there is one.
        "nonfinite_policy": "skip",
        # a recording's timestamps may have gaps (samples lost while recording) or drift: the samples are
        # analysed back to back and the replay says so (_timing_note); the rate check is for live streams
        "rate_tolerance": math.inf,
    }
    lead = PULSE_LEAD_S  # a file's pulse markers may be late: see docs/replay.md
    if live is not None:
        try:
            c = live["config"]
            est_cfg = _estimator_config(live.get("estimator") or {})
            raw = (live.get("protocol") or {}).get("raw")
            if raw:  # a `closedloop run` session: its protocol makes the same controllers
                from experiments.protocol import parse_protocol

                made = parse_protocol(raw, path)
                controller, phase_controllers = made.make_controller(), made.make_phase_controllers()
            else:
                controller = _controller_from_summary(live.get("controller") or {})
            limits = SafetyLimits(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in live["limits"].items()})
            phases = tuple(Phase(p["name"], p["duration_s"], p["mode"], p.get("controller")) for p in c["phases"])
            cfg_kw.update(
                segmentation="grid",
                stim_hz=c["stim_hz"],
                pulse_width_us=c["pulse_width_us"],
                stim_channel=c["stim_channel"],
                start_time=live.get("t_start_lsl"),
                calibration_window_s=c.get("calibration_window_s", 0.5),
                nonfinite_policy=c.get("nonfinite_policy", "stop"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # an edited, partial or older summary
            what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(
                f"{path.with_name('summary.json')}: not a closedloop session summary this version can use ({what}); "
                "to replay the recording with the default settings, copy session.xdf to another folder"
            ) from None
    if options.protocol:
        from experiments.protocol import load_protocol

        proto = load_protocol(options.protocol)
        est_cfg = proto.estimator
        controller = proto.make_controller()
        phase_controllers = proto.make_phase_controllers()
        limits = proto.safety_limits()
        phases = proto.phases
        cfg_kw.update(
            stim_hz=proto.stimulation.rate_hz,
            pulse_width_us=proto.stimulation.pulse_width_us,
            stim_channel=proto.stimulation.channel,
            nonfinite_policy=proto.safety.nonfinite_policy,
            deadline_policy=proto.safety.deadline_policy,
        )
    if controller is None and not phase_controllers:
        controller = _NoController()
        phases = tuple(Phase(p.name, p.duration_s, "rest" if p.mode == "control" else p.mode) for p in phases)
    elif controller is None:
        controller = _NoController()
    total = sum(p.duration_s for p in phases)
    if total < duration:  # the recording outlasts the phases: keep measuring to its end
        phases = (*phases, Phase("after protocol", duration - total + 1.0, "rest"))
    if cfg_kw["segmentation"] == "pulses":  # (a closedloop session replays on its own pulse grid)
        est_cfg = dataclasses.replace(est_cfg, pulse_lead_s=lead)
        cfg_kw["pulse_lead_s"] = lead
    cfg_kw["duration_s"] = None
    config = SessionConfig(phases=phases, **cfg_kw)
    safety = SafetyLayer(limits, ShadowStimulator(source.clock))
    extra = {
        "replay": {
            "file": str(path),
            "format": rec.format,
            "pulse_source": rec.pulse_source,
            "original_units": list(rec.original_units),
            "speed": options.speed,
            "reproduces_live_session": live is not None,
            "protocol": options.protocol,
            "pulse_marker": options.pulse_marker,
            "compiled_kernels": options.compiled and kernels.load() is not None,
        }
    }
    # what the file holds that a user may want to pick from (--pulse-marker) or know of (reader's warnings)
    for key in ("annotations", "warnings"):
        values = [str(v) for v in rec.extra.get(key) or ()]
        if values:
            extra["replay"][key] = values[:50] + ([f"... {len(values) - 50} more"] if len(values) > 50 else [])
    if live is not None and live.get("protocol"):
        extra["protocol"] = live["protocol"]  # the report analyses the replay as the protocol says
    return Session(
        source,
        lambda info: IntervalEstimator(info, est_cfg, compiled=options.compiled),
        controller,
        safety,
        config,
        out_dir,
        extra_summary=extra,
        csv_relative_time=True,
        phase_controllers=phase_controllers,
        keep_estimates=True,  # the replay summary's medians, without reading session.xdf back
    )


class _NoController:
    """Monitoring only: never asks for a pulse."""

    def step(self, estimate, ctx=None) -> float:
        return 0.0

    def reset(self) -> None:
        pass


class _Progress:
    def __init__(self, name: str, source, enabled: bool) -> None:
        self.name = name
        self.source = source
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, *args) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        frac = getattr(self.source, "progress", 0.0)
        sys.stderr.write(f"\r{self.name}: [{'#' * int(frac * 30):<30}] {frac:6.1%}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _file_source(path: Path, options: ReplayOptions, speed: float | None):
    from acquisition.files import DEFAULT_PULSE_ANNOTATION, FileSource

    return FileSource(
        path,
        channels=options.channels,
        stream=options.stream,
        rate_hz=options.rate_hz,
        units=options.units,
        chunk_size=options.chunk(speed),
        speed=speed,
        detect_pulses=options.detect_pulses,
        pulse_annotation=DEFAULT_PULSE_ANNOTATION if options.pulse_marker is None else options.pulse_marker,
    )


async def _replay(path: Path, out_dir: Path, options: ReplayOptions) -> ReplayResult:

    result = ReplayResult(str(path), out_dir=str(out_dir))
    if options.compiled:  # numba's start (and a first compile) before the clock starts: once per process
        kernels.load()
        csvkernel.load()
    source = _file_source(path, options, options.speed)
    from acquisition.files import import_reader

    import_reader(path)  # the reading library's import, once per process, is not this file's replay time
    t0 = time.perf_counter()
    with collector_frozen():  # no full garbage collection over the libraries' objects while MNE opens the file
        async with source:  # opens the file: format errors surface here, before any output is written
            session = _build(path, options, source, out_dir)
            bar = _Progress(path.name, source, options.progress)
            if bar.enabled:  # a callback per interval only when there is a bar to draw
                session.progress = bar
            try:
                res = await session.run()
            finally:
                bar.close()
    elapsed = time.perf_counter() - t0
    rec = source.recording
    if options.report and (out_dir / "session.xdf").exists():
        from closedloop.report import build_report

        build_report(out_dir)
    s = res.summary  # what summary.json holds
    est = _estimates_overview(res.estimates)
    duration = rec.n_samples / rec.rate_hz
    result.status = res.status
    result.error = res.error or ""
    exc = res.exception
    if exc is not None and not result.error.startswith("watchdog"):  # the file could not be replayed to its end
        result.status = "failed"
        if isinstance(exc, ClosedLoopError):  # a bad file or setting: its message, naming the file, as others
            text = str(exc)
            result.error = text if str(path) in text or path.name in text else f"{path}: {text}"
    result.values = {
        "format": rec.format,
        "channels": len(rec.channel_names),
        "rate_hz": rec.rate_hz,
        "duration_s": round(duration, 3),  # the recording's length
        "replayed_s": round(float(s.get("duration_s") or 0.0), 3),  # how much of it was replayed (summary.json's)
        "pulses": s.get("pulses"),
        "pulse_source": rec.pulse_source,
        "shadow_pulses": s.get("shadow_pulses"),
        "intervals": s.get("intervals"),
        **est,
        "elapsed_s": round(elapsed, 3),
        "x_real_time": round(duration / elapsed, 1) if elapsed > 0 and result.ok else "",
    }
    notes = [str(a) for a in rec.extra.get("annotations") or ()]
    shown = ", ".join(repr(a) for a in notes[:8]) + (f" and {len(notes) - 8} more" if len(notes) > 8 else "")
    hints = []
    if path.name == "session.xdf" and rec.format == "XDF" and not path.with_name("summary.json").exists():
        # e.g. a closedloop session killed before it wrote its summary: its own settings are not known
        hints.append(
            "no summary.json beside this session.xdf: replayed with the default settings (a closedloop session's "
            "own settings are read from its summary.json)"
        )
    if options.pulse_marker and not rec.pulse_source.startswith(("annotations", "markers")):
        hints.append(
            f"--pulse-marker {options.pulse_marker!r} matched no annotation or marker"
            + (f" (the file's annotations are {shown})" if notes else "")
            + f"; pulses: {rec.pulse_source}"
        )
    elif not s.get("pulses") and s.get("intervals") and notes:
        # the samples were replayed, the file's events were there and none was taken as a pulse: say which, and how
        # to pick (not when the replay never got to the samples: that failure is the error, not the pulses)
        hints.append(f"no pulses; the file's annotations are {shown} (--pulse-marker REGEX picks the pulses)")
    shown_warnings = ("pulse time(s)", "seem missed", "corrupt", "truncat")  # the readers' warnings a user must see
    hints += [w for w in rec.extra.get("warnings") or () if any(k in str(w).lower() for k in shown_warnings)]
    timing = _timing_note(rec)
    if timing:
        hints.append(timing)
    assumed = sorted({u for u in rec.original_units if u.startswith("assumed")})
    if assumed:  # e.g. a .mat file's bare numbers
        hints.append(f"the file states no unit: samples taken as {', '.join(u.split()[-1] for u in assumed)} (--units)")
    result.hint = "; ".join(hints)
    return result


def _timing_note(rec) -> str:
    """What the recording's own timestamps (XDF) say about samples lost or a clock that drifts, or "".

    Against a clock at the declared rate from the first sample, the timestamps' jitter (LSL stamps chunks as they
    arrive) comes and goes, while lost samples leave a step that stays: a gap is a jump between two samples after
    which the timestamps stay later by more than 2.5 sample periods and twice the jitter (medians and interquartile
    ranges over 0.5 s on either side; fewer samples lost than the jitter cannot be told from it). The drift is the
    rate the timestamps keep over the whole recording, the gaps taken out.
    """
    ts = rec.timestamps
    if ts is None or ts.shape[0] < 3:
        return ""
    n = ts.shape[0]
    period = 1.0 / rec.rate_hz
    late = ts - ts[0] - np.arange(n) * period  # s behind a clock at the declared rate
    side = max(1, round(0.5 * rec.rate_hz))
    steps: list[float] = []
    last = -side
    for i in np.flatnonzero(np.diff(ts) > 2.5 * period).tolist():  # where a gap may be (few: chunk jitter, gaps)
        if i < last + side:
            continue  # the same step, seen again
        before, after = late[max(0, i + 1 - side) : i + 1], late[i + 1 : i + 1 + side]
        step = float(np.median(after) - np.median(before))
        spread = sum(float(np.subtract(*np.percentile(v, [75, 25]))) for v in (before, after))  # the jitter's
        if step > max(2.5 * period, 2.0 * spread):
            steps.append(step)
            last = i
    notes = []
    if steps:
        notes.append(
            f"{len(steps)} gap(s) in the EMG timestamps (longest {max(steps):.3g} s, about "
            f"{sum(steps) / period:.0f} samples missing): the samples on either side are analysed back to back"
        )
    span = float(ts[-1] - ts[0]) - sum(steps)
    if span > 0:
        measured = (n - 1) / span
        if abs(measured / rec.rate_hz - 1.0) > 0.02:
            notes.append(f"the timestamps run at {measured:.1f} samples/s for a declared {rec.rate_hz:g} Hz")
    return "; ".join(notes)


def _estimates_overview(estimates: np.ndarray | None) -> dict:
    """Median effort and M-wave, first and last median frequency of the control channel, from the session's
    Estimates rows (``SessionResult.estimates``: the values of session.xdf's Estimates stream)."""
    if estimates is None or estimates.shape[0] == 0:
        return {}

    def column(name: str) -> np.ndarray:
        a = estimates[:, ESTIMATE_HEAD.index(name)]
        return a[np.isfinite(a)]

    def med(name: str):
        a = column(name)
        return round(float(np.median(a)), 3) if a.size else ""

    ok = column("mdf_hz")
    return {
        "effort_median_uv": med("effort"),
        "mwave_ptp_median_uv": med("mwave_ptp"),
        "mdf_first_hz": round(float(ok[0]), 2) if ok.size else "",
        "mdf_last_hz": round(float(ok[-1]), 2) if ok.size else "",
    }


def replay_file(path: str | Path, out_dir: str | Path, options: ReplayOptions | None = None) -> ReplayResult:
    """Replay one file into ``out_dir``; never raises for a bad file: the result says what went wrong."""
    options = options or ReplayOptions()
    p, out = Path(path), Path(out_dir)
    try:
        return asyncio.run(_replay(p, out, options))
    except ClosedLoopError as exc:
        return ReplayResult(str(p), "failed", str(exc), str(out))
    except Exception as exc:  # a bug, not a user error: still one line, and the batch goes on
        return ReplayResult(str(p), "failed", f"unexpected {type(exc).__name__}: {exc}", str(out))


def _out_dirs(paths: list[Path], out_root: Path) -> list[Path]:
    """One folder per file under ``out_root``, named after the file, unique across the whole batch.

    A name used again gets ``-2``, ``-3``, ... (in input order), skipping any name another file of the batch
    has as its own, so a generated name never equals a file's name or another generated one. Names are compared
    case-insensitively (folders on case-insensitive file systems must differ too).
    """

    from acquisition.files import format_extension

    def stem(p: Path) -> str:  # the name less its format's extension (dots in the name itself stay)
        if p.name == "session.xdf":
            return f"{p.parent.name}-replay"
        return p.name[: len(p.name) - len(format_extension(p))] or p.name

    stems = [stem(p) for p in paths]
    own = {s.casefold() for s in stems}  # every file's own name: reserved for its first occurrence
    used: set[str] = set()
    dirs = []
    for s in stems:
        name, n = s, 1
        while name.casefold() in used or (n > 1 and name.casefold() in own):
            n += 1
            name = f"{s}-{n}"
        used.add(name.casefold())
        dirs.append(out_root / name)
    return dirs


#: What a replay writes in a file's folder: a batch refuses a folder that already holds any of them.
SESSION_FILES = ("session.xdf", "estimates.csv", "summary.json", "report.html")


def make_out_root(out: Path, label: str | None = None) -> None:
    """Create the output folder ``out`` (and its parents) if needed; a :class:`ConfigError` naming ``label``
    (default: the path) if it cannot be."""
    label = label or str(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{label}: not a folder (a file of that name exists)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot create the folder: {exc.strerror or exc}") from None


def _check_unused(out: Path, dirs: list[Path]) -> None:
    """Refuse to write over an earlier replay's results (nothing of the user's is overwritten or deleted)."""
    if (out / "replay_summary.csv").exists():
        raise ConfigError(
            f"{out}: already holds a replay's results (replay_summary.csv); choose another output folder or remove it"
        )
    for d in dirs:
        if d.exists() and not d.is_dir():
            raise ConfigError(
                f"{d}: a file of that name is where this file's results would go; choose another output folder"
            )
        held = [n for n in SESSION_FILES if (d / n).exists()]
        if held:
            raise ConfigError(
                f"{d}: already holds session files ({', '.join(held)}); choose another output folder or remove it"
            )


class BatchInterrupted(KeyboardInterrupt):
    """A batch stopped by SIGINT or SIGTERM. The files being replayed stopped where they were (their session
    files written, status ``stopped``), the rest were not started (status ``interrupted``); replay_summary.csv
    holds them all. ``results``: every file's result, in input order; ``signal``: the signal's name."""

    def __init__(self, results: list[ReplayResult], signal_name: str) -> None:
        super().__init__(signal_name)
        self.results = results
        self.signal = signal_name


#: How long an interrupted batch waits for its workers' replays to stop and write their files (s), before it passes
#: the signal on to them (one sent to the batch's process only, e.g. ``kill -INT PID``), then before it kills them.
INTERRUPT_GRACE_S = 5.0


def _by_signal(r: ReplayResult) -> str:
    """The signal that stopped the replay of ``r`` (its session's "received SIGINT"), or ""."""
    m = re.fullmatch(r"received (SIG[A-Z]+)", r.error) if r.status == "stopped" else None
    return m.group(1) if m else ""


class _Signals:
    """SIGINT and SIGTERM while a batch runs (main thread only): recorded, and a KeyboardInterrupt raised while
    ``busy`` (a session, which handles both itself, ends as stopped). Idle (a pool worker between files), the
    signal is only recorded: the worker then starts no other file."""

    def __init__(self) -> None:
        self.signal = ""
        self.busy = True
        self._saved: dict[int, object] = {}

    def install(self) -> None:
        """Install the handlers (a session puts them back when it ends: Session._remove_signals)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signal = self.signal or signal.Signals(signum).name
        if self.busy:
            raise KeyboardInterrupt(self.signal)


_WORKER_SIGNALS = _Signals()  # in a pool worker process


@contextlib.contextmanager
def signals_interrupt():
    """SIGINT and SIGTERM raise KeyboardInterrupt while the block runs (main thread only; elsewhere nothing
    changes): a command stopped by ``kill`` ends as interrupted, its outlets and files closed, instead of being
    killed. The handlers from before are put back on leaving."""
    sigs = _Signals()
    sigs.install()
    try:
        yield
    finally:
        sigs.restore()


def _worker_init() -> None:
    _WORKER_SIGNALS.busy = False
    _WORKER_SIGNALS.install()


def _pool_replay(path: Path, out_dir: Path, options: ReplayOptions) -> ReplayResult:
    """replay_file in a pool worker: once the worker has been signalled, it replays no further file."""
    sigs = _WORKER_SIGNALS
    if sigs.signal:
        return _not_replayed(path, out_dir)
    sigs.busy = True
    try:
        r = replay_file(path, out_dir, options)
    except KeyboardInterrupt:  # signalled outside its session (opening the file, writing the report)
        r = ReplayResult(str(path), "stopped", f"received {sigs.signal or 'SIGINT'}", str(out_dir))
    finally:
        sigs.busy = False
    sigs.signal = sigs.signal or _by_signal(r)
    return r


def _not_replayed(path: Path, out_dir: Path) -> ReplayResult:
    return ReplayResult(str(path), "interrupted", "not replayed: the batch was interrupted", str(out_dir))


def dask_client(scheduler):
    """A ``dask.distributed.Client`` for ``scheduler`` (an address, or a Client: returned as it is);
    a :class:`ConfigError` naming the address if Dask is missing or the scheduler cannot be reached."""
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise ConfigError("--scheduler needs Dask: pip install 'closedloop[dask]'") from exc
    if isinstance(scheduler, Client):
        return scheduler
    try:
        return Client(scheduler)
    except (OSError, ValueError, TypeError) as exc:  # refused, timed out, not an address
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"--scheduler {scheduler!r}: cannot connect to a Dask scheduler: {text}") from None


def _as_given(r: ReplayResult, given: Path, given_dir: Path, sent: Path, sent_dir: Path) -> ReplayResult:
    """A result computed on absolute paths (Dask workers), told with the paths as the user gave them."""
    r.file, r.out_dir = str(given), str(given_dir)
    for a, b in ((str(sent), str(given)), (str(sent_dir), str(given_dir))):
        r.error, r.hint = r.error.replace(a, b), r.hint.replace(a, b)
    return r


def _run_dask(
    client, files: list[Path], dirs: list[Path], options: ReplayOptions, done: Callable[[int, ReplayResult], None]
) -> None:
    """The files on a Dask cluster. The workers need absolute paths (their working folder is their own); a task
    that fails there (a worker lost, the scheduler gone) fails its file, and when the cluster has had no worker
    for Dask's connect timeout, the files still waiting fail too."""
    import dask
    from dask.distributed import wait

    def absolute(p: str | None) -> str | None:
        return None if p is None else str(Path(p).absolute())

    sent = [Path(f).absolute() for f in files]
    sent_dirs = [Path(d).absolute() for d in dirs]
    opts = dataclasses.replace(options, protocol=absolute(options.protocol), progress=False)
    futures = {
        client.submit(replay_file, str(f), str(d), opts, pure=False): i
        for i, (f, d) in enumerate(zip(sent, sent_dirs, strict=True))
    }
    patience = float(dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))
    no_workers_since: float | None = None
    pending = set(futures)
    try:
        while pending:
            try:
                wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished within the second
                pass
            except Exception:  # futures cancelled (the scheduler gone: they end failed, below), ...
                time.sleep(0.1)
            finished = {fut for fut in pending if fut.done()}
            pending -= finished
            for fut in finished:
                i = futures[fut]
                try:
                    r = fut.result()
                except Exception as exc:  # the task's worker died, the scheduler went away, ...
                    text = " ".join(str(exc).split()) or type(exc).__name__
                    r = ReplayResult(str(sent[i]), "failed", f"{sent[i]}: on Dask: {text}", str(sent_dirs[i]))
                done(i, _as_given(r, files[i], dirs[i], sent[i], sent_dirs[i]))
            if not pending:
                break
            try:
                workers = len(client.scheduler_info().get("workers", {}))
            except Exception:  # the scheduler is gone: the futures end cancelled, handled above
                workers = 1
            now = time.monotonic()
            no_workers_since = None if workers else (no_workers_since or now)
            if no_workers_since is not None and now - no_workers_since > patience:
                for fut in pending:
                    i = futures[fut]
                    error = f"{files[i]}: not replayed: the Dask cluster has had no workers for {patience:g} s"
                    done(i, ReplayResult(str(files[i]), "failed", error, str(dirs[i])))
                break
    finally:
        with contextlib.suppress(Exception):
            client.cancel([f for f in futures if not f.done()])


def _run_pool(
    files: list[Path],
    dirs: list[Path],
    options: ReplayOptions,
    jobs: int,
    done: Callable[[int, ReplayResult], None],
    sigs: _Signals,
) -> None:
    """The files on ``jobs`` worker processes. Interrupted (SIGINT, SIGTERM), no further file starts, and the
    replays under way stop and write their files; workers still running after INTERRUPT_GRACE_S are signalled
    in turn, then killed."""
    quiet = dataclasses.replace(options, progress=False)
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init)
    futures = {pool.submit(_pool_replay, f, d, quiet): i for i, (f, d) in enumerate(zip(files, dirs, strict=True))}
    seen: set[concurrent.futures.Future] = set()

    def collect(fut: concurrent.futures.Future) -> None:
        seen.add(fut)
        i = futures[fut]
        if fut.cancelled():  # not started: told as not replayed once the batch has ended
            return
        try:
            r = fut.result()
        except BaseException as exc:  # a worker killed (BrokenProcessPool), ...
            r = ReplayResult(
                str(files[i]), "failed", f"{files[i]}: unexpected {type(exc).__name__}: {exc}", str(dirs[i])
            )
            if sigs.signal:
                r.status, r.error = "stopped", f"received {sigs.signal}"
        done(i, r)

    try:
        for fut in concurrent.futures.as_completed(futures):
            collect(fut)
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        sigs.signal = sigs.signal or "SIGINT"
        for fut in futures:
            fut.cancel()
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for step in ("wait", "terminate", "kill"):
            if step == "terminate":  # the signal went to the batch only (kill -INT PID): pass it on
                for p in procs:
                    with contextlib.suppress(Exception):
                        os.kill(p.pid, signal.Signals[sigs.signal])
            elif step == "kill":
                for p in procs:
                    with contextlib.suppress(Exception):
                        p.kill()
            running = [f for f in futures if f not in seen and not f.cancelled()]
            try:
                finished, _ = concurrent.futures.wait(running, timeout=INTERRUPT_GRACE_S if step != "kill" else 1.0)
            except KeyboardInterrupt:  # signalled again: do not wait
                finished = set()
            for fut in finished:
                collect(fut)
            if len(finished) == len(running):
                break
        pool.shutdown(wait=True, cancel_futures=True)  # the workers have ended or are idle: quick
        for fut in futures:
            if fut not in seen:
                if fut.done():
                    collect(fut)
                else:
                    i = futures[fut]
                    done(i, ReplayResult(str(files[i]), "stopped", f"received {sigs.signal}", str(dirs[i])))
        raise


def replay_batch(
    paths: list[str | Path],
    out_root: str | Path,
    options: ReplayOptions | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
    on_result=None,
) -> list[ReplayResult]:
    """Replay several files in parallel; write ``out_root/replay_summary.csv``; return the results in order.

    Parameters
    ----------
    jobs:
        Worker processes (default: all cores); 1 runs in this process.
    scheduler:
        Address of a Dask distributed scheduler (``tcp://host:8786``), or a ``dask.distributed.Client``:
        the files run on its workers instead (needs ``pip install 'closedloop[dask]'``; the workers are given
        absolute paths, so they must see the files and the output folder where this process does).
    on_result:
        Called with each result as it finishes.

    Raises :class:`ConfigError` before any work if ``out_root`` cannot be created or already holds a replay's
    results (replay_summary.csv, or session files in a folder this batch would write), or if the Dask scheduler
    cannot be reached. Interrupted (SIGINT, or SIGTERM in the main thread), the files under way stop and write
    what they have, no other file starts, replay_summary.csv is written and :class:`BatchInterrupted` raised.
    """
    options = options or ReplayOptions()
    out = Path(out_root)
    files = [Path(p) for p in paths]
    dirs = _out_dirs(files, out)
    _check_unused(out, dirs)  # before any work: an earlier replay's results stay as they are
    client = dask_client(scheduler) if scheduler is not None else None  # an unreachable one: before any folder
    results: list[ReplayResult | None] = [None] * len(files)

    def done(i: int, r: ReplayResult) -> None:
        results[i] = r
        if on_result:
            on_result(r)

    sigs = _Signals()
    try:
        make_out_root(out)
        sigs.install()
        if client is not None:
            _run_dask(client, files, dirs, options, done)
        else:
            jobs = max(1, min(jobs or os.cpu_count() or 1, len(files)))
            if jobs == 1:
                for i, (f, d) in enumerate(zip(files, dirs, strict=True)):
                    r = replay_file(f, d, options)
                    done(i, r)
                    if _by_signal(r):  # the session stopped on SIGINT/SIGTERM: so does the batch
                        sigs.signal = sigs.signal or _by_signal(r)
                        raise KeyboardInterrupt(sigs.signal)
            else:
                _run_pool(files, dirs, options, jobs, done, sigs)
    except KeyboardInterrupt:
        sigs.signal = sigs.signal or "SIGINT"
    finally:
        sigs.restore()
        if client is not None and client is not scheduler:
            client.close()
    final = [r if r is not None else _not_replayed(f, d) for r, f, d in zip(results, files, dirs, strict=True)]
    with open(out / "replay_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for r in final:
            w.writerow(r.row())
    if sigs.signal:
        raise BatchInterrupted(final, sigs.signal)
    return final


async def _publish(path: Path, options: ReplayOptions, name: str | None, on_open: Callable[[], None] | None) -> int:
    speed = options.speed or 1.0
    source = _file_source(path, options, speed)
    n = 0
    async with source:  # opens the file: a bad file fails here, before any outlet exists
        if on_open is not None:
            on_open()
        from acquisition.lsl import LSLPublisher
        from closedloop.lslconfig import import_pylsl
        from closedloop.types import StreamInfo

        pylsl = import_pylsl()
        info = source.info
        stem = name or info.name
        emg = LSLPublisher(
            StreamInfo(
                f"{stem}", "EMG", info.rate_hz, info.channel_names, ("microvolts",), f"closedloop-replay-{stem}"
            ),
            "float32",
            options.chunk(options.speed if options.speed is not None else 1.0),
        )
        markers = pylsl.StreamOutlet(
            pylsl.StreamInfo(f"{stem}-Markers", "Markers", 1, 0.0, pylsl.cf_string, f"closedloop-replay-{stem}-markers")
        )
        t_shift = None
        async for chunk in source:
            now = pylsl.local_clock()
            if t_shift is None:
                t_shift = now - float(chunk.timestamps[-1])
            emg.push((chunk.samples * 1e6).astype(np.float32), float(chunk.timestamps[-1]) + t_shift)
            for t in chunk.pulse_times if chunk.pulse_times is not None else ():
                markers.push_sample(["pulse"], float(t) + t_shift)
            n += len(chunk)
        emg.close()
    return n


def publish_file(
    path: str | Path,
    options: ReplayOptions | None = None,
    name: str | None = None,
    on_open: Callable[[], None] | None = None,
) -> int:
    """Republish a recording as live LSL outlets (EMG in microvolts, pulses as 'pulse' markers) at
    ``options.speed`` (default real time); returns the samples published.

    ``on_open`` is called once the file has been opened and checked, before publishing starts (a bad file
    raises before it is called)."""
    return asyncio.run(_publish(Path(path), options or ReplayOptions(), name, on_open))
