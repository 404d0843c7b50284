"""The ``closedloop`` command line.

User errors (a :class:`~closedloop.errors.ClosedLoopError`) print as one line without a traceback and exit
with status 2; an interrupted command exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import itertools
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from closedloop import __version__
from closedloop.errors import ClosedLoopError
from closedloop.estimation._checks import MAX_RATE_HZ, check_rate

__all__ = ["main"]


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _rate(text: str) -> float:
    try:
        return check_rate(_positive_float(text))  # the estimator's own rule: finite, > 0, at most MAX_RATE_HZ
    except ClosedLoopError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a sampling rate in Hz, at most {MAX_RATE_HZ:g}") from None


def _folder(text: str) -> Path:
    if not text.strip():  # an unset shell variable (--out "$OUT"): not the current folder
        raise argparse.ArgumentTypeError("is empty: give a folder (. for the current one)")
    return Path(text)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="closedloop", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"closedloop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="assisted contraction on the simulated participant over LSL (loopback)",
        description="Run an assisted-contraction session on the simulated participant over real "
        "LSL (loopback only), record it and write a report.",
    )
    d.add_argument("--duration", type=_positive_float, default=30.0, metavar="S", help="session length (s, default 30)")
    d.add_argument(
        "--out",
        type=_folder,
        default=None,
        metavar="DIR",
        help="output directory (default: ./closedloop-demo-YYYYmmdd-HHMMSS)",
    )
    d.add_argument("--channels", type=_positive_int, default=4, metavar="N", help="EMG channels (default 4)")
    d.add_argument("--rate", type=_rate, default=2048.0, metavar="HZ", help="EMG rate (Hz, default 2048)")
    d.add_argument("--stim-hz", type=_positive_float, default=25.0, metavar="F", help="pulse rate (Hz, default 25)")
    d.add_argument("--seed", type=int, default=0, help="simulator random seed (default 0)")
    d.add_argument("--no-report", action="store_true", help="skip report.html")
    d.add_argument(
        "--mqtt",
        default=None,
        metavar="URL",
        help="MQTT telemetry and commands: mqtt://user:pass@host:1883 or mqtts://... (password also from "
        "CLOSEDLOOP_MQTT_PASSWORD)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress line")

    s = sub.add_parser(
        "simulate",
        help="run the simulated participant as an LSL device",
        description="Publish the simulated participant's EMG, Force and GroundTruth as LSL "
        "outlets and apply pulses from an LSL command stream. Loopback-only unless --lan.",
    )
    s.add_argument("--channels", type=_positive_int, default=4, metavar="N")
    s.add_argument("--rate", type=_rate, default=2048.0, metavar="HZ")
    s.add_argument("--chunk", type=_positive_int, default=8, metavar="SAMPLES", help="samples per chunk (default 8)")
    s.add_argument("--prefix", default="closedloop-sim", help="stream name prefix (default closedloop-sim)")
    s.add_argument("--source-id", default=None, help="source id base of the outlets (default: random)")
    s.add_argument(
        "--command-stream",
        default="closedloop-stim",
        metavar="NAME",
        help="name of the LSL command stream to obey (default closedloop-stim)",
    )
    s.add_argument("--command-source-id", default=None, metavar="ID", help="source_id of the command stream")
    s.add_argument(
        "--profile", default="trapezoids", help="voluntary drive: trapezoids (default), demo, rest, constant:LEVEL"
    )
    s.add_argument("--wait-for-cue", action="store_true", help="rest until a cue (-2) arrives on the command stream")
    s.add_argument("--duration", type=_positive_float, default=None, metavar="S", help="stop after S seconds")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--lan", action="store_true", help="use normal LSL discovery (visible on the network)")

    r = sub.add_parser(
        "replay",
        help="recorded EMG through the pipeline (estimates, shadow controller, report)",
        description="Replay recorded EMG files through the same pipeline as a live session: estimates.csv (t_s in "
        "seconds from the start of the recording), summary.json and report.html per file, in parallel on all "
        "cores, with one summary table. Readable: EDF/EDF+, BDF, GDF, FIF, BrainVision (.vhdr), EEGLAB (.set), "
        "XDF, WFDB (.hea), MATLAB .mat (Ninapro-style 'emg'), OpenSignals .h5.",
    )
    r.add_argument("files", nargs="+", type=Path, metavar="FILE")
    r.add_argument(
        "--speed",
        default=None,
        metavar="max|FACTOR",
        help="max (default: as fast as possible) or a multiple of real time, e.g. 1",
    )
    r.add_argument(
        "--protocol", default=None, metavar="P", help="protocol file: estimator, limits, controller (shadow)"
    )
    r.add_argument(
        "--out", type=_folder, default=None, metavar="DIR", help="output root (default ./closedloop-replay-*)"
    )
    r.add_argument("--channels", default=None, metavar="A,B", help="channel names to use (default: the EMG channels)")
    r.add_argument("--stream", default=None, help="XDF stream name or type (default: type EMG)")
    r.add_argument("--rate", type=_rate, default=None, metavar="HZ", help="rate for files that hold none")
    r.add_argument("--units", default=None, help="units for files that state none (e.g. uV, mV, V)")
    r.add_argument(
        "--chunk",
        type=_positive_int,
        default=None,
        metavar="SAMPLES",
        help="chunk size in samples (default: as fast as possible about 2**18 channel-samples, e.g. 4096 at 64 "
        "channels; 256 when paced)",
    )
    r.add_argument(
        "--pulse-marker",
        default=None,
        metavar="REGEX",
        help="annotations/markers that are stimulation pulses, a regular expression searched in their text "
        "(default: (?i)stim|pulse|trigger; e.g. '^768$' for GDF events, 'S  1' for a BrainVision trigger); "
        "summary.json lists the annotations a file has",
    )
    r.add_argument("--no-detect", action="store_true", help="do not detect pulses from artifacts")
    r.add_argument("--jobs", type=_positive_int, default=None, help="parallel files (default: all cores)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run the batch on a Dask scheduler")
    r.add_argument("--no-report", action="store_true")
    r.add_argument(
        "--publish-lsl",
        action="store_true",
        help="republish the recording as live LSL outlets (EMG, markers) at --speed (default 1)",
    )
    r.add_argument("--loopback", action="store_true", help="with --publish-lsl: visible on this machine only")

    run = sub.add_parser(
        "run",
        help="run a protocol file (live over LSL, or on the simulated participant)",
        description="Run a protocol (experiments/*.toml): live, the EMG comes from the LSL stream of [source] and "
        "pulses go to the stimulator of [stimulation]; with --simulate the simulated participant takes the place of "
        "both. Records session.xdf, estimates.csv and summary.json and writes report.html.",
    )
    run.add_argument("protocol", type=Path, metavar="PROTOCOL.toml")
    run.add_argument("--simulate", action="store_true", help="run on the simulated participant (in this process)")
    run.add_argument("--fast", action="store_true", help="with --simulate: virtual time, as fast as possible")
    run.add_argument(
        "--out", type=_folder, default=None, metavar="DIR", help="output directory (default ./<name>-YYYYmmdd-HHMMSS)"
    )
    run.add_argument("--no-report", action="store_true", help="skip report.html")
    run.add_argument(
        "--mqtt", default=None, metavar="URL", help="MQTT broker (overrides [mqtt] url): mqtt://user:pass@host:1883"
    )
    run.add_argument("--wait-start", action="store_true", help="begin the phases on an MQTT start command")
    run.add_argument("--quiet", action="store_true", help="no progress line")

    rep = sub.add_parser(
        "report",
        help="rebuild the report of a recorded session",
        description="Rebuild report.html, its plots and the results in summary.json from a session directory.",
    )
    rep.add_argument("session", type=Path, metavar="DIR")

    an = sub.add_parser("analyze", help="offline analyses of recorded evoked responses (recruitment curve)")
    an_sub = an.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    rc = an_sub.add_parser(
        "recruitment",
        help="M-wave/H-reflex recruitment curve: Boltzmann fit with confidence intervals",
        description="Measure the M-wave (and H-reflex) peak-to-peak of every sweep, fit the Boltzmann recruitment "
        "curve, summarise the H-reflex; write recruitment.json, recruitment.csv and recruitment.png. FILE: a waveform "
        "table (.csv: row 1 the intensities in mA, column 1 the time in ms, one column per sweep) or a recording "
        "whose pulses carry their amplitudes (closedloop's session.xdf).",
    )
    rc.add_argument("file", type=Path, metavar="FILE")
    rc.add_argument(
        "--out",
        type=_folder,
        default=None,
        metavar="DIR",
        help="output directory (default ./recruitment-YYYYmmdd-HHMMSS)",
    )
    rc.add_argument("--channel", default=None, metavar="NAME", help="recordings: the EMG channel (needed if several)")
    for which, name in (("m", "M-wave"), ("h", "H-reflex")):
        rc.add_argument(
            f"--{which}-window",
            type=float,
            nargs=2,
            default=None,
            metavar=("START_MS", "END_MS"),
            help=f"{name} window (ms after the stimulus; default: found automatically)",
        )

    ls = sub.add_parser("streams", help="list visible LSL streams")
    ls.add_argument("--wait", type=_positive_float, default=1.0, metavar="S", help="look for S seconds (default 1)")
    ls.add_argument("--loopback", action="store_true", help="only this machine (loopback-only LSL)")
    return p


def _cmd_demo(args: argparse.Namespace) -> int:
    from closedloop.lslconfig import use_loopback

    use_loopback()
    from experiments.demo import DemoConfig, run_demo

    with _default_out(args.out, f"closedloop-demo-{_dt.datetime.now():%Y%m%d-%H%M%S}") as out:
        cfg = DemoConfig(
            out_dir=out,
            duration_s=args.duration,
            channels=args.channels,
            rate_hz=args.rate,
            stim_hz=args.stim_hz,
            seed=args.seed,
            report=not args.no_report,
            mqtt_url=args.mqtt,
        )
        res = run_demo(cfg, progress=not args.quiet)
    s = res.summary
    dl, el = s["decision_latency_ms"], s["e2e_latency_ms"]
    lat = "n/a" if dl["median"] is None else f"median {dl['median']:.2f} ms, p99 {dl['p99']:.2f} ms"
    if el["median"] is not None:
        lat += f"; end-to-end median {el['median']:.2f} ms, p99 {el['p99']:.2f} ms"
    print(f"closedloop demo: {res.status}" + (f" ({res.error})" if res.error else ""))
    print(
        f"  {s['duration_s']:.1f} s, {s['pulses']} pulses, largest {s['max_amplitude_ma']:.1f} mA "
        f"(limit {s['limits']['max_amplitude_ma']:g} mA), decision latency {lat}, "
        f"{s['deadline_misses']} deadline misses"
    )
    tc = s.get("truth_comparison") or {}
    if "effort_drive_r" in tc:
        print(f"  effort estimate vs true drive: r = {tc['effort_drive_r']:.3f}")
    print(f"  recording: {out / 'session.xdf'}")
    print(f"  estimates: {out / 'estimates.csv'}")
    print(f"  summary:   {out / 'summary.json'}")
    if (out / "report.html").exists():
        print(f"  report:    {out / 'report.html'}")
    return 0 if res.ok else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from closedloop.lslconfig import use_loopback

    if not args.lan:
        use_loopback()
    from acquisition.simulator.device import SimulatedDevice
    from acquisition.simulator.muscle import MuscleParams
    from acquisition.simulator.profiles import named_profile

    dev = SimulatedDevice(
        MuscleParams(n_channels=args.channels, rate_hz=args.rate, seed=args.seed),
        named_profile(args.profile),
        prefix=args.prefix,
        source_id=args.source_id,
        command_name=args.command_stream,
        command_source_id=args.command_source_id,
        chunk_size=args.chunk,
        duration_s=args.duration,
        wait_for_cue=args.wait_for_cue,
    )
    import signal

    signal.signal(signal.SIGTERM, lambda *_: dev.stop())
    print(
        f"closedloop simulate: publishing {args.prefix}-EMG ({args.channels} ch, {args.rate:g} Hz), "
        f"{args.prefix}-Force, {args.prefix}-GroundTruth (source_id {dev.source_id}-*); "
        f"commands from {dev.command_query}",
        flush=True,
    )
    try:
        dev.run()
    except KeyboardInterrupt:
        pass
    print(f"closedloop simulate: stopped after {dev.n_pulses} pulses ({dev.n_late} applied late)", flush=True)
    return 0


def _speed(text: str) -> float | None:
    if text.lower() in ("max", "inf", "fast"):
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v >= 1e-3:  # (NaN too) slower than a thousandth of real time: a slip, that would run for days
        from closedloop.errors import ConfigError

        raise ConfigError(f"--speed {text}: give max or a factor of real time from 0.001 up (e.g. 1, 10)")
    return v


def _channel_names(text: str | None) -> tuple[str, ...] | None:
    """--channels A,B as names; an empty list or an empty name is a usage error."""
    if text is None:
        return None
    names = tuple(c.strip() for c in text.split(","))
    if not all(names):
        from closedloop.errors import ConfigError

        problem = "an empty channel name" if any(names) else "no channel names"
        raise ConfigError(f"--channels {text!r}: {problem}; give names separated by commas (e.g. EMG1,EMG2)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        from closedloop.errors import ConfigError

        raise ConfigError(f"--channels {text!r}: {', '.join(twice)} given more than once")
    return names


#: Replay options that only a batch uses: refused with --publish-lsl, which writes nothing and runs no estimator.
_BATCH_ONLY = (("out", "--out"), ("protocol", "--protocol"), ("scheduler", "--scheduler"), ("jobs", "--jobs"))


def _load_kernels(notice_after_s: float = 2.0) -> None:
    """Load the replay's compiled kernels; the first time on a machine numba compiles them (10-20 s): a line
    says so when loading takes longer than ``notice_after_s``, instead of a silent pause."""
    import threading

    from closedloop.estimation import kernels
    from closedloop.recording import csvkernel

    def notice() -> None:
        print(
            "closedloop replay: compiling the estimator's kernels (the first replay on this machine, 10-20 s; "
            "cached for the next ones)",
            file=sys.stderr,
            flush=True,
        )

    timer = threading.Timer(notice_after_s, notice)
    timer.daemon = True
    timer.start()
    try:
        kernels.load()
        csvkernel.load()
    finally:
        timer.cancel()


def _cmd_replay(args: argparse.Namespace) -> int:
    from experiments.replay import ReplayOptions, make_out_root, publish_file, replay_batch, signals_interrupt

    # unset: as fast as possible, or real time for --publish-lsl (a live device needs a pace)
    speed = _speed(args.speed) if args.speed is not None else (1.0 if args.publish_lsl else None)
    if args.publish_lsl:
        from closedloop.errors import ConfigError

        unused = [flag for key, flag in _BATCH_ONLY if getattr(args, key) is not None]
        if unused:
            raise ConfigError(
                f"--publish-lsl only republishes the recording over LSL: {' and '.join(unused)} "
                f"{'does' if len(unused) == 1 else 'do'} not apply "
                "(replay without --publish-lsl for estimates, a shadow controller or a batch)"
            )
        if speed is None:
            raise ConfigError(
                f"--publish-lsl --speed {args.speed}: a live device needs a pace; give a factor of real time "
                "(e.g. 1, or 10), or leave --speed out for real time"
            )

    detect = False if args.no_detect else "auto"
    if args.pulse_marker is not None:
        try:
            re.compile(args.pulse_marker)
        except re.error as exc:
            from closedloop.errors import ConfigError

            raise ConfigError(f"--pulse-marker {args.pulse_marker!r} is not a regular expression: {exc}") from None
    opts = ReplayOptions(
        speed=speed,
        chunk_size=args.chunk,
        channels=_channel_names(args.channels),
        stream=args.stream,
        rate_hz=args.rate,
        units=args.units,
        protocol=str(args.protocol) if args.protocol else None,
        pulse_marker=args.pulse_marker,
        detect_pulses=detect,
        report=not args.no_report,
        progress=len(args.files) == 1,
    )
    if args.protocol:
        from experiments.protocol import load_protocol

        load_protocol(args.protocol)  # a bad protocol stops here, before any file is touched
    if args.publish_lsl:
        if args.loopback:
            from closedloop.lslconfig import use_loopback

            use_loopback()
        if len(args.files) != 1:
            from closedloop.errors import ConfigError

            raise ConfigError("--publish-lsl republishes one file at a time")
        opened = False

        def started() -> None:
            nonlocal opened
            opened = True
            print(f"closedloop replay: publishing {args.files[0]} at {opts.speed:g}x real time", flush=True)

        try:
            with signals_interrupt():  # kill -TERM too ends it as interrupted, its outlets closed
                n = publish_file(args.files[0], opts, on_open=started)
        except ClosedLoopError as exc:
            from closedloop.errors import SourceError

            if opened and not isinstance(exc, SourceError):  # not the file's fault (e.g. LSL): a usage error
                raise
            # a file that cannot be replayed: exit 1 as the batch does for a bad file
            print(f"closedloop replay: error: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"closedloop replay: published {n} samples", flush=True)
        return 0

    def show(r) -> None:
        if r.ok:
            v = r.values
            print(
                f"  {r.file}: {v['duration_s']:.1f} s, {v['channels']} ch at {v['rate_hz']:g} Hz, "
                f"{v['pulses']} pulses ({v['pulse_source']}), {v['x_real_time']}x real time -> {r.out_dir}",
                flush=True,
            )
            if r.hint:
                print(f"    note: {r.hint}", flush=True)
        else:
            error = r.error
            for named in (f"{r.file}: ", f"{Path(r.file).name}: "):  # the file is named once, at the start
                error = error.removeprefix(named)
            print(f"  {r.file}: error: {error}", file=sys.stderr, flush=True)

    from experiments.replay import BatchInterrupted, dask_client

    if opts.compiled and args.scheduler is None:
        _load_kernels()  # here, once: the workers of a batch then find them compiled
    # an unreachable scheduler stops here, one line, before any folder is made
    client = dask_client(args.scheduler) if args.scheduler is not None else None
    try:
        if args.out is not None:
            make_out_root(args.out, f"--out {args.out}")  # a folder that cannot be made stops here, one line
        with _default_out(args.out, f"closedloop-replay-{_dt.datetime.now():%Y%m%d-%H%M%S}") as out:
            interrupted = ""
            try:
                results = replay_batch(args.files, out, opts, jobs=args.jobs, scheduler=client, on_result=show)
            except BatchInterrupted as exc:  # the files under way stopped, the others not started
                results, interrupted = exc.results, exc.signal
            ok = sum(r.ok for r in results)
            _print_table(results)
            print(
                f"closedloop replay: {ok} of {len(results)} files replayed; summary table: {out / 'replay_summary.csv'}"
            )
    finally:
        if client is not None:
            import logging

            log = logging.getLogger("distributed.client")
            level = log.level
            log.setLevel(logging.CRITICAL)  # a scheduler lost mid-batch: its files say so; no reconnect traceback
            try:
                client.close()
            finally:
                log.setLevel(level)
    if interrupted:
        print(f"closedloop replay: interrupted ({interrupted})", file=sys.stderr)
        return 130
    return 0 if ok == len(results) else 1


def _new_folder(base: str) -> Path:
    """Create a new folder ``base`` (``base-2``, ``base-3``, ... if that exists) and return it.

    Atomic (mkdir fails if the folder exists): two commands started in the same second never share one.
    """
    for n in itertools.count(1):
        path = Path(base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise ClosedLoopError(f"{path}: cannot create the output folder: {exc.strerror}") from None
        return path
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _default_out(given: Path | None, base: str):
    """The output folder: ``given``, else a new one named ``base`` (:func:`_new_folder`), removed again if the
    command fails before writing anything into it."""
    if given is not None:
        yield given
        return
    out = _new_folder(base)
    try:
        yield out
    except BaseException:
        with contextlib.suppress(OSError):  # not empty (a session's files tell what happened): kept
            out.rmdir()
        raise


def _print_table(results) -> None:
    cols = ("file", "status", "duration_s", "pulses", "effort_median_uv", "mdf_first_hz", "mdf_last_hz", "x_real_time")
    names = [Path(r.file).name for r in results]
    if len(set(names)) < len(names):  # the same name in several folders: the paths as given tell them apart
        names = [str(r.file) for r in results]
    rows = [[str(r.row()[c]) if c != "file" else name for c in cols] for r, name in zip(results, names, strict=True)]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cmd_run(args: argparse.Namespace) -> int:
    from experiments.protocol import load_protocol

    proto = load_protocol(args.protocol)  # a bad protocol stops here: nothing starts
    if args.fast and not args.simulate:
        from closedloop.errors import ConfigError

        raise ConfigError("--fast needs --simulate (a live session runs in real time)")
    if args.simulate:
        from closedloop.lslconfig import use_loopback

        use_loopback()
    from experiments.run import run_protocol

    mqtt = proto.mqtt_config(args.mqtt) if args.mqtt else None
    with _default_out(args.out, f"{proto.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}") as out:
        res = run_protocol(
            proto,
            out,
            simulate=args.simulate,
            fast=args.fast,
            progress=not args.quiet,
            report=not args.no_report or None,
            mqtt=mqtt,
            wait_for_start=True if args.wait_start else None,
        )
    s = res.summary
    where = "simulated participant" + (", virtual time" if args.fast else "") if args.simulate else "live"
    print(f"closedloop run {proto.name} ({where}): {res.status}" + (f" ({res.error})" if res.error else ""))
    print(
        f"  {s['duration_s']:.1f} s, {s['pulses']} pulses, largest {s['max_amplitude_ma']:.1f} mA "
        f"(limit {s['limits']['max_amplitude_ma']:g} mA), {s['deadline_misses']} deadline misses"
    )
    _print_results(s)
    _print_files(out)
    return 0 if res.ok else 1


def _print_results(s: dict) -> None:
    results, truth = s.get("results") or {}, s.get("truth") or {}
    for key, value in results.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            t = truth.get(key)
            extra = f"   (truth {t:.4g})" if isinstance(t, (int, float)) else ""
            print(f"  {key:<28} {value:.4g}{extra}")
        elif key == "error":
            print(f"  analysis failed: {value}")


def _print_files(out: Path) -> None:
    for label, name in (
        ("recording", "session.xdf"),
        ("estimates", "estimates.csv"),
        ("summary", "summary.json"),
        ("report", "report.html"),
    ):
        if (out / name).exists():
            print(f"  {label + ':':<10} {out / name}")


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from closedloop.report import build_report

    d = args.session
    if not d.is_dir():
        raise ClosedLoopError(f"{d}: not a session directory")
    build_report(d)
    s = json.loads((d / "summary.json").read_text())
    print(f"closedloop report: {d / 'report.html'}")
    _print_results(s)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from experiments.analyze import analyze_recruitment, summary_lines

    with _default_out(args.out, f"recruitment-{_dt.datetime.now():%Y%m%d-%H%M%S}") as out:
        res = analyze_recruitment(
            args.file, out, channel=args.channel, m_window_ms=args.m_window, h_window_ms=args.h_window
        )
    print("\n".join(summary_lines(res)))
    return 0


def _cmd_streams(args: argparse.Namespace) -> int:
    if args.loopback:
        from closedloop.lslconfig import use_loopback

        use_loopback()
    from acquisition.lsl import list_streams

    streams = list_streams(args.wait)
    if not streams:
        print("no LSL streams visible")
    for st in streams:
        print(st)
    return 0


class _PipeSafeStdout:
    """``sys.stdout`` for a command whose output may be piped into a reader that quits early (``| head``): once
    the pipe is closed, the rest of the output goes to /dev/null and the command carries on (a batch still
    replays every file and writes its summary table) instead of ending in a BrokenPipeError."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``closedloop`` console script."""
    stdout = sys.stdout
    sys.stdout = _PipeSafeStdout(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "demo": _cmd_demo,
        "simulate": _cmd_simulate,
        "streams": _cmd_streams,
        "replay": _cmd_replay,
        "run": _cmd_run,
        "report": _cmd_report,
        "analyze": _cmd_analyze,
    }[args.command]
    try:
        return handler(args)
    except ClosedLoopError as exc:
        print(f"closedloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"closedloop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
